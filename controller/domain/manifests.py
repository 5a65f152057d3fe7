"""An app folder's manifests, parsed: every YAML document an object, each with where it came from.

Errors name the file and the document, so "sampleapp/deployment.yml: document 2: metadata.name:
is required" reaches the commit status instead of a stack trace. The fields the controller reads
to render variants are type-checked here, before rendering, so a `replicas: "3"` is an error
status for its app rather than a TypeError in the middle of a reconcile.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.domain.limits import Budget, load_yaml
from controller.domain.policy import POLICY_FILE, Policy, _kind
from controller.domain.types import CONTROLLER_PREFIX, WORKLOAD_KINDS, KubeObject, Variant
from controller.errors import InputError

# Kinds that live outside namespaces; the Kubernetes edge checks the rest with discovery.
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass", "CSIDriver",
    "APIService", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
})


@dataclass(frozen=True)
class Manifest:
    source: str  # "app/deployment.yml#2": file and 1-based document number
    obj: KubeObject

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, str(self.obj["metadata"].get("namespace", "")), self.name)


def _glob_match(name: str, pattern: str) -> bool:
    """Shell-style match where `*` stays inside one folder level, as in a shell."""
    parts, wanted = name.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


def select_files(names: Iterable[str], policy: Policy) -> list[str]:
    """The manifest files of an app: names (relative to the folder) matching its globs."""
    return sorted(
        name for name in names
        if name != POLICY_FILE and any(_glob_match(name, p) for p in policy.manifests)
    )


def parse_manifests(files: Mapping[str, str], policy: Policy) -> list[Manifest]:
    """Parse {path: text}; default the namespace of namespaced objects to the app's.
    The files are one app's: the limits of `limits.Budget` hold for all of them together."""
    manifests: list[Manifest] = []
    seen: dict[tuple[str, str, str], str] = {}
    budget = Budget()
    for path, text in sorted(files.items()):
        for number, doc in enumerate(load_yaml(text, path, budget), start=1):
            if doc is None:
                continue
            for obj in _objects(path, number, doc):
                budget.spend_object(path, f"document {number}")
                if obj["kind"] not in CLUSTER_SCOPED:
                    obj["metadata"].setdefault("namespace", policy.namespace)
                manifest = Manifest(f"{path}#{number}", obj)
                if manifest.key in seen:
                    raise InputError(path, f"document {number}",
                                     f"{manifest.kind} {manifest.name} is also defined in "
                                     f"{seen[manifest.key]}")
                seen[manifest.key] = manifest.source
                manifests.append(manifest)
    return manifests


def _objects(path: str, number: int, doc: object) -> list[KubeObject]:
    where = f"document {number}"
    if not isinstance(doc, dict):
        raise InputError(path, where, "must be a Kubernetes object (a mapping)")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise InputError(path, f"{where}: {key}", "is required")
    if doc["kind"] == "List" or (doc["kind"].endswith("List") and "items" in doc):
        # kubectl reads any *List (ConfigMapList, RoleBindingList, ...) as its items.
        items = doc.get("items")
        if not isinstance(items, list):
            raise InputError(path, f"{where}: items", f"a {doc['kind']} needs a list of items")
        return [obj for item in items for obj in _objects(path, number, item)]
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise InputError(path, f"{where}: metadata", "is required (a mapping)")
    if not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise InputError(path, f"{where}: metadata.name", "is required")
    _check_controller_fields(path, where, doc)
    _check_read_fields(_Shape(path, where), doc)
    return [doc]


# Where a manifest could carry labels or annotations that the controller reads or writes.
_KEYED_MAPS = (("metadata", "labels"), ("metadata", "annotations"),
               ("spec", "selector", "matchLabels"), ("spec", "template", "metadata", "labels"),
               ("spec", "template", "metadata", "annotations"))
VARIANT_KINDS = WORKLOAD_KINDS | {"ConfigMap", "Secret"}


def _check_controller_fields(path: str, where: str, doc: KubeObject) -> None:
    """Git may not write what the controller writes: its own labels and annotations (the
    fingerprints that decide a rollback, the variant labels that decide what it deletes), nor
    the names of its variants."""
    for fields in _KEYED_MAPS:
        holder: object = doc
        for field in fields:
            holder = holder.get(field) if isinstance(holder, dict) else None
        dotted = ".".join(fields)
        if holder is None:
            continue
        if not isinstance(holder, dict):
            raise InputError(path, f"{where}: {dotted}", "must be a mapping of strings")
        for key, value in holder.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InputError(path, f"{where}: {dotted}",
                                 f"must be a mapping of strings; {key!r} is not")
            if key.startswith(CONTROLLER_PREFIX):
                # Short: the field path is long, and the status has 140 characters.
                raise InputError(path, f"{where}: {dotted}.{key}", "the controller's own key")
    name = doc["metadata"]["name"]
    if doc["kind"] in VARIANT_KINDS and name.endswith(tuple(f"-{v}" for v in Variant)):
        raise InputError(path, f"{where}: metadata.name",
                         f"{name} is reserved for the controller's variants")


