"""The Kubernetes edge: server-side apply, delete, read, readiness, and the per-app records.

Every write goes through server-side apply with the `gitops-canary` field manager and strict
field validation. A set of objects is first applied as a dry run, all of it, so a bad object
(an unknown field, a forbidden namespace, a kind the server does not know) leaves the cluster
untouched. API failures become the project's error types: 5xx, 429, connection errors and
timeouts are transient, the rest permanent with the server's own message.

Every request carries a timeout (connect, read), API discovery's included: a server that accepts
and never answers costs one reconcile a bounded wait, never the loop. A record that no longer
parses is quarantined: copied aside for a person to read, then removed, so the app is observed
anew from git and the cluster instead of crashing every start.

With `watch()`, the records and the objects the app label marks are read from a watched copy
(`controller/edges/watch.py`): a read the copy can answer costs no request, a write goes into
it from the server's answer, and within `fresh()` every read goes to the server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

from controller.domain.drift import Drift, deleted, differences
from controller.domain.machine import Owned, Record, StatusNote
from controller.domain.render import Key, key_of
from controller.domain.types import (
    FIELD_MANAGER,
    LABEL_APP,
    LABEL_VERSION,
    WORKLOAD_KINDS,
    AppName,
    KubeObject,
    Phase,
    Sha,
    StatusState,
)
from controller.edges.kubeapi import NotFound, translate
from controller.edges.watch import Changed, Informer
from controller.errors import ApiError, CanaryError, ForbiddenError, TransientError

log = logging.getLogger(__name__)

RECORD_PREFIX = "gitops-canary."
MANAGED_BY = {"app.kubernetes.io/managed-by": "gitops-canary"}
# Quarantined records carry neither the records' prefix nor MANAGED_BY: never listed as records.
QUARANTINE_PREFIX = "gitops-canary-quarantine."
QUARANTINED = {"gitops-canary/quarantined": "true"}
QUARANTINED_FROM = "gitops-canary/quarantined-from"
# (connect, read) seconds. A list of a few hundred records or a dry-run apply answers in well
# under a second; 30 s of silence is an outage, not a slow answer.
REQUEST_TIMEOUT = (5.0, 30.0)
POD_IMMUTABLE = "pod updates may not change fields"
# One per-call attempt for reads too: urllib3's default (3 retries) would make a hung server
# cost four read timeouts per GET. Connection failures are retried twice, quickly.
RETRIES = urllib3.Retry(total=2, connect=2, read=0, redirect=0, backoff_factor=0.2)
VARIANT_KINDS = (*sorted(WORKLOAD_KINDS), "ConfigMap")
API_VERSIONS = {"Deployment": "apps/v1", "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1",
                "DaemonSet": "apps/v1", "Pod": "v1", "ConfigMap": "v1", "Secret": "v1",
                "Service": "v1"}
# Watched (with `watch()`), by the app label: what a reconcile reads of an app. Secrets are
# not: the controller reads only the Secrets it names, never lists them.
WATCHED_KINDS = (*VARIANT_KINDS, "Service")


def describe(obj: KubeObject) -> str:
    kind, namespace, name = key_of(obj)
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _short(obj: KubeObject) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


def _quarantine_stem(app: AppName) -> str:
    """The quarantine name before its time, within a name's 253 characters."""
    return f"{QUARANTINE_PREFIX}{app[:200]}."


class _TimedClient(DynamicClient):
    """The dynamic client with a timeout on every request. Discovery (run by the constructor
    and again for each new API group) calls `request` as every verb does, so this one override
    covers the calls no keyword argument of ours could reach."""

    def __init__(self, api: client.ApiClient, timeout: tuple[float, float]) -> None:
        self.timeout = timeout  # set first: the base constructor already sends requests
        super().__init__(api)

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        params.setdefault("_request_timeout", self.timeout)
        return super().request(method, path, body=body, **params)


