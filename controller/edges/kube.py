"""The Kubernetes edge: server-side apply, delete, read, readiness, and the per-app records.

Every write goes through server-side apply with the `gitops-canary` field manager and strict
field validation. A set of objects is first applied as a dry run, all of it, so a bad object
(an unknown field, a forbidden namespace, a kind the server does not know) leaves the cluster
untouched. API failures become the project's error types: 5xx, 429 and connection errors are
transient, the rest permanent with the server's own message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

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
from controller.errors import ApiError, ForbiddenError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

RECORD_PREFIX = "gitops-canary."
MANAGED_BY = {"app.kubernetes.io/managed-by": "gitops-canary"}
VARIANT_KINDS = (*sorted(WORKLOAD_KINDS), "ConfigMap")
API_VERSIONS = {"Deployment": "apps/v1", "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1",
                "DaemonSet": "apps/v1", "Pod": "v1", "ConfigMap": "v1", "Secret": "v1"}


class NotFound(ApiError):
    """The object does not exist (HTTP 404)."""


TYPED_PATCH = re.compile(r"^failed to create typed patch object \([^)]*\): ")


def _message(error: Exception) -> str:
    """The server's own message, without the preamble that would push the field path out of a
    140-character status description."""
    body = getattr(error, "body", None) or ""
    try:
        message = str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        message = str(body or error)
    return TYPED_PATCH.sub("", message)


def _translate(action: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except (DynamicApiError, ApiException) as error:
        status = getattr(error, "status", None) or 0
        raw = getattr(error, "body", None) or ""
        text = f"{action}: {_message(error)}"
        # Server-side apply answers 500, not 422, when a manifest has a field the schema lacks.
        if status == 500 and "failed to create typed patch object" in str(raw):
            raise ApiError(text) from None
        if status == 429 or status >= 500 or status == 0:
            raise TransientError(text) from None
        if status == 403:
            raise ForbiddenError(text) from None
        if status == 404:
            raise NotFound(text) from None
        raise ApiError(text) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise TransientError(f"{action}: Kubernetes API unreachable: {error}") from None


def describe(obj: KubeObject) -> str:
    kind, namespace, name = key_of(obj)
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _short(obj: KubeObject) -> str:
    return f"{obj['kind']} {obj['metadata']['name']}"


class Kube:
    def __init__(self, api: client.ApiClient, namespaces: frozenset[str] | None = None,
                 cluster_kinds: frozenset[str] = frozenset(), state_namespace: str = "default"):
        self.api = api
        self.namespaces = namespaces  # None: every namespace is allowed
        self.cluster_kinds = cluster_kinds
        self.state_namespace = state_namespace
        self._dynamic: DynamicClient | None = None

    @property
    def dynamic(self) -> DynamicClient:
        if self._dynamic is None:
            self._dynamic = _translate("API discovery", lambda: DynamicClient(self.api))
        return self._dynamic

    def resource(self, api_version: str, kind: str) -> Resource:
        try:
            found: Resource = _translate(f"discovering {kind}", lambda: self.dynamic.resources.get(
                api_version=api_version, kind=kind))
            return found
        except ResourceNotFoundError:
            raise ApiError(f"the cluster has no kind {kind} in {api_version}") from None

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
        return _translate(
            _short(obj),
            lambda: self.dynamic.server_side_apply(
                res, body=obj, namespace=obj["metadata"].get("namespace"),
                field_manager=FIELD_MANAGER, force_conflicts=True,
                dry_run="All" if dry_run else None, query_params=params))

    def apply(self, objects: Sequence[KubeObject]) -> None:
        """Apply all or nothing: a dry run of every object first, then the real writes."""
        objects = self.admit(objects)
        for obj in objects:
            self._apply_one(obj, dry_run=True)
        for obj in objects:
            self._apply_one(obj, dry_run=False)
            log.info("applied %s", describe(obj))

    def claim(self, objects: Sequence[KubeObject], owned: set[Key], adopt_own: bool,
              app: str) -> None:
        """Refuse to take over an object the app did not create: one that exists and is not in
        the app's inventory (`owned`) belongs to another app, another tool or a person. With
        `adopt_own` (a record from before inventories), what the controller's own field
        manager applied and no other app's label claims is adopted."""
        for obj in objects:
            if key_of(obj) in owned:
                continue
            live = self.get(key_of(obj), obj["apiVersion"])
            if live is None:
                continue
            meta = live.get("metadata") or {}
            managers = sorted({m.get("manager", "?") for m in meta.get("managedFields") or []})
            if adopt_own and FIELD_MANAGER in managers and \
                    (meta.get("labels") or {}).get(LABEL_APP) in (None, app):
                continue
            owner = (meta.get("labels") or {}).get(LABEL_APP)
            by = f"app {owner}" if owner else ", ".join(managers) or "someone else"
            raise ForbiddenError(f"{obj['kind']} {key_of(obj)[2]} exists and is not app "
                                 f"{app}'s (managed by {by}): never taken over")

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
            live = self.get(key, api_version)
            if live is None:
                return False
            owner = ((live.get("metadata") or {}).get("labels") or {}).get(LABEL_APP)
            if owner not in (None, app):
                log.error("not deleting %s %s/%s: it is labelled for app %s, not %s", kind,
                          namespace, name, owner, app)
                return False
        try:
            _translate(f"deleting {kind} {namespace}/{name}", lambda: self.dynamic.delete(
                res, name=name, namespace=namespace or None,
                body={"propagationPolicy": "Background"}))
        except NotFound:
            return False
        log.info("deleted %s %s/%s", kind, namespace, name)
        return True

    # --- reads ------------------------------------------------------------------------------

    def get(self, key: Key, api_version: str | None = None) -> KubeObject | None:
        kind, namespace, name = key
        res = self.resource(api_version or API_VERSIONS.get(kind, "v1"), kind)
        try:
            found = _translate(f"reading {kind} {namespace}/{name}", lambda: self.dynamic.get(
                res, name=name, namespace=namespace or None))
        except NotFound:
            return None
        obj: KubeObject = found.to_dict()
        return obj

    def variants(self, namespace: str, app: str) -> list[KubeObject]:
        """Variants found by label, for records from before inventories (Secrets are not
        listed: the controller may read only the Secrets it names)."""
        selector = f"{LABEL_APP}={app},{LABEL_VERSION}"
        found: list[KubeObject] = []
        for kind in VARIANT_KINDS:
            res = self.resource(API_VERSIONS[kind], kind)
            listed = _translate(f"listing {kind} variants of {app}", lambda res=res: (  # type: ignore[misc]
                self.dynamic.get(res, namespace=namespace, label_selector=selector)))
            for item in listed.to_dict().get("items") or []:
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", API_VERSIONS[kind])
                found.append(item)
        return found

    # --- the per-app records ----------------------------------------------------------------

    def records(self) -> dict[AppName, Record]:
        """Every app record in the state namespace, in one list call."""
        res = self.resource("v1", "ConfigMap")
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        listed = _translate("reading app records", lambda: self.dynamic.get(
            res, namespace=self.state_namespace, label_selector=selector)).to_dict()
        records = {}
        for cm in listed.get("items") or []:
            data, name = cm.get("data") or {}, str(cm["metadata"]["name"])
            if not name.startswith(RECORD_PREFIX) or "record" not in data:
                continue
            # A record belongs to the app its ConfigMap is named for, whatever it says inside.
            app = AppName(name[len(RECORD_PREFIX):])
            try:
                records[app] = dataclasses.replace(record_from_json(data["record"]), app=app)
            except (ValueError, KeyError, TypeError) as error:
                log.error("record %s/%s does not parse (%s): ignored", self.state_namespace,
                          name, error)
        return records

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
    """An API client from a kubeconfig file, $KUBECONFIG, or the in-cluster service account."""
    try:
        if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            api: client.ApiClient = config.new_client_from_config(config_file=kubeconfig)
            return api
        config.load_incluster_config()
        return client.ApiClient()
    except (config.ConfigException, OSError) as error:
        raise ApiError(f"cannot load Kubernetes credentials: {error}") from None
