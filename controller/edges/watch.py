"""Informers: the objects the controller labelled, listed once and then followed by a watch,
so a reconcile reads them without a request and someone else's change is seen at once.

An `Informer` keeps one kind in one namespace (or in all) by a label selector: a list, then a
watch from the list's resourceVersion. When the server ends a watch (every WATCH_SECONDS) it is
resumed where it stopped; after a failure, or when the server no longer has that version (410
Gone), the kind is listed anew: the copy is never trusted across a gap. Until it has listed,
and from a failure until it has listed again, it answers nothing and the caller asks the
server. A watch the server refuses (403: an install without `list`/`watch`) stops for good,
with a warning: reads then go to the server, as without informers.

The copy keeps each object as compact JSON without its managedFields, and a read parses its
own copy: at a thousand apps, parsed objects cost 29 MiB of RSS, text costs no more than the
noise between runs with and without the copy (`bench/scale.py`).

Read your writes: what the controller writes goes into the copy from the server's answer, so
the next reconcile never sees an object as it was before the controller's own write; an event
older than what the copy holds is ignored (resourceVersions compared as the etcd revisions
they are). What the controller deletes is forgotten before the request, and the events of its
deletion (a pod terminating) are ignored until it is gone.

Someone else's change is reported to `on_change` with the app the object's label names: a
field other than the status changed while no write of the controller's own was in flight for
that object, or the object was deleted. The server's status updates and the workload
controllers' bookkeeping annotations are not changes. (managedFields cannot say who wrote
last: a `kubectl scale` through the scale subresource leaves its entry without a time.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.resource import Resource
from kubernetes.watch.watch import iter_resp_lines

from controller.domain.drift import bookkept
from controller.domain.render import Key, key_of
from controller.domain.types import LABEL_APP, KubeObject
from controller.edges.kubeapi import translate
from controller.errors import CanaryError, ForbiddenError, TransientError

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # the server ends a watch after this; it is resumed where it stopped
BACKOFF = (1.0, 30.0)  # seconds before listing again after a failure: first, at most
PAGE = 500  # objects per list request
FORGOTTEN_SECONDS = 120.0  # how long the events of an object the controller deleted are ignored

Changed = Callable[[str, Key, str], None]  # (app, object, "changed" | "deleted")


class Gone(Exception):
    """The server no longer has the version a watch resumed from: list again."""


class Held(NamedTuple):
    """An object as the copy keeps it."""

    version: str  # its resourceVersion
    text: str  # compact JSON, without managedFields

    @property
    def object(self) -> KubeObject:
        found: KubeObject = json.loads(self.text)
        return found


def slim(obj: KubeObject, kind: str, api_version: str) -> KubeObject:
    """The object with its kind and without managedFields (most of its size; the reads that
    need them, who may take over an object, go to the server)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {"kind": kind, "apiVersion": api_version, **obj, "metadata": meta}


def held(obj: KubeObject) -> Held:
    return Held(str((obj.get("metadata") or {}).get("resourceVersion") or ""),
                json.dumps(obj, separators=(",", ":")))


def newer(version: str, than: str) -> bool:
    """Is `version` later than `than`? resourceVersions are opaque by contract and etcd
    revisions in fact; one that is not a number counts as newer."""
    try:
        return int(version) > int(than)
    except ValueError:
        return True


def content(obj: KubeObject) -> dict[str, Any]:
    """What someone can change: everything but the status and the server's metadata; labels
    and annotations, without the workload controllers' bookkeeping."""
    meta = obj.get("metadata") or {}
    kept = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    kept["labels"] = meta.get("labels") or {}
    kept["annotations"] = bookkept(meta.get("annotations") or {})
    return kept


def selected(obj: KubeObject, selector: str) -> bool:
    """Does `obj` match a label selector of `key` and `key=value` terms?"""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, is_value, value = term.partition("=")
        if key not in labels or (is_value and labels[key] != value):
            return False
    return True