class Kube:
    """`timeout` is (connect, read) seconds per HTTP request. The retries of a request are the
    ApiClient's (its configuration's `retries`): `connect()` bounds them with RETRIES."""

    def __init__(self, api: client.ApiClient, namespaces: frozenset[str] | None = None,
                 cluster_kinds: frozenset[str] = frozenset(), state_namespace: str = "default",
                 timeout: tuple[float, float] = REQUEST_TIMEOUT):
        self.api = api
        self.namespaces = namespaces  # None: every namespace is allowed
        self.cluster_kinds = cluster_kinds
        self.state_namespace = state_namespace
        self.timeout = timeout
        self._dynamic: DynamicClient | None = None
        self._records: dict[AppName, tuple[str, Record]] = {}  # by resourceVersion
        self._discovery = threading.RLock()
        self._watch: tuple[frozenset[str], Changed | None] | None = None  # see watch()
        self._informers: dict[tuple[str, str | None], Informer] = {}
        self._informing = threading.Lock()
        self._local = threading.local()  # `fresh()`, per thread: apps run side by side

    @property
    def dynamic(self) -> DynamicClient:
        with self._discovery:
            if self._dynamic is None:
                self._dynamic = translate("API discovery",
                                           lambda: _TimedClient(self.api, self.timeout))
            return self._dynamic

    def resource(self, api_version: str, kind: str) -> Resource:
        """The API resource of a kind. Discovery's cache is filled lazily, one thread at a
        time (apps are reconciled side by side); every other call is a thread-safe request."""
        try:
            with self._discovery:
                found: Resource = translate(f"discovering {kind}",
                                             lambda: self.dynamic.resources.get(
                                                 api_version=api_version, kind=kind))
            return found
        except ResourceNotFoundError:
            raise ApiError(f"the cluster has no kind {kind} in {api_version}") from None

    # --- informers: reads from a watched copy ----------------------------------------------

    def watch(self, on_change: Changed | None = None,
              kinds: Collection[str] = WATCHED_KINDS) -> None:
        """From now on, keep a watched copy (`Informer`) of the app records and of the
        objects of `kinds` that carry the app label, and read them from it: one per kind and
        allowed namespace (every namespace when all are allowed), started when the kind is
        first read or written. `on_change` hears of changes someone else makes."""
        self._watch = (frozenset(kinds), on_change)

    def watches(self) -> list[Informer]:
        """The informers started so far (their `synced`, `lists` and `events`: /metrics)."""
        with self._informing:
            return list(self._informers.values())

    def close(self) -> None:
        """Stop every informer."""
        with self._informing:
            informers, self._informers = list(self._informers.values()), {}
        for informer in informers:
            informer.stop()

    @contextlib.contextmanager
    def fresh(self) -> Iterator[None]:
        """Within: this thread's reads go to the server (a resync trusts no copy)."""
        before = getattr(self._local, "fresh", False)
        self._local.fresh = True
        try:
            yield
        finally:
            self._local.fresh = before

    def informer(self, kind: str, namespace: str | None) -> Informer | None:
        """The informer that holds `kind` in `namespace`, started on first use; None when
        the kind is not watched."""
        if self._watch is None:
            return None
        kinds, on_change = self._watch
        record = kind == "ConfigMap" and namespace == self.state_namespace
        if not record and (kind not in kinds or (self.namespaces is not None
                                                 and namespace not in self.namespaces)):
            return None
        scope = (f"record:{kind}", namespace) if record else \
            (kind, namespace if self.namespaces is not None else None)
        with self._informing:
            found = self._informers.get(scope)
            if found is None:
                resource = self.resource(API_VERSIONS[kind], kind)
                selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items()) if record \
                    else LABEL_APP
                found = self._informers[scope] = Informer(
                    self.dynamic, resource, scope[1], selector,
                    None if record else on_change, self.timeout).start()
            return found

    def _informer_of(self, key: Key) -> Informer | None:
        kind, namespace, _ = key
        return self.informer(kind, namespace or None)

    def _cached(self, key: Key) -> KubeObject | None:
        if getattr(self._local, "fresh", False):
            return None
        informer = self._informer_of(key)
        return informer.cached(key) if informer is not None else None

    def _forget(self, key: Key) -> None:
        informer = self._informer_of(key)
        if informer is not None:
            informer.forget(key)

    # --- policy: what the repository may touch ---------------------------------------------

    def admit(self, objects: Iterable[KubeObject]) -> list[KubeObject]:
        """Check namespaces and scopes; return the objects with namespaces fixed by scope."""
        admitted = []
        for obj in objects:
            res = self.resource(obj["apiVersion"], obj["kind"])
            meta = obj["metadata"]
            if res.namespaced:
                namespace = meta.get("namespace") or "default"
                if namespace == self.state_namespace:
                    raise ForbiddenError(f"{obj['kind']} {meta.get('name')}: the state "
                                         f"namespace is never written from git")
                if self.namespaces is not None and namespace not in self.namespaces:
                    allowed = ", ".join(sorted(self.namespaces)) or "none"
                    raise ForbiddenError(f"{describe(obj)}: namespace {namespace} is not allowed "
                                         f"(allowed: {allowed})")
            else:
                if obj["kind"] not in self.cluster_kinds:
                    raise ForbiddenError(f"{describe(obj)}: cluster-scoped kind {obj['kind']} is "
                                         f"not allowed (--allow-cluster-kind)")
                meta.pop("namespace", None)
            admitted.append(obj)
        return admitted

    # --- writes -----------------------------------------------------------------------------

    def _apply_one(self, obj: KubeObject, dry_run: bool) -> Any:
        res = self.resource(obj["apiVersion"], obj["kind"])
        params: list[tuple[str, str]] = [("fieldValidation", "Strict")]
        informer = None if dry_run else self._informer_of(key_of(obj))
        with informer.writing(key_of(obj)) if informer else contextlib.nullcontext():
            result = translate(
                _short(obj),
                lambda: self.dynamic.server_side_apply(
                    res, body=obj, namespace=obj["metadata"].get("namespace"),
                    field_manager=FIELD_MANAGER, force_conflicts=True,
                    dry_run="All" if dry_run else None, query_params=params))
            if informer is not None:  # read your writes
                informer.wrote(result.to_dict() if hasattr(result, "to_dict") else dict(result))
        return result

    def dry_run(self, obj: KubeObject) -> KubeObject:
        """What the server would make of applying `obj` (defaults filled in), writing
        nothing."""
        result = self._apply_one(obj, dry_run=True)
        found: KubeObject = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        return found

    def drift(self, objects: Iterable[KubeObject], live: Mapping[Key, KubeObject],
              ignore: Mapping[Key, Collection[str]]) -> list[Drift]:
        """Where the cluster differs from git's objects: per object a dry run of its apply,
        compared with the live one (`live` holds those already read; the rest are read
        here). Nothing is written."""
        found = []
        for obj in objects:
            key = key_of(obj)
            current = live.get(key) or self.get(key, obj["apiVersion"])
            if current is None:
                found.append(deleted(key))
                continue
            try:
                would = self.dry_run(obj)
            except ApiError as error:
                if obj["kind"] != "Pod" or POD_IMMUTABLE not in str(error):
                    raise
                found.append(Drift(key, ("spec changed",)))  # corrected by replacing the Pod
                continue
            changes = differences(would, current, ignore.get(key, ()))
            if changes:
                found.append(Drift(key, changes))
        return found

    def event(self, key: Key, api_version: str, reason: str, message: str,
              warning: bool = False) -> None:
        """A Kubernetes Event on an object (`kubectl describe` and `kubectl events` show it).
        Best effort: an event the server refuses is a log line, never a failed reconcile."""
        kind, namespace, name = key
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace or "default"},
            "involvedObject": {"apiVersion": api_version, "kind": kind, "name": name,
                               **({"namespace": namespace} if namespace else {})},
            "reason": reason, "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._create(body)
        except CanaryError as error:
            log.warning("event %s on %s %s/%s not recorded: %s", reason, kind, namespace, name,
                        error)

    def apply(self, objects: Sequence[KubeObject]) -> None:
        """Apply all or nothing: a dry run of every object first, then the real writes.

        A bare Pod cannot change its spec in place (only its images): one whose new spec the
        server refuses is replaced — deleted, and created again by the apply that follows once
        it is gone (a TransientError until then, so the caller's retry finishes it)."""
        objects = self.admit(objects)
        replaced = []
        for obj in objects:
            try:
                self._apply_one(obj, dry_run=True)
            except ApiError as error:
                if obj["kind"] != "Pod" or POD_IMMUTABLE not in str(error):
                    raise
                replaced.append(obj)
            except TransientError as error:
                if obj["kind"] != "Pod" or "being deleted" not in str(error):
                    raise
                replaced.append(obj)  # still terminating from an earlier replacement
        for obj in objects:
            if obj in replaced:
                continue
            self._apply_one(obj, dry_run=False)
            log.info("applied %s", describe(obj))
        for obj in replaced:
            self.delete(key_of(obj))
            log.info("replacing %s: deleted, to be created with its new spec", describe(obj))
        if replaced:
            raise TransientError(f"replacing {', '.join(map(describe, replaced))} (a pod's spec "
                                 f"changes by delete and create): created once deleted")

    def claim(self, objects: Sequence[KubeObject], owned: set[Key], adopt_own: bool,
              app: str, adopt: bool = False) -> None:
        """Refuse to take over an object the app did not create: one that exists and is not in
        the app's inventory (`owned`) belongs to another app, another tool or a person. With
        `adopt_own` (a record from before inventories), what the controller's own field
        manager applied and no other app's label claims is adopted; with `adopt` (canary.yaml
        asks to take over what kubectl, Flux or Argo CD applied), anything no other app's
        label claims."""
        for obj in objects:
            if key_of(obj) in owned:
                continue
            with self.fresh():  # who manages it: managedFields, which the copy does not keep
                live = self.get(key_of(obj), obj["apiVersion"])
            if live is None:
                continue
            meta = live.get("metadata") or {}
            managers = sorted({m.get("manager", "?") for m in meta.get("managedFields") or []})
            if (adopt or (adopt_own and FIELD_MANAGER in managers)) and \
                    (meta.get("labels") or {}).get(LABEL_APP) in (None, app):
                continue
            owner = (meta.get("labels") or {}).get(LABEL_APP)
            by = f"app {owner}" if owner else ", ".join(managers) or "someone else"
            hint = "never taken over" if owner else "canary.yaml's adopt: true takes it over"
            raise ForbiddenError(f"{obj['kind']} {key_of(obj)[2]} exists and is not app "
                                 f"{app}'s (managed by {by}): {hint}")

    def objects(self, owned: Iterable[Owned]) -> list[KubeObject]:
        """The live objects of an inventory (those that still exist), one GET each."""
        found = []
        for o in owned:
            obj = self.get(o.key, o.api_version)
            if obj is not None:
                obj.setdefault("kind", o.kind)
                obj.setdefault("apiVersion", o.api_version)
                found.append(obj)
        return found

    def delete(self, key: Key, app: str | None = None, api_version: str | None = None) -> bool:
        """Delete an object; with `app`, only when it carries no other app's label (the
        inventory says it is the app's, the label confirms nobody else took it)."""
        kind, namespace, name = key
        res = self.resource(api_version or API_VERSIONS.get(kind, "v1"), kind)
        if app is not None:
            with self.fresh():  # a delete trusts no copy: the label is read from the server
                live = self.get(key, api_version)
            if live is None:
                return False
            owner = ((live.get("metadata") or {}).get("labels") or {}).get(LABEL_APP)
            if owner not in (None, app):
                log.error("not deleting %s %s/%s: it is labelled for app %s, not %s", kind,
                          namespace, name, owner, app)
                return False
        self._forget(key)
        try:
            translate(f"deleting {kind} {namespace}/{name}", lambda: self.dynamic.delete(
                res, name=name, namespace=namespace or None,
                body={"propagationPolicy": "Background"}))
        except NotFound:
            return False
        log.info("deleted %s %s/%s", kind, namespace, name)
        return True

    # --- reads ------------------------------------------------------------------------------

    def get(self, key: Key, api_version: str | None = None) -> KubeObject | None:
        """The live object: from the watched copy when it holds it, else one GET."""
        cached = self._cached(key)
        if cached is not None:
            return cached
        kind, namespace, name = key
        res = self.resource(api_version or API_VERSIONS.get(kind, "v1"), kind)
        try:
            found = translate(f"reading {kind} {namespace}/{name}", lambda: self.dynamic.get(
                res, name=name, namespace=namespace or None))
        except NotFound:
            return None
        obj: KubeObject = found.to_dict()
        return obj

    def pod_problems(self, workloads: Iterable[KubeObject]) -> str | None:
        """Why the workloads' pods are not ready, in the words of the scheduler and the
        kubelet: "0/2 nodes are available: 2 node(s) didn't have free ports ...", an image
        that cannot be pulled, a container that keeps crashing. None when nothing says."""
        said: list[str] = []
        for obj in workloads:
            meta = obj.get("metadata") or {}
            labels = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            pods: list[KubeObject] = [obj] if obj.get("kind") == "Pod" else \
                self._pods(str(meta.get("namespace") or ""), labels)
            for pod in pods:
                for reason in _pod_problems(pod):
                    if reason not in said:
                        said.append(reason)
        return "; ".join(said[:2]) if said else None

    def _pods(self, namespace: str, labels: dict[str, str]) -> list[KubeObject]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        res = self.resource("v1", "Pod")
        listed = translate(f"listing pods {selector}", lambda: self.dynamic.get(
            res, namespace=namespace or None, label_selector=selector, limit=20))
        pods: list[KubeObject] = listed.to_dict().get("items") or []
        return pods

    def variants(self, namespace: str, app: str) -> list[KubeObject]:
        """Variants found by label, for records from before inventories (Secrets are not
        listed: the controller may read only the Secrets it names)."""
        selector = f"{LABEL_APP}={app},{LABEL_VERSION}"
        found: list[KubeObject] = []
        for kind in VARIANT_KINDS:
            res = self.resource(API_VERSIONS[kind], kind)
            listed = translate(f"listing {kind} variants of {app}", lambda res=res: (  # type: ignore[misc]
                self.dynamic.get(res, namespace=namespace, label_selector=selector)))
            for item in listed.to_dict().get("items") or []:
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", API_VERSIONS[kind])
                found.append(item)
        return found

    # --- the per-app records ----------------------------------------------------------------

    def records(self, quarantine: bool = True) -> dict[AppName, Record]:
        """Every app record in the state namespace, in one list call. A record that does not
        parse is quarantined (see `_quarantine`) and left out, as if the app were new; with
        `quarantine=False` (a read-only caller) it is only logged and left out."""
        records, parsed = {}, {}
        for name, version, load in self._record_maps():
            if not name.startswith(RECORD_PREFIX):
                continue
            # A record belongs to the app its ConfigMap is named for, whatever it says inside.
            app = AppName(name[len(RECORD_PREFIX):])
            known = self._records.get(app)
            if known is not None and known[0] == version and version:
                records[app] = parsed[app] = known
                continue
            cm = load()
            data = cm.get("data") or {}
            if "record" not in data:
                continue
            try:
                records[app] = parsed[app] = (version, dataclasses.replace(
                    record_from_json(data["record"]), app=app))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
                problem = f"{type(error).__name__}: {error}"
                if quarantine:
                    self._quarantine(app, cm, problem)
                else:
                    log.error("record %s/%s does not parse (%s): ignored",
                              self.state_namespace, name, problem)
        self._records = parsed
        return {app: record for app, (_, record) in records.items()}

    def _record_maps(self) -> list[tuple[str, str, Callable[[], KubeObject]]]:
        """The records' ConfigMaps, as (name, resourceVersion, its reader): from the watched
        copy once it has listed, else one list call. Read raw (JSON, no model objects): at a
        thousand apps the client's wrapping of every ConfigMap cost more than the request;
        a record whose version is known is not even parsed."""
        informer = self.informer("ConfigMap", self.state_namespace)
        copied = informer.held() if informer is not None else None
        if copied is not None:
            return [(key[2], held.version, lambda held=held: held.object)  # type: ignore[misc]
                    for key, held in copied.items()]
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        response: Any = translate("reading app records", lambda: client.CoreV1Api(
            self.api).list_namespaced_config_map(
                self.state_namespace, label_selector=selector, _preload_content=False,
                _request_timeout=self.timeout))
        try:
            listed: list[KubeObject] = json.loads(response.data).get("items") or []
        except (ValueError, AttributeError) as error:
            raise TransientError(f"reading app records: not JSON: {error}") from None
        return [(str(cm["metadata"]["name"]), str(cm["metadata"].get("resourceVersion", "")),
                 lambda cm=cm: cm) for cm in listed]  # type: ignore[misc]

    def _quarantine(self, app: AppName, cm: KubeObject, problem: str) -> None:
        """Copy a record that does not parse to `gitops-canary-quarantine.<app>.<unix time>`
        (same data, not a record by name or label), then delete the original: kept for a
        person, and the app is re-observed from git and the cluster as if new. The copy is
        written first, and an identical copy from an interrupted earlier try is reused, so a
        kill in between neither loses the record nor piles up copies. Never raises: one bad
        record must not stop the others; failing, it is tried again on the next listing."""
        meta = cm["metadata"]
        source = f"{self.state_namespace}/{meta['name']}"
        try:
            kept = self._quarantined_copy(app, cm)
            if kept is None:
                kept = f"{_quarantine_stem(app)}{int(time.time())}"
                self._create({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": kept, "namespace": self.state_namespace,
                                 "labels": dict(QUARANTINED),
                                 "annotations": {QUARANTINED_FROM: source}},
                    **{k: cm[k] for k in ("data", "binaryData") if cm.get(k)},
                })
            res = self.resource("v1", "ConfigMap")
            # Preconditions: a record rewritten since the listing (a fix) is not deleted.
            with contextlib.suppress(NotFound):  # deleted meanwhile: nothing left to do
                translate(f"deleting record {source}", lambda: self.dynamic.delete(
                    res, name=meta["name"], namespace=self.state_namespace,
                    body={"preconditions": {"uid": meta["uid"],
                                            "resourceVersion": meta["resourceVersion"]}}))
        except CanaryError as error:
            log.error("app %s: record %s does not parse (%s) and was not quarantined: %s",
                      app, source, problem, error)
            return
        log.error("app %s: record %s does not parse (%s): quarantined as %s/%s, the app is "
                  "observed anew from git and the cluster", app, source, problem,
                  self.state_namespace, kept)

    def _quarantined_copy(self, app: AppName, cm: KubeObject) -> str | None:
        """The name of an existing quarantined copy of this very record, if any."""
        res = self.resource("v1", "ConfigMap")
        selector = ",".join(f"{k}={v}" for k, v in QUARANTINED.items())
        listed = translate("reading quarantined records", lambda: self.dynamic.get(
            res, namespace=self.state_namespace, label_selector=selector)).to_dict()
        source = f"{self.state_namespace}/{cm['metadata']['name']}"
        for copy in listed.get("items") or []:
            meta = copy.get("metadata") or {}
            if str(meta.get("name", "")).startswith(_quarantine_stem(app)) \
                    and (meta.get("annotations") or {}).get(QUARANTINED_FROM) == source \
                    and (copy.get("data") or {}) == (cm.get("data") or {}) \
                    and (copy.get("binaryData") or {}) == (cm.get("binaryData") or {}):
                return str(meta["name"])
        return None

    def _create(self, obj: KubeObject) -> None:
        """Create, never overwrite (409 if the name is taken)."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        translate(f"creating {describe(obj)}", lambda: self.dynamic.create(
            res, body=obj, namespace=obj["metadata"].get("namespace")))

    def delete_record(self, app: str) -> None:
        self.delete(("ConfigMap", self.state_namespace, f"{RECORD_PREFIX}{app}"))

    def save_record(self, record: Record) -> None:
        body = {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{RECORD_PREFIX}{record.app}",
                         "namespace": self.state_namespace, "labels": dict(MANAGED_BY)},
            "data": {"record": record_to_json(record)},
        }
        self._apply_one(body, dry_run=False)


def _note(note: StatusNote) -> dict[str, str]:
    return {"sha": note.sha, "state": str(note.state), "description": note.description}


def _unnote(data: dict[str, str]) -> StatusNote:
    return StatusNote(Sha(data["sha"]), StatusState(data["state"]), data["description"])


STRUCTURED = ("last_status", "unposted", "inventory", "approvals_used")


def record_to_json(record: Record) -> str:
    data = {k: v for k, v in record.__dict__.items() if k not in STRUCTURED}
    data["last_status"] = _note(record.last_status) if record.last_status else None
    data["unposted"] = [_note(n) for n in record.unposted]
    data["approvals_used"] = list(record.approvals_used)
    data["inventory"] = None if record.inventory is None else [
        dataclasses.asdict(o) for o in record.inventory]
    return json.dumps(data, sort_keys=True)


def record_from_json(text: str) -> Record:
    data = json.loads(text)
    status = data.pop("last_status", None)
    unposted = data.pop("unposted", None) or []
    inventory = data.pop("inventory", None)
    known = {f.name for f in dataclasses.fields(Record)}
    values = {k: v for k, v in data.items() if k in known}
    values["phase"] = Phase(values.get("phase", Phase.STABLE))
    values["last_status"] = _unnote(status) if status else None
    values["unposted"] = tuple(_unnote(n) for n in unposted)
    values["approvals_used"] = tuple(Sha(s) for s in values.get("approvals_used") or ())
    values["inventory"] = None if inventory is None else tuple(
        Owned(**{k: str(v) for k, v in o.items()}) for o in inventory)
    return Record(**values)


def _pod_problems(pod: KubeObject) -> list[str]:
    """A pod's reasons for not being ready."""
    status = pod.get("status") or {}
    found = []
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            found.append(str(condition.get("message") or condition.get("reason") or
                             "unschedulable"))
    for container in [*(status.get("initContainerStatuses") or []),
                      *(status.get("containerStatuses") or [])]:
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating",
                                                               "PodInitializing"):
            found.append(f"{container.get('name')}: {waiting['reason']}"
                         + (f" ({waiting['message']})" if waiting.get("message") else ""))
        elif terminated.get("reason") and terminated.get("exitCode"):
            found.append(f"{container.get('name')}: {terminated['reason']} (exit "
                         f"{terminated['exitCode']})")
    return found


