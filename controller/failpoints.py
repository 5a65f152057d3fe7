"""Named crash points after each kind of write, for the crash-matrix tests (as etcd's gofail).

Off unless $GITOPS_CANARY_FAILPOINTS names a point and a count, e.g. `apply:2`: the second time
the controller passes the point `apply`, it kills itself with SIGKILL — no cleanup, no flush,
exactly like an OOM kill or a node that dies. The points: `record-saved` (after a record
write), `apply` (after a set of objects is applied), `delete` (after an object is deleted),
`status-posted` (after a status reached the sink).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "GITOPS_CANARY_FAILPOINTS"
POINTS = ("record-saved", "apply", "delete", "status-posted")

_passed: Counter[str] = Counter()


def _armed() -> dict[str, int]:
    spec = os.environ.get(ENV, "")
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        armed[name] = int(count or 1)
    return armed


def hit(point: str) -> None:
    """Pass the point; die here when it is armed for this pass."""
    armed = _armed()
    if point not in armed:
        return
    _passed[point] += 1
    if _passed[point] == armed[point]:
        os.kill(os.getpid(), signal.SIGKILL)
