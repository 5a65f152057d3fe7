"""Drift: where a live object differs from what applying git's object would make of it.

The Kubernetes edge asks the server for a dry run of git's object (server-side apply, the
controller's field manager, defaults filled in) and hands both here. What differs is drift:
a field someone else changed (`kubectl scale`, `kubectl set image`, `kubectl edit`), or the
object deleted. Fields other managers added and git does not set are theirs, not drift (a
`kubectl rollout restart` annotation, a sidecar injector's additions), because the dry run
keeps them. Values are named only where they cannot be secret: numbers, booleans and images.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from controller.domain.types import KubeObject

Key = tuple[str, str, str]  # kind, namespace, name

# Written by the server on every write (a dry run included), never drift.
VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields", "generation",
                               "creationTimestamp", "uid", "selfLink"})
# Annotations the workload controllers write on the object itself (a Deployment's revision),
# at any moment: never git's, and a comparison made while one changes must not call it drift.
BOOKKEEPING = ("deployment.kubernetes.io/",)
SHOWN_VALUES = ("image",)  # leaf names whose value a status may show
SHOWN_PER_OBJECT = 2  # differences named per object; the rest are counted


@dataclass(frozen=True)
class Drift:
    key: Key
    changes: tuple[str, ...]  # "spec.replicas 1 → 4" (live → git); ("deleted",) when gone

    def __str__(self) -> str:
        kind, _, name = self.key
        shown = ", ".join(self.changes[:SHOWN_PER_OBJECT])
        more = len(self.changes) - SHOWN_PER_OBJECT
        return f"{kind} {name} {shown}" + (f" and {more} more" if more > 0 else "")


def deleted(key: Key) -> Drift:
    return Drift(key, ("deleted",))


def differences(would: KubeObject, live: KubeObject,
                ignore: Collection[str] = ()) -> tuple[str, ...]:
    """What applying git's object would change in the live one (`would`: the server's dry
    run of that apply), as dotted paths; `ignore` lists paths another controller drives (an
    HPA's `spec.replicas`). Empty when the object is as git says."""
    secret = live.get("kind") == "Secret"
    return tuple(_describe(path, have, want, secret)
                 for path, have, want in _walk(_comparable(live), _comparable(would), "")
                 if path not in ignore)


def _comparable(obj: KubeObject) -> dict[str, Any]:
    clean = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in VOLATILE_METADATA}
    if meta.get("annotations"):
        meta["annotations"] = bookkept(meta["annotations"])
    clean["metadata"] = meta
    return clean


def bookkept(annotations: dict[str, Any]) -> dict[str, Any]:
    """The annotations without the workload controllers' bookkeeping."""
    return {k: v for k, v in annotations.items() if not k.startswith(BOOKKEEPING)}


def _walk(have: Any, want: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(have, dict) and isinstance(want, dict):
        for name in sorted(set(have) | set(want), key=str):
            yield from _walk(have.get(name), want.get(name), _join(path, str(name)))
    elif isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        for i, (h, w) in enumerate(zip(have, want, strict=True)):
            yield from _walk(h, w, f"{path}[{i}]")
    elif have != want:
        yield path, have, want


def _join(path: str, name: str) -> str:
    if not path:
        return name
    return f"{path}.{name}" if name.replace("-", "").replace("_", "").isalnum() \
        else f"{path}[{name}]"


def _describe(path: str, have: Any, want: Any, secret: bool) -> str:
    leaf = path.rsplit(".", 1)[-1]
    plain = all(v is None or isinstance(v, int | float | bool) for v in (have, want))
    if not secret and (plain or leaf in SHOWN_VALUES):
        return f"{path} {_value(have)} → {_value(want)}"
    if have is None:
        return f"{path} missing"
    if want is None:
        return f"{path} not in git"
    return f"{path} changed"


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
