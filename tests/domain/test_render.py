"""SPEC §2 rendering rules, as tables. Pure functions: no cluster, no mocks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from controller.domain.manifests import parse_manifests
from controller.domain.policy import Policy
from controller.domain.render import (
    fingerprint,
    key_of,
    live_fingerprint,
    planned_objects,
    render,
    strip_server_fields,
    variant_replicas,
    workload_fingerprints,
)
from controller.domain.types import (
    ANNOTATION_FINGERPRINT,
    ANNOTATION_WORKLOAD_FINGERPRINT,
    LABEL_VERSION,
)

POLICY = Policy(app="sampleapp", namespace="demo", percentage=25)


def deployment(replicas: int | None = 4, rate: str = "10", name: str = "sampleapp",
               config: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "sampleapp:v1",
                                 "env": [{"name": "SUCCESS_RATE", "value": rate}]}
    if config:
        container["envFrom"] = [{"configMapRef": {"name": config}}]
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}}, "spec": spec}


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sampleapp"},
           "spec": {"selector": {"app": "sampleapp"}, "ports": [{"port": 8080}]}}


def manifests(*objects: dict[str, Any], policy: Policy = POLICY) -> Any:

    text = yaml.safe_dump_all([copy.deepcopy(o) for o in objects])
    return parse_manifests({"sampleapp/manifests.yml": text}, policy)


def live_of(*objects: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    live = {}
    for obj in objects:
        obj = copy.deepcopy(obj)
        obj["metadata"].setdefault("namespace", "demo")
        obj["metadata"].update(uid="1234", resourceVersion="99", generation=3,
                               creationTimestamp="2026-11-26T00:00:00Z",
                               managedFields=[{"manager": "gitops-canary"}])
        obj["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = "2"
        obj["status"] = {"readyReplicas": 4}
        live[key_of(obj)] = obj
    return live


@pytest.mark.parametrize(("replicas", "percentage", "expected"), [
    (5, 50, 3),   # 2.5 rounds half up, never to even
    (4, 25, 1),
    (1, 10, 1),   # never below one
    (None, 25, 1),  # missing replicas count as 1
    (10, 25, 3),  # 2.5 -> 3
    (4, 50, 2),
    (3, 50, 2),   # 1.5 -> 2
    (100, 1, 1),
    (8, 100, 8),
    (7, 15, 1),   # 1.05 -> 1
])
def test_variant_replicas_round_half_up(replicas: int | None, percentage: float,
                                        expected: int) -> None:
    assert variant_replicas(replicas, percentage) == expected


@pytest.mark.parametrize(("replicas", "percentage", "expected"), [
    (5, 50, 3), (4, 25, 1), (1, 10, 1), (None, 25, 1)])
def test_rendered_variants_carry_the_canary_replica_count(replicas: int | None,
                                                           percentage: float,
                                                           expected: int) -> None:
    policy = Policy(app="sampleapp", namespace="demo", percentage=percentage)
    old, new = deployment(replicas, "10"), deployment(replicas, "20")
    rendered = render(policy, manifests(new, policy=policy), live_of(old))
    assert [o["spec"]["replicas"] for o in rendered.baseline] == [expected]
    assert [o["spec"]["replicas"] for o in rendered.canary] == [expected]


def test_canary_and_baseline_names_labels_and_specs() -> None:
    rendered = render(POLICY, manifests(deployment(4, "20"), SERVICE),
                      live_of(deployment(4, "10")), revision="abc1234")
    (base,), (can,) = rendered.baseline, rendered.canary
    assert base["metadata"]["name"] == "sampleapp-baseline"
    assert can["metadata"]["name"] == "sampleapp-canary"
    for obj, version in ((base, "baseline"), (can, "canary")):
        assert obj["metadata"]["labels"][LABEL_VERSION] == version
        assert obj["spec"]["selector"]["matchLabels"] == {"app": "sampleapp",
                                                          LABEL_VERSION: version}
        assert obj["spec"]["template"]["metadata"]["labels"] == {"app": "sampleapp",
                                                                 LABEL_VERSION: version}
        assert obj["metadata"]["namespace"] == "demo"
    # Baseline runs the live stable spec; canary the new one.
    rate = lambda o: o["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]  # noqa: E731
    assert (rate(base), rate(can)) == ("10", "20")
    assert can["metadata"]["annotations"]["gitops-canary/revision"] == "abc1234"
    # The Service passes through untouched: it keeps selecting stable, baseline and canary.
    assert rendered.passthrough[0]["spec"]["selector"] == {"app": "sampleapp"}


def test_baseline_is_stripped_of_server_owned_fields() -> None:
    live = live_of(deployment(4, "10"))
    base = render(POLICY, manifests(deployment(4, "20")), live).baseline[0]
    meta = base["metadata"]
    for field in ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields"):
        assert field not in meta
    assert "status" not in base
    assert "deployment.kubernetes.io/revision" not in meta.get("annotations", {})


def test_strip_keeps_user_annotations_and_drops_last_applied() -> None:
    obj = deployment()
    obj["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "payments",
        ANNOTATION_FINGERPRINT: "abc"}
    assert strip_server_fields(obj)["metadata"]["annotations"] == {"team": "payments"}


def test_selector_and_template_labels_are_created_when_missing() -> None:
    bare = deployment(2, "20")
    bare["spec"]["selector"] = {"matchExpressions": [{"key": "app", "operator": "Exists"}]}
    del bare["spec"]["template"]["metadata"]
    can = render(POLICY, manifests(bare), {}).canary[0]
    assert can["spec"]["selector"]["matchLabels"] == {LABEL_VERSION: "canary"}
    assert can["spec"]["selector"]["matchExpressions"] == [{"key": "app", "operator": "Exists"}]
    assert can["spec"]["template"]["metadata"]["labels"] == {LABEL_VERSION: "canary"}


def test_stable_workloads_are_never_relabelled() -> None:
    rendered = render(POLICY, manifests(deployment(4, "20")), live_of(deployment(4, "10")))
    stable = rendered.stable[0]
    assert stable["metadata"]["name"] == "sampleapp"
    assert stable["spec"]["selector"] == {"matchLabels": {"app": "sampleapp"}}
    assert LABEL_VERSION not in stable["spec"]["template"]["metadata"]["labels"]


def test_first_deployment_is_canary_only() -> None:
    objects = planned_objects(POLICY, manifests(deployment(4, "10"), SERVICE), {})
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert names == [("Service", "sampleapp"), ("Deployment", "sampleapp-canary")]


def test_bootstrap_direct_deploys_stable() -> None:
    policy = Policy(app="sampleapp", namespace="demo", bootstrap="direct")
    objects = planned_objects(policy, manifests(deployment(4), SERVICE, policy=policy), {})
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert names == [("Service", "sampleapp"), ("Deployment", "sampleapp")]


def test_unchanged_spec_renders_stable_only() -> None:
    desired = manifests(deployment(4, "10"))
    live_obj = copy.deepcopy(deployment(4, "10"))
    live_obj["metadata"]["annotations"] = {ANNOTATION_FINGERPRINT: fingerprint(desired)}
    objects = planned_objects(POLICY, desired, live_of(live_obj))
    assert [o["metadata"]["name"] for o in objects] == ["sampleapp"]


def test_daemonset_variants_have_no_replicas() -> None:
    ds = deployment(None, "20")
    ds["kind"] = "DaemonSet"
    old = copy.deepcopy(ds)
    old["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "10"
    rendered = render(POLICY, manifests(ds), live_of(old))
    assert [o["metadata"]["name"] for o in rendered.baseline + rendered.canary] == [
        "sampleapp-baseline", "sampleapp-canary"]
    assert all("replicas" not in o["spec"] for o in rendered.baseline + rendered.canary)
    assert rendered.canary[0]["spec"]["selector"]["matchLabels"][LABEL_VERSION] == "canary"


def test_pod_variants_label_metadata_only() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"},
           "spec": {"containers": [{"name": "w", "image": "w:2"}]}}
    old = copy.deepcopy(pod)
    old["spec"]["containers"][0]["image"] = "w:1"
    old["spec"]["nodeName"] = "kwok-node-0"
    rendered = render(POLICY, manifests(pod), live_of(old))
    base, can = rendered.baseline[0], rendered.canary[0]
    assert (base["metadata"]["name"], can["metadata"]["name"]) == ("worker-baseline",
                                                                   "worker-canary")
    assert base["metadata"]["labels"][LABEL_VERSION] == "baseline"
    assert "nodeName" not in base["spec"]
    assert "replicas" not in can["spec"]


def test_changed_configmap_gets_a_canary_copy_and_stable_keeps_the_old_one() -> None:
    old_cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
              "data": {"SUCCESS_RATE": "10"}}
    new_cm = {**old_cm, "data": {"SUCCESS_RATE": "20"}}
    workload = deployment(4, "x", config="settings")
    rendered = render(POLICY, manifests(workload, new_cm),
                      live_of(deployment(4, "x", config="settings"), old_cm))
    # Not applied now: stable pods keep reading the old one until promotion.
    assert rendered.passthrough == ()
    assert [o["metadata"]["name"] for o in rendered.deferred] == ["settings"]
    can, copy_ = rendered.canary
    assert can["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": "settings-canary"}}]
    assert copy_["kind"] == "ConfigMap"
    assert copy_["metadata"]["name"] == "settings-canary"
    assert copy_["data"] == {"SUCCESS_RATE": "20"}
    # Baseline keeps reading the stable ConfigMap.
    assert rendered.baseline[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": "settings"}}]


def test_unchanged_configmap_passes_through_without_copy() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
          "data": {"A": "1"}}
    rendered = render(POLICY, manifests(deployment(4, "20", config="settings"), cm),
                      live_of(deployment(4, "10", config="settings"), cm))
    assert [o["metadata"]["name"] for o in rendered.passthrough] == ["settings"]
    assert [o["metadata"]["name"] for o in rendered.canary] == ["sampleapp-canary"]
    assert rendered.canary[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"][0][
        "configMapRef"]["name"] == "settings"


def test_fingerprint_follows_pod_templates_and_read_configs_only() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
          "data": {"A": "1"}}
    base = fingerprint(manifests(deployment(4, "10", config="settings"), cm, SERVICE))
    assert fingerprint(manifests(deployment(9, "10", config="settings"), cm)) == base
    assert fingerprint(manifests(deployment(4, "20", config="settings"), cm)) != base
    assert fingerprint(manifests(deployment(4, "10", config="settings"),
                                 {**cm, "data": {"A": "2"}})) != base


def test_live_fingerprint_needs_every_workload_to_agree() -> None:
    desired = manifests(deployment(4, name="a"), deployment(4, name="b"))
    a, b = deployment(4, name="a"), deployment(4, name="b")
    a["metadata"]["annotations"] = {ANNOTATION_FINGERPRINT: "f1"}
    b["metadata"]["annotations"] = {ANNOTATION_FINGERPRINT: "f1"}
    assert live_fingerprint(live_of(a, b), desired) == "f1"
    b["metadata"]["annotations"] = {ANNOTATION_FINGERPRINT: "f2"}
    assert live_fingerprint(live_of(a, b), desired) is None
    assert live_fingerprint(live_of(a), desired) is None


def test_stable_records_the_previous_fingerprint_for_rollback() -> None:
    live_obj = deployment(4, "10")
    live_obj["metadata"]["annotations"] = {ANNOTATION_FINGERPRINT: "old",
                                           "gitops-canary/revision": "1111111"}
    stable = render(POLICY, manifests(deployment(4, "20")), live_of(live_obj),
                    revision="2222222").stable[0]
    annotations = stable["metadata"]["annotations"]
    assert annotations["gitops-canary/previous-fingerprint"] == "old"
    assert annotations["gitops-canary/previous-revision"] == "1111111"
    assert annotations["gitops-canary/revision"] == "2222222"


def test_objects_that_hide_a_workload_are_named_for_the_status() -> None:
    from controller.domain.render import uncanaried

    found = manifests(
        {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
         "metadata": {"name": "podinfo"}, "spec": {}},
        {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
         "spec": {}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {}},
        {"apiVersion": "example.com/v1", "kind": "Rollout", "metadata": {"name": "other"}})
    assert uncanaried(found) == "HelmRelease podinfo, Rollout web"
    assert uncanaried(manifests({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "c"}})) == ""


def test_a_pdb_of_the_apps_pods_counts_stable_alone() -> None:
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
           "metadata": {"name": "sampleapp"},
           "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "sampleapp"}}}}
    other = {**copy.deepcopy(pdb), "metadata": {"name": "others"},
             "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "redis"}}}}
    rendered = render(POLICY, manifests(deployment(rate="20"), pdb, other),
                      live_of(deployment()))
    by_name = {o["metadata"]["name"]: o for o in rendered.passthrough}
    assert by_name["sampleapp"]["spec"]["selector"] == {
        "matchLabels": {"app": "sampleapp"},
        "matchExpressions": [{"key": LABEL_VERSION, "operator": "DoesNotExist"}]}
    assert by_name["others"]["spec"]["selector"] == {"matchLabels": {"app": "redis"}}


def test_an_autoscaled_workloads_variants_follow_stables_current_size() -> None:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "sampleapp"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "sampleapp"}, "minReplicas": 2,
                    "maxReplicas": 20}}
    live = live_of(deployment())
    live[("Deployment", "demo", "sampleapp")]["spec"]["replicas"] = 12  # the HPA scaled it
    rendered = render(POLICY, manifests(deployment(rate="20"), hpa), live)
    assert [o["spec"]["replicas"] for o in rendered.canary] == [3]  # 25% of 12, not of 4
    assert [o["spec"]["replicas"] for o in rendered.baseline] == [3]


def statefulset(rate: str = "10", claim: str | None = None) -> dict[str, Any]:
    sts = deployment(rate=rate, name="db")
    sts["kind"] = "StatefulSet"
    sts["spec"]["serviceName"] = "db"
    if claim:
        sts["spec"]["template"]["spec"]["volumes"] = [
            {"name": "data", "persistentVolumeClaim": {"claimName": claim}}]
    return sts


def claim(name: str, *modes: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "1Gi"}}}}


HEADLESS = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}}}


@pytest.mark.parametrize(("objects", "opt_in", "words"), [
    ([statefulset(claim="data"), claim("data", "ReadWriteOnce")], False,
     "StatefulSet db mounts the claim data (ReadWriteOnce): its variants would share it"),
    ([statefulset(claim="data")], False, "mounts the claim data (mode unknown: not in the app)"),
    ([statefulset(claim="data"), claim("data", "ReadWriteMany")], False, None),
    ([statefulset(), HEADLESS], False,
     "StatefulSet db belongs to the headless Service db: its variants would join"),
    ([statefulset(claim="data"), claim("data", "ReadWriteOnce"), HEADLESS], True, None),
    ([statefulset(), SERVICE], False, None),
])
def test_variants_sharing_state_are_refused_unless_opted_in(
        objects: list[dict[str, Any]], opt_in: bool, words: str | None) -> None:
    from controller.domain.render import stateful_refusal

    policy = Policy(app="sampleapp", namespace="demo",
                    stateful=frozenset({"db"}) if opt_in else frozenset())
    found = manifests(*objects, policy=policy)
    moving = render(policy, found, {}).moving
    refusal = stateful_refusal(policy, found, moving)
    if words is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert words in refusal
        assert "workloads: {db: {stateful: true}} allows it" in refusal


def test_statefulset_variants_take_their_claims_with_them() -> None:
    rendered = render(POLICY, manifests(statefulset(rate="20")), live_of(statefulset()))
    for variant in (*rendered.baseline, *rendered.canary):
        assert variant["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Delete", "whenScaled": "Delete"}
    assert "persistentVolumeClaimRetentionPolicy" not in rendered.stable[0]["spec"]


def _stable_at(rate: str, image: str) -> tuple[Any, dict[tuple[str, str, str], Any]]:
    """Git's manifests of the revision stable runs, and a live stable recording that
    revision's workload fingerprint but running `image` (set by hand)."""
    at_stable = manifests(deployment(4, rate))
    live_obj = deployment(4, rate)
    live_obj["spec"]["template"]["spec"]["containers"][0]["image"] = image
    live_obj["metadata"]["annotations"] = {
        ANNOTATION_WORKLOAD_FINGERPRINT: workload_fingerprints(at_stable)[("Deployment", "demo",
                                                                            "sampleapp")]}
    return at_stable, live_of(live_obj)


def test_the_baseline_is_gits_stable_spec_never_a_drifted_live_object() -> None:
    at_stable, live = _stable_at("10", "sampleapp:hacked")
    rendered = render(POLICY, manifests(deployment(4, "20")), live, at_stable=at_stable)
    (base,) = rendered.baseline
    container = base["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["env"][0]["value"]) == ("sampleapp:v1", "10")
    assert base["spec"]["replicas"] == 1
    assert base["metadata"]["name"] == "sampleapp-baseline"
    assert base["metadata"]["labels"]["gitops-canary/app"] == "sampleapp"


def test_a_stable_git_cannot_explain_is_the_baseline_as_it_runs() -> None:
    _at_stable, live = _stable_at("10", "sampleapp:hacked")
    other = manifests(deployment(4, "15"))  # not the spec live stable records
    rendered = render(POLICY, manifests(deployment(4, "20")), live, at_stable=other)
    assert rendered.baseline[0]["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "sampleapp:hacked"
