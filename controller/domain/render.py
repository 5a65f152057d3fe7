"""The pod-ratio canary rendering rules of SPEC §2, as pure functions.

Given an app's parsed manifests and the live stable objects, decide the objects to apply:
pass-through objects as written, stable workloads (annotated with their fingerprint), and the
`-baseline` / `-canary` variants with the version label and the canary replica count. A
ConfigMap or Secret that a workload reads and that changed gets a `-canary` copy, so a canary
never changes what stable pods read.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from controller.domain.manifests import Manifest
from controller.domain.policy import Policy
from controller.domain.types import (
    ANNOTATION_FINGERPRINT,
    ANNOTATION_PREVIOUS_FINGERPRINT,
    ANNOTATION_PREVIOUS_REVISION,
    ANNOTATION_REVISION,
    ANNOTATION_WORKLOAD_FINGERPRINT,
    LABEL_APP,
    LABEL_VERSION,
    WORKLOAD_KINDS,
    Fingerprint,
    KubeObject,
    Variant,
)

CONFIG_KINDS = frozenset({"ConfigMap", "Secret"})
NO_REPLICAS = frozenset({"DaemonSet", "Pod"})

# Written by the server, or by other tools, never part of what we apply.
SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                   "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences")
SERVER_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",
                      "deployment.kubernetes.io/revision")

Key = tuple[str, str, str]  # kind, namespace, name


def variant_replicas(replicas: int | None, percentage: float) -> int:
    """max(1, floor(R * P / 100 + 0.5)): round half up, never banker's rounding."""
    r = 1 if replicas is None else replicas
    return max(1, math.floor(r * percentage / 100 + 0.5))