class _Shape:
    """Type checks for one document, each error naming its dotted field ("spec.replicas")."""

    def __init__(self, path: str, where: str) -> None:
        self.path, self.where = path, where

    def fail(self, at: str, problem: str) -> InputError:
        return InputError(self.path, f"{self.where}: {at}", problem)

    def mapping(self, holder: Mapping[str, Any], key: str, at: str,
                required: bool = False) -> dict[str, Any]:
        """The mapping at holder[key]: {} when absent (or null, unless it is required)."""
        value = holder.get(key)
        if value is None and not (required and key in holder):
            return {}
        if not isinstance(value, dict):
            raise self.fail(_join(at, key), f"must be a mapping, got {_kind(value)}")
        return value

    def mappings(self, holder: Mapping[str, Any], key: str, at: str) -> list[dict[str, Any]]:
        """The list of mappings at holder[key]: [] when absent."""
        value = holder.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(_join(at, key), f"must be a list of mappings, got {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.fail(f"{_join(at, key)}[{i}]", f"must be a mapping, got {_kind(item)}")
        return value

    def strings(self, holder: Mapping[str, Any], key: str, at: str) -> None:
        for name, value in self.mapping(holder, key, at).items():
            if not isinstance(value, str):
                raise self.fail(f"{_join(at, key)}.{name}", f"must be a string, got "
                                                            f"{_kind(value)}")

    def reference(self, holder: Mapping[str, Any], key: str, at: str, name: str) -> None:
        """A ConfigMap or Secret reference: a canary may rename what it names."""
        found = self.mapping(holder, key, at)
        if found.get(name) is not None and not isinstance(found[name], str):
            raise self.fail(f"{_join(at, key)}.{name}", f"must be a string, got "
                                                        f"{_kind(found[name])}")


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


def _check_read_fields(shape: _Shape, doc: KubeObject) -> None:
    """Everything rendering reads (render.py: pod_spec, _config_refs, _config_content,
    _label_variant, fingerprint) has the type it is read as."""
    namespace = doc["metadata"].get("namespace", "")
    if not isinstance(namespace, str):
        raise shape.fail("metadata.namespace", f"must be a string, got {_kind(namespace)}")
    if doc["kind"] in WORKLOAD_KINDS:
        _check_workload(shape, doc)
    elif doc["kind"] in ("ConfigMap", "Secret"):
        for key in ("data", "binaryData", "stringData"):
            shape.strings(doc, key, "")


def _check_workload(shape: _Shape, doc: KubeObject) -> None:
    spec = shape.mapping(doc, "spec", "", required=True)
    if doc["kind"] == "Pod":
        _check_pod_spec(shape, spec, "spec")
        return
    replicas = spec.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int)):
        got = repr(replicas) if isinstance(replicas, float) else _kind(replicas)
        raise shape.fail("spec.replicas", f"must be a whole number, got {got}")
    if replicas is not None and replicas < 0:
        raise shape.fail("spec.replicas", f"must not be negative, got {replicas}")
    shape.mapping(spec, "selector", "spec")
    template = shape.mapping(spec, "template", "spec", required=True)
    shape.mapping(template, "metadata", "spec.template")
    _check_pod_spec(shape, shape.mapping(template, "spec", "spec.template", required=True),
                    "spec.template.spec")


def _check_pod_spec(shape: _Shape, pod: Mapping[str, Any], at: str) -> None:
    for i, volume in enumerate(shape.mappings(pod, "volumes", at)):
        where = f"{at}.volumes[{i}]"
        shape.reference(volume, "configMap", where, "name")
        shape.reference(volume, "secret", where, "secretName")
        projected = shape.mapping(volume, "projected", where)
        for j, source in enumerate(shape.mappings(projected, "sources", f"{where}.projected")):
            shape.reference(source, "configMap", f"{where}.projected.sources[{j}]", "name")
            shape.reference(source, "secret", f"{where}.projected.sources[{j}]", "name")
    for key in ("initContainers", "containers"):
        for i, container in enumerate(shape.mappings(pod, key, at)):
            where = f"{at}.{key}[{i}]"
            for j, env_from in enumerate(shape.mappings(container, "envFrom", where)):
                shape.reference(env_from, "configMapRef", f"{where}.envFrom[{j}]", "name")
                shape.reference(env_from, "secretRef", f"{where}.envFrom[{j}]", "name")
            for j, env in enumerate(shape.mappings(container, "env", where)):
                source = shape.mapping(env, "valueFrom", f"{where}.env[{j}]")
                shape.reference(source, "configMapKeyRef", f"{where}.env[{j}].valueFrom", "name")
                shape.reference(source, "secretKeyRef", f"{where}.env[{j}].valueFrom", "name")
