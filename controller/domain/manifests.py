"""An app folder's manifests, parsed: every YAML document an object, each with where it came from.

Errors name the file and the document, so "sampleapp/deployment.yml: document 2: metadata.name:
is required" reaches the commit status instead of a stack trace.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import yaml

from controller.domain.policy import POLICY_FILE, YAML_LOADER, Policy
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
    """Parse {path: text}; default the namespace of namespaced objects to the app's."""
    manifests: list[Manifest] = []
    seen: dict[tuple[str, str, str], str] = {}
    for path, text in sorted(files.items()):
        try:
            documents = list(yaml.load_all(text, Loader=YAML_LOADER))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(error, "problem", None) or str(error)
            raise InputError(path, "", f"invalid YAML: {problem}{where}") from None
        for number, doc in enumerate(documents, start=1):
            if doc is None:
                continue
            for obj in _objects(path, number, doc):
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
    if doc["kind"] == "List":
        items = doc.get("items")
        if not isinstance(items, list):
            raise InputError(path, f"{where}: items", "a List needs a list of items")
        return [obj for item in items for obj in _objects(path, number, item)]
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise InputError(path, f"{where}: metadata", "is required (a mapping)")
    if not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise InputError(path, f"{where}: metadata.name", "is required")
    _check_controller_fields(path, where, doc)
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