class Informer:
    def __init__(self, dynamic: DynamicClient, resource: Resource, namespace: str | None,
                 selector: str, on_change: Changed | None = None,
                 timeout: tuple[float, float] = (5.0, 30.0),
                 watch_seconds: int = WATCH_SECONDS) -> None:
        self.dynamic, self.resource, self.namespace = dynamic, resource, namespace
        self.kind, self.api_version = str(resource.kind), str(resource.group_version)
        self.selector, self.on_change = selector, on_change
        self.timeout, self.watch_seconds = timeout, watch_seconds
        self.what = f"{self.kind} in {namespace or 'every namespace'} ({selector})"
        self.lists = 0  # how many times the kind was listed: 1, and one per gap
        self.events = 0  # watch events received
        self.refused: str | None = None  # the server's refusal: never synced
        self._objects: dict[Key, Held] = {}
        self._forgotten: dict[Key, float] = {}  # deleted by the controller: when
        self._writing: dict[Key, int] = {}  # the controller's writes in flight
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"watch-{self.kind}-{namespace or 'all'}")

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # unblocks the stream's read
                response.shutdown()
        self._thread.join(timeout=5)

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # --- what the reconcile reads and writes ------------------------------------------------

    def cached(self, key: Key) -> KubeObject | None:
        """A copy of the object, when the informer has listed and holds it. None says
        nothing: the object may be missing, unlabelled, or the informer not synced."""
        with self._lock:
            if not self._synced.is_set():
                return None
            found = self._objects.get(key)
        return found.object if found is not None else None

    def held(self) -> dict[Key, Held] | None:
        """Every object held, by key; None until synced."""
        with self._lock:
            return dict(self._objects) if self._synced.is_set() else None

    @contextlib.contextmanager
    def writing(self, key: Key) -> Iterator[None]:
        """Within: the controller writes the object (and `wrote()` its answer); its events
        meanwhile are the controller's own, not reported."""
        with self._lock:
            self._writing[key] = self._writing.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._writing.pop(key) - 1
                if left:
                    self._writing[key] = left

    def wrote(self, obj: KubeObject) -> None:
        """The server's answer to the controller's own write."""
        obj = slim(obj, self.kind, self.api_version)
        key, written = key_of(obj), held(obj)
        with self._lock:
            self._forgotten.pop(key, None)
            known = self._objects.get(key)
            if not selected(obj, self.selector):
                self._objects.pop(key, None)
            elif known is None or newer(written.version, known.version):
                self._objects[key] = written

    def forget(self, key: Key) -> None:
        """The controller is about to delete the object."""
        now = time.monotonic()
        with self._lock:
            self._objects.pop(key, None)
            # An object already gone sends no DELETED event: its entry expires instead.
            self._forgotten = {k: at for k, at in self._forgotten.items()
                               if now - at < FORGOTTEN_SECONDS}
            self._forgotten[key] = now

    # --- the list and the watch -------------------------------------------------------------

    def _run(self) -> None:
        version: str | None = None
        backoff = BACKOFF[0]
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                started = time.monotonic()
                version = self._follow(version)
                backoff = BACKOFF[0]
                if time.monotonic() - started < BACKOFF[0]:  # ended at once: never a busy loop
                    self._stop.wait(BACKOFF[0])
            except Gone as gone:
                log.info("watching %s: %s: listing again", self.what, gone)
                version = None
            except ForbiddenError as error:
                self.refused = str(error)
                self._synced.clear()
                log.warning("watching %s refused (%s): read from the server instead",
                            self.what, error)
                return
            except Exception as error:  # the copy is not trusted across a gap: list again
                self._synced.clear()
                if self._stop.is_set():
                    return
                log.warning("watching %s: %s (listing again in %.0fs)", self.what, error,
                            backoff)
                version = None
                self._stop.wait(backoff)
                backoff = min(2 * backoff, BACKOFF[1])

    def _request(self, action: str, **params: Any) -> Any:
        path = self.resource.path(namespace=self.namespace)  # type: ignore[no-untyped-call]
        return translate(action, lambda: self.dynamic.request(
            "get", path, label_selector=self.selector, serialize=False, **params))

    def _list(self) -> str:
        """Every selected object, a page at a time; the version to watch from."""
        objects: dict[Key, Held] = {}
        token = None
        while True:
            response = self._request(f"listing {self.what}", limit=PAGE, _continue=token,
                                     _request_timeout=self.timeout)
            try:
                listed = json.loads(response.data)
            except ValueError as error:
                raise TransientError(f"listing {self.what}: not JSON: {error}") from None
            for item in listed.get("items") or []:
                obj = slim(item, self.kind, self.api_version)
                objects[key_of(obj)] = held(obj)
            token = (listed.get("metadata") or {}).get("continue")
            if not token:
                break
        with self._lock:
            before = self._objects if self.lists else {}
            for key, known in self._objects.items():  # written meanwhile: the newer stays
                if key in objects and not newer(objects[key].version, known.version):
                    objects[key] = known
            self._objects = objects
            self.lists += 1
            self._synced.set()
        for key, old in before.items():  # what changed while the watch was away
            new = objects.get(key)
            if new is None:
                self._changed(old.object, "deleted")
            elif new.text != old.text and content(old.object) != content(new.object):
                self._changed(new.object, "changed")
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _follow(self, version: str) -> str:
        """Watch from `version` until the server ends the watch; the last version seen."""
        read = self.timeout[1] + self.watch_seconds
        response = self._request(f"watching {self.what}", watch="true",
                                 resource_version=version, allow_watch_bookmarks="true",
                                 timeout_seconds=self.watch_seconds,
                                 _request_timeout=(self.timeout[0], read))
        self._response = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stop.is_set():
                    break
                if line:
                    version = self._event(json.loads(line)) or version
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return version

    def _event(self, event: dict[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message") or "410 Gone")
            raise TransientError(f"watching {self.what}: {obj.get('message') or obj}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return str(version) if version else None
        self.events += 1
        obj = slim(obj, self.kind, self.api_version)
        key, copied = key_of(obj), held(obj)
        change = None
        with self._lock:
            known = self._objects.get(key)
            forgotten = self._forgotten.get(key)
            if forgotten is not None and time.monotonic() - forgotten < FORGOTTEN_SECONDS:
                if kind == "DELETED":
                    del self._forgotten[key]
                return str(version) if version else None  # the controller's own deletion
            if kind == "DELETED":
                if self._objects.pop(key, None) is not None:
                    change = "deleted"
            elif known is None or newer(copied.version, known.version):
                self._objects[key] = copied
                if known is not None and key not in self._writing and \
                        content(known.object) != content(obj):
                    change = "changed"
        if change is not None:
            self._changed(obj, change)
        return str(version) if version else None

    def _changed(self, obj: KubeObject, change: str) -> None:
        app = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_APP)
        if app and self.on_change is not None:
            try:
                self.on_change(str(app), key_of(obj), change)
            except CanaryError as error:
                log.warning("watching %s: acting on %s: %s", self.what, key_of(obj), error)
