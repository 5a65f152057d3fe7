"""The controller loop: reconcile, then sleep until the poll interval passes or something wakes
it early — a file-system event in a local source repository (watchdog), or an app in a
transition (a rollout to wait for) that deserves a quick look again.

The loop never dies of a reconcile: an exception is logged with its traceback, counted
(`gitops_canary_reconciles_total{result="crash"}`) and the next reconcile comes an interval
later. With leader election, only the leader reconciles; a standby keeps looping, so /healthz
sees it alive, but never counts as ready (/readyz), and a webhook only wakes it to wait again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from controller.metrics import Metrics
from controller.reconcile import Reconciler, Result

log = logging.getLogger(__name__)

TRANSITION_INTERVAL = 1.0


class _Wake(FileSystemEventHandler):
    # Only writes move refs; opened/closed events come from every fetch, ours included.
    CHANGES = frozenset({"created", "modified", "moved", "deleted"})

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in self.CHANGES and not str(event.src_path).endswith(".lock"):
            self.event.set()


def local_git_dir(url: str) -> Path | None:
    """The git folder of a source given as a path or file:// URL; None for remote URLs."""
    path = Path(url[len("file://"):]) if url.startswith("file://") else Path(url)
    if "://" in url and not url.startswith("file://"):
        return None
    if (path / "HEAD").exists() and (path / "refs").is_dir():
        return path  # bare
    if (path / ".git" / "HEAD").exists():
        return path / ".git"
    return None


def watch(url: str, wake: threading.Event) -> BaseObserver | None:
    """Wake the loop when a local source repository's refs move (a commit or a push)."""
    git_dir = local_git_dir(url)
    if git_dir is None:
        return None
    observer = Observer()
    handler = _Wake(wake)
    observer.schedule(handler, str(git_dir / "refs"), recursive=True)
    observer.schedule(handler, str(git_dir), recursive=False)  # packed-refs
    observer.daemon = True
    observer.start()
    log.info("watching %s for new commits", git_dir)
    return observer


def loop(reconciler: Reconciler, interval: float, stop: threading.Event,
         wake: threading.Event | None = None, metrics: Metrics | None = None,
         leading: Callable[[], bool] | None = None) -> None:
    """Reconcile until `stop`. With `leading`, reconcile only while it says so: it is asked
    before each reconcile, so a leader that could not renew its Lease in time stops at once."""
    wake = wake or threading.Event()
    reconciler.wake = wake.set  # a look that ends in the background wakes the loop
    observer = watch(reconciler.source.url, wake)
    try:
        while not stop.is_set():
            wake.clear()
            if leading is not None and not leading():
                _standby(metrics)
                _wait_any((wake, stop), interval)  # the elector wakes us when we lead
                continue
            started = time.monotonic()
            try:
                result: Result = reconciler.reconcile()
            except Exception:
                log.exception("reconcile crashed; the next one in %.0fs", interval)
                if metrics is not None:
                    metrics.reconciles.labels("crash").inc()
                    metrics.last_finished = time.monotonic()  # the loop itself is not stuck
                _wait_any((stop,), interval)
                continue
            if metrics is not None:
                metrics.observe(result, time.monotonic() - started)
            delay = TRANSITION_INTERVAL if result.waiting else interval
            if result.next_analysis is not None:
                delay = min(delay, max(0.2, result.next_analysis - reconciler.clock()))
            # Either a wake-up (new commit) or the timeout; a stop request ends the wait too.
            _wait_any((wake, stop), delay)
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)


def _standby(metrics: Metrics | None) -> None:
    """Alive (the loop turns), never ready: readiness means "reconciled recently as leader"."""
    if metrics is not None:
        metrics.last_finished = time.monotonic()
        metrics.last_success = None


def _wait_any(events: tuple[threading.Event, ...], timeout: float) -> None:
    step = 0.05
    waited = 0.0
    while waited < timeout and not any(e.is_set() for e in events):
        events[0].wait(step)
        waited += step