def rollout_ready(obj: KubeObject | None) -> bool:
    """Has the workload rolled out its current spec, with every replica ready?"""
    if obj is None:
        return False
    kind, spec, status = obj["kind"], obj.get("spec") or {}, obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation", 0)
    if kind == "Pod":
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in status.get("conditions") or [])
    if status.get("observedGeneration", 0) < generation:
        return False
    if kind == "DaemonSet":
        wanted = status.get("desiredNumberScheduled", 0)
        return bool(status.get("updatedNumberScheduled", 0) == wanted
                    and status.get("numberReady", 0) == wanted)
    replicas = spec.get("replicas", 1)
    ready = status.get("readyReplicas", 0) == replicas
    if kind == "Deployment":
        return bool(ready and status.get("updatedReplicas", 0) == replicas
                    and status.get("availableReplicas", 0) == replicas
                    and status.get("replicas", 0) == replicas)
    if kind == "StatefulSet":
        return bool(ready and status.get("currentRevision") == status.get("updateRevision"))
    return bool(ready)


def connect(kubeconfig: str | None) -> client.ApiClient:
    """An API client from a kubeconfig file, $KUBECONFIG, or the in-cluster service account,
    with bounded retries (RETRIES): together with Kube's request timeout, a hung API server
    costs each call at most about one read timeout.

    Not bounded here: the DNS lookup of the server's name (the system resolver's own
    timeouts), an exec credential plugin named by a kubeconfig (run without a deadline by the
    client library), and a server that trickles bytes (the read timeout is per read)."""
    configuration = client.Configuration()
    try:
        if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as error:
        raise ApiError(f"cannot load Kubernetes credentials: {error}") from None
    configuration.retries = RETRIES
    return client.ApiClient(configuration)
