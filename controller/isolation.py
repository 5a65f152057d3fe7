"""Each app is its own unit of failure and of ownership.

`Claims` says which folder owns an app name: the one its record names, while that folder still
exists; a name without a record goes to the first folder (in path order) that claims it, so a
new folder can never take over another app's record and objects. `Crashes` keeps what no stage
expected (an exception out of one app's reconcile) with that app: one error status per message
on the folder's last commit, and exponential backoff for that folder alone (at once on a new
commit to it), while the other apps go on.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from controller.domain.machine import Record
from controller.domain.types import AppName, Sha, StatusState
from controller.edges.git import AppFolder, GitSource
from controller.edges.statuses import StatusSink

log = logging.getLogger(__name__)

CRASH_BACKOFF, CRASH_BACKOFF_MAX = 5.0, 600.0


class Claims:
    def __init__(self, records: dict[AppName, Record], paths: set[str]) -> None:
        self.by_path = {r.path: r for r in records.values() if r.path is not None}
        self._owners = {app: r.path for app, r in records.items()
                        if r.path is not None and r.path in paths}

    def owner(self, app: AppName, path: str) -> str | None:
        """The folder that owns `app` when it is not `path` (None: `path` may take it)."""
        owner = self._owners.get(app)
        return owner if owner is not None and owner != path else None

    def take(self, app: AppName, path: str) -> None:
        self._owners.setdefault(app, path)

    def taken(self, app: AppName) -> bool:
        return app in self._owners

    def paths(self) -> dict[AppName, str]:
        """Each app's folder."""
        return dict(self._owners)


@dataclass
class Crash:
    tree: str
    failures: int
    retry_at: float  # monotonic
    message: str
    reported: bool = False


class Crashes:
    def __init__(self, source: GitSource) -> None:
        self.source = source
        self._crashes: dict[str, Crash] = {}  # by folder path

    def backing_off(self, folder: AppFolder) -> bool:
        """True while a folder that crashed waits for its retry (a new commit retries at once)."""
        crash = self._crashes.get(folder.path)
        return crash is not None and crash.tree == folder.inputs and \
            time.monotonic() < crash.retry_at

    def cleared(self, folder: AppFolder) -> None:
        self._crashes.pop(folder.path, None)

    def crashed(self, head: Sha, folder: AppFolder, error: Exception,
                sink: StatusSink) -> None:
        """A log line with the traceback, an error status on the folder's last commit (once
        per message), and the next attempt after 5 s, doubling up to 10 min."""
        log.exception("app in %s failed; the other apps go on", folder.path or "/")
        previous = self._crashes.get(folder.path)
        failures = previous.failures + 1 if previous and previous.tree == folder.inputs else 1
        delay = min(CRASH_BACKOFF * 2 ** (failures - 1), CRASH_BACKOFF_MAX)
        message = f"{folder.path or '/'}: internal error ({type(error).__name__}: {error})"
        crash = Crash(folder.inputs, failures, time.monotonic() + delay, message)
        self._crashes[folder.path] = crash
        if previous is not None and previous.message == message and previous.reported:
            crash.reported = True
            return
        try:
            sha = self.source.last_change(head, folder.path)
            sink.post(folder.name, sha, StatusState.ERROR, message)
            crash.reported = True
        except Exception:  # reported on a later attempt
            log.warning("app in %s: the error status could not be posted", folder.path)
