"""Drift: the cluster compared with git, for apps git has not changed.

An app unchanged in git is not read from the cluster on every reconcile; `Resync` says when
each is compared again: every `--resync` (±10 %, so apps spread out), the first time at a
random point within one interval (a restart does not compare every app at once), and at once
when the watch sees someone else change one of its objects (`soon`, at most every GAP). The check
itself is a dry run of git's objects against the live ones (`Kube.drift`): stable's objects
when the app is stable, its variants' while a canary runs (a deleted variant is seen on every
reconcile, as it costs no request). Stable drift during a canary is left to the resync after
it: the baseline comes from git, not from the drifted live object, and the promotion or the
reject applies stable anyway.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from controller.domain.drift import Drift, deleted
from controller.domain.manifests import Manifest
from controller.domain.render import Key, Rendered, autoscaled, key_of
from controller.domain.types import KubeObject
from controller.edges.kube import Kube

log = logging.getLogger(__name__)

JITTER = 0.1
GAP = 5.0  # seconds at least between two comparisons of one app that a watch asks for


class Resync:
    """When each app (by folder) is next compared with the cluster. Thread-safe: a watch
    asks for a comparison (`soon`) while the apps are reconciled."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, gap: float = GAP) -> None:
        self.interval, self.clock, self.gap = interval, clock, gap
        self._rng = rng or random.Random()  # noqa: S311 (spreading work, not a secret)
        self._due: dict[str, float] = {}
        self._done: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, path: str) -> bool:
        with self._lock:
            if path not in self._due:
                self._due[path] = self.clock() + self._rng.uniform(0, self.interval)
            return self.clock() >= self._due[path]

    def done(self, path: str) -> None:
        """Compared just now: the next comparison in one interval, jittered."""
        spread = self._rng.uniform(1 - JITTER, 1 + JITTER)
        with self._lock:
            self._done[path] = now = self.clock()
            self._due[path] = now + self.interval * spread

    def soon(self, path: str) -> float:
        """Someone changed the app's objects: compare it now, or `gap` seconds after the
        last comparison (someone fighting the controller is not answered in a tight loop).
        The seconds until it is due."""
        with self._lock:
            now = self.clock()
            at = max(now, self._done.get(path, now - self.gap) + self.gap)
            self._due[path] = min(self._due.get(path, at), at)
            return self._due[path] - now

    def forget(self, path: str) -> None:
        with self._lock:
            self._due.pop(path, None)
            self._done.pop(path, None)


def stable_drift(kube: Kube, rendered: Rendered, live: Mapping[Key, KubeObject],
                 manifests: list[Manifest]) -> list[Drift]:
    """Everything applying stable writes, compared with the cluster. The replicas of a
    workload an HPA of the app scales are the HPA's, never drift."""
    ignore = {key: ("spec.replicas",) for key in autoscaled(manifests)}
    return kube.drift((*rendered.passthrough, *rendered.deferred, *rendered.stable), live, ignore)


def missing_variants(rendered: Rendered, variants: Iterable[KubeObject]) -> list[Drift]:
    """Variants the canary has that the cluster lacks (deleted by hand): no request needed."""
    found = {key_of(v) for v in variants}
    return [deleted(key) for key in rendered.variant_keys if key not in found]


def variant_drift(kube: Kube, rendered: Rendered, variants: Iterable[KubeObject]) -> list[Drift]:
    """The variants present, compared with what the canary applies."""
    live = {key_of(v): v for v in variants}
    present = [o for o in (*rendered.baseline, *rendered.canary) if key_of(o) in live]
    return kube.drift(present, live, {})


def report(kube: Kube, app: str, drifts: Iterable[Drift], corrected: bool,
           api_versions: Mapping[Key, str]) -> None:
    """A log line per drift and an event on the object."""
    for drift in drifts:
        kind, namespace, name = drift.key
        what = ", ".join(drift.changes)
        if corrected:
            log.warning("app %s: drift corrected: %s %s/%s: %s", app, kind, namespace, name, what)
        else:
            log.warning("app %s: drift (drift: report, not corrected): %s %s/%s: %s", app, kind,
                        namespace, name, what)
        kube.event(drift.key, api_versions.get(drift.key, "v1"),
                   "DriftCorrected" if corrected else "DriftDetected",
                   f"{'corrected to git' if corrected else 'differs from git'}: {what}",
                   warning=not corrected)