def key_of(obj: KubeObject) -> Key:
    meta = obj.get("metadata", {})
    return (str(obj.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", "")))


def pod_spec(obj: KubeObject) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        spec: dict[str, Any] = obj.setdefault("spec", {})
        return spec
    template: dict[str, Any] = obj.setdefault("spec", {}).setdefault("template", {})
    return template.setdefault("spec", {})  # type: ignore[no-any-return]


def _config_refs(spec: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Every place a pod spec names a ConfigMap or Secret: (kind, holder dict, key in holder)."""
    for volume in spec.get("volumes") or []:
        if isinstance(volume.get("configMap"), dict):
            yield "ConfigMap", volume["configMap"], "name"
        if isinstance(volume.get("secret"), dict):
            yield "Secret", volume["secret"], "secretName"
        for source in (volume.get("projected") or {}).get("sources") or []:
            if isinstance(source.get("configMap"), dict):
                yield "ConfigMap", source["configMap"], "name"
            if isinstance(source.get("secret"), dict):
                yield "Secret", source["secret"], "name"
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for env_from in container.get("envFrom") or []:
            if isinstance(env_from.get("configMapRef"), dict):
                yield "ConfigMap", env_from["configMapRef"], "name"
            if isinstance(env_from.get("secretRef"), dict):
                yield "Secret", env_from["secretRef"], "name"
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            if isinstance(source.get("configMapKeyRef"), dict):
                yield "ConfigMap", source["configMapKeyRef"], "name"
            if isinstance(source.get("secretKeyRef"), dict):
                yield "Secret", source["secretKeyRef"], "name"


def _config_content(obj: KubeObject) -> dict[str, Any]:
    """What pods read from a ConfigMap or Secret, with Secret stringData folded into data."""
    data = dict(obj.get("data") or {})
    if obj["kind"] == "Secret":
        for k, v in (obj.get("stringData") or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    return {"data": data, "binaryData": dict(obj.get("binaryData") or {})}


def _template(obj: KubeObject) -> Any:
    return obj.get("spec") if obj["kind"] == "Pod" else (obj.get("spec") or {}).get("template")


def _workload_parts(m: Manifest, objects: Mapping[Key, KubeObject]) -> list[Any]:
    """What a workload's pods run: its pod template and the ConfigMaps/Secrets it reads (when
    the app defines them)."""
    parts: list[Any] = [[m.key, _template(m.obj)]]
    spec = copy.deepcopy(_template(m.obj) or {})
    spec = spec if m.kind == "Pod" else spec.get("spec") or {}
    for kind, holder, field in _config_refs(spec):
        ref = (kind, m.key[1], str(holder.get(field, "")))
        if ref in objects:
            parts.append([ref, _config_content(objects[ref])])
    return parts


def _hash(parts: list[Any]) -> Fingerprint:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return Fingerprint(hashlib.sha256(blob.encode()).hexdigest()[:16])


# Custom resources that run pods through another controller: applied as written, and the
# status says they are not canaried (their pods are that controller's to roll out).
HIDDEN_WORKLOADS = frozenset({
    ("helm.toolkit.fluxcd.io", "HelmRelease"), ("kustomize.toolkit.fluxcd.io", "Kustomization"),
    ("argoproj.io", "Rollout"), ("argoproj.io", "Application"), ("argoproj.io", "ApplicationSet"),
    ("serving.knative.dev", "Service"), ("apps.openshift.io", "DeploymentConfig"),
})


def uncanaried(manifests: list[Manifest]) -> str:
    """The app's objects that hide a workload, named for the status: "HelmRelease podinfo"."""
    found = [f"{m.kind} {m.name}" for m in manifests
             if (str(m.obj.get("apiVersion", "")).split("/")[0], m.kind) in HIDDEN_WORKLOADS]
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def canaried(manifests: list[Manifest], direct: frozenset[str] = frozenset()) -> list[Manifest]:
    """The workloads that get a baseline and a canary when they change: all but those
    canary.yaml applies directly (`workloads: {name: {canary: false}}`)."""
    return [m for m in manifests if m.kind in WORKLOAD_KINDS and m.name not in direct]


def fingerprint(manifests: list[Manifest], governance: tuple[object, ...] = (),
                direct: frozenset[str] = frozenset()) -> Fingerprint:
    """A hash of everything that changes what the app's canaried pods run: their pod
    templates and the content of the ConfigMaps/Secrets they read, plus the policy's
    governance (who may approve), whose change needs approval like a new image."""
    objects = {m.key: m.obj for m in manifests}
    parts: list[Any] = [["governance", list(governance)]] if governance else []
    for m in sorted(canaried(manifests, direct), key=lambda m: m.key):
        parts += _workload_parts(m, objects)
    return _hash(parts)


def workload_fingerprints(manifests: list[Manifest],
                          direct: frozenset[str] = frozenset()) -> dict[Key, Fingerprint]:
    objects = {m.key: m.obj for m in manifests}
    return {m.key: _hash(_workload_parts(m, objects)) for m in canaried(manifests, direct)}


def live_fingerprint(live: Mapping[Key, KubeObject], manifests: list[Manifest],
                     direct: frozenset[str] = frozenset()) -> str | None:
    """The fingerprint stable runs: the one the controller recorded on every stable workload
    it canaries. None when any is missing, unrecorded, or they disagree."""
    found = set()
    for m in canaried(manifests, direct):
        obj = live.get(m.key)
        if obj is None:
            return None
        found.add(((obj.get("metadata") or {}).get("annotations") or {}).get(
            ANNOTATION_FINGERPRINT))
    if len(found) != 1 or None in found:
        return None
    return str(found.pop())


def strip_server_fields(obj: KubeObject) -> KubeObject:
    clean = copy.deepcopy(obj)
    clean.pop("status", None)
    meta = clean.setdefault("metadata", {})
    for field in SERVER_METADATA:
        meta.pop(field, None)
    annotations = meta.get("annotations") or {}
    for name in [*SERVER_ANNOTATIONS, *(a for a in annotations if a.startswith("gitops-canary/"))]:
        annotations.pop(name, None)
    if not annotations:
        meta.pop("annotations", None)
    if clean.get("kind") == "Pod":
        clean.get("spec", {}).pop("nodeName", None)
    return clean


def _label_variant(obj: KubeObject, variant: Variant, app: str, replicas: int | None) -> None:
    """Rename to <name>-<variant> and add the version label to metadata, selector and template."""
    meta = obj.setdefault("metadata", {})
    meta["name"] = f"{meta['name']}-{variant}"
    labels = meta.get("labels") or {}
    meta["labels"] = {**labels, LABEL_VERSION: str(variant), LABEL_APP: app}
    if obj["kind"] == "Pod":
        return
    spec = obj.setdefault("spec", {})
    selector = spec.get("selector") or {}
    spec["selector"] = {**selector, "matchLabels": {**(selector.get("matchLabels") or {}),
                                                    LABEL_VERSION: str(variant)}}
    template = spec.get("template") or {}
    template_meta = template.get("metadata") or {}
    template["metadata"] = {**template_meta, "labels": {**(template_meta.get("labels") or {}),
                                                        LABEL_VERSION: str(variant)}}
    spec["template"] = template
    if obj["kind"] not in NO_REPLICAS and replicas is not None:
        spec["replicas"] = replicas
    if obj["kind"] == "StatefulSet":  # a variant's claims go with it: none is reused later
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete",
                                                        "whenScaled": "Delete"}


def _annotate(obj: KubeObject, values: Mapping[str, str | None]) -> None:
    meta = obj.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    annotations.update({k: v for k, v in values.items() if v})
    meta["annotations"] = annotations


@dataclass(frozen=True)
class Rendered:
    fingerprint: Fingerprint
    moving: tuple[Key, ...]  # the workloads with a baseline and a canary: those that changed
    passthrough: tuple[KubeObject, ...]  # applied as written, when stable changes
    early: tuple[KubeObject, ...]  # new ConfigMaps/Secrets: a canary may create them first
    deferred: tuple[KubeObject, ...]  # changed ConfigMaps/Secrets pods read: at promotion
    stable: tuple[KubeObject, ...]  # the desired workloads, as stable
    baseline: tuple[KubeObject, ...]  # empty on a first deployment
    canary: tuple[KubeObject, ...]  # canary workloads and canary copies of changed configs

    @property
    def variant_keys(self) -> tuple[Key, ...]:
        return tuple(key_of(o) for o in (*self.baseline, *self.canary))


def render(
    policy: Policy,
    manifests: list[Manifest],
    live: Mapping[Key, KubeObject],
    revision: str = "",
    at_stable: list[Manifest] | None = None,
) -> Rendered:
    """Everything the controller may apply for this app, given the live stable objects.
    Only the workloads that changed (their own fingerprint differs from the one their live
    stable records) get a baseline and a canary; when none did (a governance change, or a
    stable from before per-workload fingerprints), all of them do.

    The baseline is git's: the workload at the revision stable runs (`at_stable`), when its
    fingerprint is the one live stable records. Live stable may have drifted (an image set by
    hand); only a stable git cannot explain (no such revision) is copied from the cluster."""
    fp = fingerprint(manifests, policy.governance, policy.direct)
    workloads = canaried(manifests, policy.direct)
    own = workload_fingerprints(manifests, policy.direct)
    by_key = {m.key: m.obj for m in manifests}
    git_stable = {m.key: m.obj for m in at_stable or ()}
    git_own = workload_fingerprints(at_stable, policy.direct) if at_stable else {}

    # ConfigMaps/Secrets that a workload reads, that exist live, and whose content changed.
    changed: set[Key] = set()
    for m in workloads:
        for kind, holder, field in _config_refs(pod_spec(copy.deepcopy(m.obj))):
            ref = (kind, m.key[1], str(holder.get(field, "")))
            if ref in by_key and ref in live and \
                    _config_content(by_key[ref]) != _config_content(live[ref]):
                changed.add(ref)

    passthrough = tuple(_without_variants(_owned(m.obj, policy.app), workloads)
                        for m in manifests
                        if (m.kind not in WORKLOAD_KINDS or m.name in policy.direct)
                        and m.key not in changed)
    deferred = tuple(_owned(by_key[k], policy.app) for k in sorted(changed))
    # A canary may need a ConfigMap or Secret that does not exist yet: nothing stable reads
    # it, so it may go first. Everything else that stable (or its clients) reads waits.
    early = tuple(o for o in passthrough if o["kind"] in CONFIG_KINDS and key_of(o) not in live)

    stable = []
    for m in workloads:
        obj = _owned(m.obj, policy.app)
        current = (live.get(m.key) or {}).get("metadata", {}).get("annotations") or {}
        moving = current.get(ANNOTATION_FINGERPRINT) not in (None, fp)
        _annotate(obj, {
            ANNOTATION_FINGERPRINT: fp,
            ANNOTATION_REVISION: revision or current.get(ANNOTATION_REVISION),
            # What stable ran before this spec: the target of a direct rollback.
            ANNOTATION_PREVIOUS_FINGERPRINT: current.get(ANNOTATION_FINGERPRINT) if moving
            else current.get(ANNOTATION_PREVIOUS_FINGERPRINT),
            ANNOTATION_PREVIOUS_REVISION: current.get(ANNOTATION_REVISION) if moving
            else current.get(ANNOTATION_PREVIOUS_REVISION),
            ANNOTATION_WORKLOAD_FINGERPRINT: own[m.key],
        })
        stable.append(obj)

    def recorded(key: Key) -> str | None:
        annotations = ((live.get(key) or {}).get("metadata") or {}).get("annotations") or {}
        return annotations.get(ANNOTATION_WORKLOAD_FINGERPRINT)

    changing = [m for m in workloads if m.key not in live or recorded(m.key) != own[m.key]]
    baseline, canary = [], []
    scaled = autoscaled(manifests)
    for m in changing or workloads:
        desired = m.obj.get("spec", {}).get("replicas")
        if m.key in scaled and m.key in live:  # an HPA drives stable: its size now counts
            desired = (live[m.key].get("spec") or {}).get("replicas", desired)
        replicas = variant_replicas(desired, policy.percentage)
        if m.key in live:
            spec = git_stable.get(m.key)
            base = _owned(spec, policy.app) if spec is not None and \
                git_own.get(m.key) == recorded(m.key) else strip_server_fields(live[m.key])
            _label_variant(base, Variant.BASELINE, policy.app, replicas)
            baseline.append(base)
        can = copy.deepcopy(m.obj)
        for kind, holder, field in _config_refs(pod_spec(can)):
            if (kind, m.key[1], str(holder.get(field, ""))) in changed:
                holder[field] = f"{holder[field]}-canary"
        _label_variant(can, Variant.CANARY, policy.app, replicas)
        _annotate(can, {ANNOTATION_FINGERPRINT: fp, ANNOTATION_REVISION: revision})
        canary.append(can)
    for ref in sorted(changed):
        config = copy.deepcopy(by_key[ref])
        config["metadata"]["name"] = f"{ref[2]}-canary"
        labels = config["metadata"].get("labels") or {}
        config["metadata"]["labels"] = {**labels, LABEL_VERSION: str(Variant.CANARY),
                                        LABEL_APP: policy.app}
        canary.append(config)

    return Rendered(fp, tuple(m.key for m in changing or workloads), passthrough, early,
                    deferred, tuple(stable), tuple(baseline), tuple(canary))


SHARABLE = frozenset({"ReadWriteMany", "ReadOnlyMany"})


def stateful_refusal(policy: Policy, manifests: list[Manifest],
                     moving: tuple[Key, ...]) -> str | None:
    """Why the changed workloads may not get variants, unless canary.yaml opts in
    (`workloads: {name: {stateful: true}}`): a claim stable mounts that only one node may
    use (ReadWriteOnce, or not in the app: unknown), or a headless Service whose members form
    a cluster (a database ring the variants would join)."""
    modes = {(m.key[1], m.name): list((m.obj.get("spec") or {}).get("accessModes") or [])
             for m in manifests if m.kind == "PersistentVolumeClaim"}
    headless = {(m.key[1], m.name) for m in manifests if m.kind == "Service"
                and (m.obj.get("spec") or {}).get("clusterIP") == "None"}
    for m in manifests:
        if m.key not in moving or m.name in policy.stateful:
            continue
        for volume in pod_spec(copy.deepcopy(m.obj)).get("volumes") or []:
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim is None:
                continue
            found = modes.get((m.key[1], str(claim)))
            if found is None or not SHARABLE & set(found):
                mode = "/".join(found) if found else "mode unknown: not in the app"
                return (f"{m.source}: {m.kind} {m.name} mounts the claim {claim} ({mode}): its "
                        f"variants would share it with stable; workloads: {{{m.name}: "
                        f"{{stateful: true}}}} allows it")
        service = (m.obj.get("spec") or {}).get("serviceName")
        if m.kind == "StatefulSet" and (m.key[1], str(service)) in headless:
            return (f"{m.source}: StatefulSet {m.name} belongs to the headless Service "
                    f"{service}: its variants would join stable's cluster; workloads: "
                    f"{{{m.name}: {{stateful: true}}}} allows it")
    return None


def autoscaled(manifests: list[Manifest]) -> set[Key]:
    """The workloads an HPA of the app scales (scaleTargetRef, in the HPA's namespace)."""
    found = set()
    for m in manifests:
        if m.kind == "HorizontalPodAutoscaler":
            ref = (m.obj.get("spec") or {}).get("scaleTargetRef") or {}
            if isinstance(ref, dict) and ref.get("kind") and ref.get("name"):
                found.add((str(ref["kind"]), m.key[1], str(ref["name"])))
    return found


def _without_variants(obj: KubeObject, workloads: list[Manifest]) -> KubeObject:
    """A PodDisruptionBudget of the app's pods counts stable alone: variant pods carry the
    same labels (the Service must select them), and counted they would let a drain evict
    stable pods the budget protects. It gets `gitops-canary/version DoesNotExist`."""
    if obj.get("kind") != "PodDisruptionBudget":
        return obj
    selector = (obj.get("spec") or {}).get("selector")
    if not isinstance(selector, dict) or not isinstance(selector.get("matchLabels") or {}, dict):
        return obj
    wanted = selector.get("matchLabels") or {}
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    pods = [((m.obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
            for m in workloads if m.key[1] == namespace and m.kind != "Pod"]
    if not wanted or not any(wanted.items() <= (p.get("labels") or {}).items() for p in pods):
        return obj
    expressions = [e for e in selector.get("matchExpressions") or []
                   if not (isinstance(e, dict) and e.get("key") == LABEL_VERSION)]
    obj["spec"]["selector"] = {**selector, "matchExpressions": [
        *expressions, {"key": LABEL_VERSION, "operator": "DoesNotExist"}]}
    return obj


def _owned(obj: KubeObject, app: str) -> KubeObject:
    """A copy labelled with the app that applies it: who owns an object is visible in the
    cluster, and the controller deletes nothing that carries another app's name."""
    clean = copy.deepcopy(obj)
    meta = clean.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), LABEL_APP: app}
    return clean


def forget_previous(stable: tuple[KubeObject, ...]) -> tuple[KubeObject, ...]:
    """Stable objects for a rollback: they record no 'previous' spec, so the release rolled
    back from cannot come back later as a 'rollback' that skips the canary."""
    result = []
    for obj in stable:
        clean = copy.deepcopy(obj)
        annotations = clean["metadata"].get("annotations") or {}
        for name in (ANNOTATION_PREVIOUS_FINGERPRINT, ANNOTATION_PREVIOUS_REVISION):
            annotations.pop(name, None)
        result.append(clean)
    return tuple(result)


def first_deployment(policy: Policy, live: Mapping[Key, KubeObject],
                     manifests: list[Manifest]) -> bool:
    return not any(m.key in live for m in canaried(manifests, policy.direct))


def planned_objects(policy: Policy, manifests: list[Manifest], live: Mapping[Key, KubeObject],
                    revision: str = "") -> list[KubeObject]:
    """What `gitops-canary render` prints: the objects a reconcile would apply right now."""
    rendered = render(policy, manifests, live, revision)
    if first_deployment(policy, live, manifests):
        if policy.bootstrap == "direct":
            return [*rendered.passthrough, *rendered.deferred, *rendered.stable]
        return [*rendered.passthrough, *rendered.canary]
    if live_fingerprint(live, manifests, policy.direct) == rendered.fingerprint:
        return [*rendered.passthrough, *rendered.deferred, *rendered.stable]
    return [*rendered.early, *rendered.baseline, *rendered.canary]
