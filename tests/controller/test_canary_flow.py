"""The canary workflow from real commits in a real bare repository, against the real cluster."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from kubernetes import client

from controller.cli import main
from controller.domain.types import LABEL_VERSION
from tests.controller.conftest import Harness, deployment, git, new_reconciler, service
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

APP = "apps/sampleapp"


def policy(harness: Harness, **fields: Any) -> dict[str, Any]:
    return {"namespace": harness.namespace, "percentage": 25, **fields}


def rate(d: client.V1Deployment) -> str:
    return str(d.spec.template.spec.containers[0].env[0].value)


def ready(d: client.V1Deployment | None, replicas: int) -> bool:
    return d is not None and d.status.ready_replicas == replicas


def only(harness: Harness, *names: str) -> dict[str, client.V1Deployment] | None:
    found = harness.deployments()
    return found if sorted(found) == sorted(names) else None


def start_stable(harness: Harness, rate_: str = "10") -> str:
    """Deploy a first version straight to stable (bootstrap: direct) and wait for it."""
    repo = harness.repo
    repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct"))
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", rate_))
    repo.write(f"{APP}/service.yml", service("sampleapp"))
    sha = repo.commit("sampleapp: first version")
    harness.settle(lambda: (d := only(harness, "sampleapp")) and ready(d["sampleapp"], 4)
                   and "success: deployed to stable" in repo.note(sha),
                   "stable sampleapp with 4 ready replicas, and its status")
    return sha


def change_rate(harness: Harness, rate_: str, message: str) -> str:
    harness.repo.write(f"{APP}/deployment.yml", deployment("sampleapp", rate_))
    return harness.repo.commit(message)


def variants_ready(harness: Harness) -> dict[str, client.V1Deployment] | None:
    found = only(harness, "sampleapp", "sampleapp-baseline", "sampleapp-canary")
    if found and ready(found["sampleapp-baseline"], 1) and ready(found["sampleapp-canary"], 1):
        return found
    return None


def test_first_deployment_is_canary_only_and_a_promote_commit_makes_it_stable(
        harness: Harness) -> None:
    repo = harness.repo
    repo.write(f"{APP}/canary.yaml", policy(harness))
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10"))
    repo.write(f"{APP}/service.yml", service("sampleapp"))
    first = repo.commit("sampleapp: first version")

    found = harness.settle(lambda: (d := only(harness, "sampleapp-canary"))
                           and ready(d["sampleapp-canary"], 1) and d, "canary only")
    assert found["sampleapp-canary"].spec.replicas == 1
    note = harness.settle(lambda: "awaiting promotion" in repo.note(first) and repo.note(first),
                          "the awaiting-promotion status")
    assert "gitops-canary/sampleapp: success: awaiting promotion: first deployment" in note

    repo.write(f"{APP}/canary.yaml", policy(harness, promote=first))
    approval = repo.commit("promote sampleapp")
    found = harness.settle(lambda: (d := only(harness, "sampleapp")) and ready(d["sampleapp"], 4)
                           and d, "stable only, 4 ready")
    assert rate(found["sampleapp"]) == "10"
    assert "success: promoted: stable runs" in harness.settle(
        lambda: "promoted" in repo.note(first) and repo.note(first), "the promoted status")
    assert repo.note(approval) == ""  # statuses belong to the canary's commit
    assert harness.record("sampleapp").stable_revision == first


def test_new_version_gets_baseline_and_canary_and_the_service_selects_all(
        harness: Harness) -> None:
    start_stable(harness, "10")
    stable_uid = harness.deployments()["sampleapp"].metadata.uid
    change = change_rate(harness, "20", "sampleapp: success rate 20")

    found = harness.settle(lambda: variants_ready(harness), "baseline and canary ready")
    base, can, stable = (found["sampleapp-baseline"], found["sampleapp-canary"],
                         found["sampleapp"])
    assert (rate(base), rate(can), rate(stable)) == ("10", "20", "10")
    assert (base.spec.replicas, can.spec.replicas, stable.spec.replicas) == (1, 1, 4)
    assert stable.metadata.uid == stable_uid
    for d, version in ((base, "baseline"), (can, "canary")):
        assert d.metadata.labels[LABEL_VERSION] == version
        assert d.spec.selector.match_labels == {"app": "sampleapp", LABEL_VERSION: version}
        assert d.spec.template.metadata.labels[LABEL_VERSION] == version
    assert can.metadata.annotations["gitops-canary/revision"] == change

    # The Service's endpoints cover stable, baseline and canary pods: 4 + 1 + 1.
    discovery = client.DiscoveryV1Api(harness.api)

    def endpoints() -> int:
        slices = discovery.list_namespaced_endpoint_slice(
            harness.namespace, label_selector="kubernetes.io/service-name=sampleapp").items
        return len([e for s in slices for e in s.endpoints or [] if e.conditions.ready])

    harness.settle(lambda: endpoints() == 6, "6 ready endpoints behind the Service")
    note = harness.settle(lambda: "unanalysed" in harness.repo.note(change)
                          and harness.repo.note(change), "baseline and canary ready")
    assert "pending: baseline and canary ready, unanalysed" in note


def test_revert_deletes_the_variants_and_leaves_stable_untouched(harness: Harness) -> None:
    start_stable(harness, "10")
    change = change_rate(harness, "20", "sampleapp: success rate 20")
    harness.settle(lambda: variants_ready(harness), "baseline and canary ready")
    before = harness.deployments()["sampleapp"]

    git(harness.repo.clone, "revert", "--no-edit", "HEAD")
    harness.repo.push()
    after = harness.settle(lambda: only(harness, "sampleapp"), "variants deleted")["sampleapp"]
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.generation == before.metadata.generation
    assert rate(after) == "10"
    assert "failure: rejected" in harness.repo.note(change)
    assert harness.record("sampleapp").phase == "Stable"


def test_an_approval_for_an_older_revision_never_promotes_the_newer_canary(
        harness: Harness) -> None:
    start_stable(harness, "10")
    second = change_rate(harness, "20", "rate 20")
    harness.settle(lambda: variants_ready(harness), "canary of rate 20")
    baseline_uid = harness.deployments()["sampleapp-baseline"].metadata.uid

    third = change_rate(harness, "30", "rate 30 replaces the running canary")
    found = harness.settle(
        lambda: (d := variants_ready(harness)) and rate(d["sampleapp-canary"]) == "30" and d,
        "the canary replaced by rate 30")
    assert found["sampleapp-baseline"].metadata.uid == baseline_uid  # baseline stays
    assert rate(found["sampleapp-baseline"]) == "10"
    assert "error: superseded by" in harness.repo.note(second)

    harness.repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct", promote=second))
    harness.repo.commit("approve the older canary")
    for _ in range(5):
        harness.reconcile()
    found = harness.deployments()
    assert rate(found["sampleapp"]) == "10"
    assert rate(found["sampleapp-canary"]) == "30"
    for sha in (second, third):
        assert "promoted" not in harness.repo.note(sha)
        assert "promoting" not in harness.repo.note(sha)


def test_malformed_yaml_and_a_forbidden_namespace_are_errors_and_apply_nothing(
        harness: Harness) -> None:
    repo = harness.repo
    repo.write("apps/good/canary.yaml", policy(harness, bootstrap="direct"))
    repo.write("apps/good/deployment.yml", deployment("good", "10", replicas=1))
    repo.write("apps/broken/canary.yaml", policy(harness, bootstrap="direct"))
    repo.write("apps/broken/deployment.yml", "kind: Deployment\nmetadata: [unclosed\n")
    repo.write("apps/intruder/canary.yaml", {"namespace": "kube-system", "bootstrap": "direct"})
    repo.write("apps/intruder/deployment.yml", deployment("intruder", "10", replicas=1))
    sha = repo.commit("three apps, two of them bad")

    harness.settle(lambda: (d := only(harness, "good")) and ready(d["good"], 1), "the good app")
    note = harness.settle(lambda: repo.note(sha).count("error") == 2 and repo.note(sha),
                          "two error statuses")
    assert "gitops-canary/broken: error: apps/broken/deployment.yml: invalid YAML" in note
    assert "(line 3, column 1)" in note
    assert ("gitops-canary/intruder: error: Deployment kube-system/intruder: namespace "
            "kube-system is not allowed") in note
    assert "gitops-canary/good: success" in note
    system = client.AppsV1Api(harness.api).list_namespaced_deployment("kube-system").items
    assert [d.metadata.name for d in system if d.metadata.name == "intruder"] == []
    assert str(harness.record("broken").error).startswith("apps/broken/deployment.yml")


def test_an_unknown_field_is_refused_by_the_server_and_nothing_is_half_applied(
        harness: Harness) -> None:
    repo = harness.repo
    bad = deployment("sampleapp", "10")
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct"))
    repo.write(f"{APP}/a-configmap.yml", {"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": {"name": "applied-first"},
                                          "data": {"A": "1"}})
    repo.write(f"{APP}/deployment.yml", bad)
    sha = repo.commit("a typo in a field name")
    note = harness.settle(lambda: "error" in repo.note(sha) and repo.note(sha), "an error")
    assert "imagePullPolicyy" in note
    core = client.CoreV1Api(harness.api)
    names = [c.metadata.name for c in core.list_namespaced_config_map(harness.namespace).items]
    assert "applied-first" not in names  # the dry run stopped everything
    assert harness.deployments() == {}


def test_a_changed_configmap_gets_a_canary_copy_and_stable_keeps_reading_the_old_one(
        harness: Harness) -> None:
    repo = harness.repo
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                "data": {"SUCCESS_RATE": "10"}}
    repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct"))
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "x", config="settings"))
    repo.write(f"{APP}/settings.yml", settings)
    repo.commit("stable with a ConfigMap")
    harness.settle(lambda: (d := only(harness, "sampleapp")) and ready(d["sampleapp"], 4),
                   "stable")
    repo.write(f"{APP}/settings.yml", {**settings, "data": {"SUCCESS_RATE": "20"}})
    repo.commit("only the ConfigMap changes")
    found = harness.settle(lambda: variants_ready(harness), "a canary for the ConfigMap change")
    core = client.CoreV1Api(harness.api)
    assert core.read_namespaced_config_map("settings", harness.namespace).data == {
        "SUCCESS_RATE": "10"}
    assert core.read_namespaced_config_map("settings-canary", harness.namespace).data == {
        "SUCCESS_RATE": "20"}
    can = found["sampleapp-canary"].spec.template.spec.containers[0]
    assert can.env_from[0].config_map_ref.name == "settings-canary"

    git(repo.clone, "revert", "--no-edit", "HEAD")
    repo.push()
    harness.settle(lambda: only(harness, "sampleapp"), "variants deleted")
    names = [c.metadata.name for c in core.list_namespaced_config_map(harness.namespace).items]
    assert "settings-canary" not in names


def test_a_force_push_is_judged_by_trees_not_ancestry(harness: Harness) -> None:
    start_stable(harness, "10")
    change_rate(harness, "20", "rate 20")
    harness.settle(lambda: variants_ready(harness), "canary of rate 20")
    # Rewrite history: the rate-20 commit disappears; the branch equals stable again.
    git(harness.repo.clone, "reset", "--hard", "HEAD~1")
    harness.repo.push(force=True)
    after = harness.settle(lambda: only(harness, "sampleapp"), "variants deleted")
    assert rate(after["sampleapp"]) == "10"


def test_a_restart_mid_promotion_finishes_the_promotion(harness: Harness,
                                                         tmp_path: Any) -> None:
    start_stable(harness, "10")
    change = change_rate(harness, "20", "rate 20")
    harness.settle(lambda: variants_ready(harness), "canary")
    harness.repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct", promote=change))
    harness.repo.commit("promote rate 20")

    # One reconcile applies the new spec to stable; then the controller "dies": a new one
    # starts with an empty memory and a fresh mirror, and only the cluster to go by.
    harness.reconcile()
    assert harness.record("sampleapp").phase == "Promoting"
    assert rate(harness.deployments()["sampleapp"]) == "20"
    assert "sampleapp-canary" in harness.deployments()

    harness.reconciler = new_reconciler(harness.repo.remote, tmp_path / "mirror-after-restart",
                                        harness.api, harness.namespace, harness.state_namespace)
    found = harness.settle(lambda: (d := only(harness, "sampleapp")) and ready(d["sampleapp"], 4)
                           and d, "promotion finished")
    assert rate(found["sampleapp"]) == "20"
    note = harness.repo.note(change)
    assert "success: promoted" in note
    assert "rejected" not in note
    assert harness.record("sampleapp").stable_revision == change


def test_rolling_back_to_the_previous_stable_is_applied_directly(harness: Harness) -> None:
    start_stable(harness, "10")
    change = change_rate(harness, "20", "rate 20")
    harness.settle(lambda: variants_ready(harness), "canary")
    harness.repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct", promote=change))
    harness.repo.commit("promote")
    harness.settle(lambda: (d := only(harness, "sampleapp")) and rate(d["sampleapp"]) == "20",
                   "promoted")
    harness.repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10"))
    back = harness.repo.commit("roll back to rate 10")
    for _ in range(3):
        harness.reconcile()
        assert "sampleapp-canary" not in harness.deployments()
    found = harness.settle(lambda: (d := only(harness, "sampleapp")) and ready(d["sampleapp"], 4)
                           and rate(d["sampleapp"]) == "10" and d, "rolled back")
    assert "success: rolled back" in harness.settle(
        lambda: "rolled back" in harness.repo.note(back) and harness.repo.note(back), "status")
    assert found


def test_the_controller_process_killed_mid_promotion_converges_after_restart(
        harness: Harness, tmp_path: Any, kubeconfig: Any) -> None:
    start_stable(harness, "10")
    change = change_rate(harness, "20", "rate 20")
    harness.settle(lambda: variants_ready(harness), "canary")
    harness.repo.write(f"{APP}/canary.yaml", policy(harness, bootstrap="direct", promote=change))
    harness.repo.commit("promote rate 20")

    command = [sys.executable, "-m", "controller", "--log-level", "debug", "run",
               "--repo", str(harness.repo.remote), "--interval", "1s",
               "--kubeconfig", str(kubeconfig), "--namespaces", harness.namespace,
               "--state-namespace", harness.state_namespace,
               "--workdir", str(tmp_path / "process-mirror")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Kill -9 the moment the new spec reaches stable: the promotion is half done.
        apps = client.AppsV1Api(harness.api)

        def stable_moved() -> bool:
            d = apps.read_namespaced_deployment("sampleapp", harness.namespace)
            return rate(d) == "20"

        eventually(stable_moved, "stable to receive the new spec")
    finally:
        first.kill()
        first.wait(timeout=10)
    second = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: only(harness, "sampleapp") is not None, "variants deleted")
        eventually(lambda: "promoted" in harness.repo.note(change), "promoted status")
    finally:
        second.terminate()
        second.wait(timeout=10)
    assert "rejected" not in harness.repo.note(change)
    assert rate(harness.deployments()["sampleapp"]) == "20"



def test_reject_returns_git_to_stable_across_several_canary_commits(
        harness: Harness, kubeconfig: Any, capsys: pytest.CaptureFixture[str]) -> None:
    start_stable(harness, "10")
    change_rate(harness, "30", "rate 30")
    change_rate(harness, "40", "rate 40 replaces it")
    harness.settle(lambda: (d := variants_ready(harness)) and rate(d["sampleapp-canary"]) == "40",
                   "the rate-40 canary")
    reject = ["reject", "sampleapp", "--repo", str(harness.repo.clone), "--kubeconfig",
              str(kubeconfig), "--state-namespace", harness.state_namespace]
    assert main(reject) == 0
    harness.repo.push()
    after = harness.settle(lambda: only(harness, "sampleapp"), "variants deleted")
    assert rate(after["sampleapp"]) == "10"
    assert "failure: rejected" in harness.repo.note(git(harness.repo.clone, "rev-parse",
                                                        "HEAD~1"))
    capsys.readouterr()
    assert main(reject) == 2
    assert "no canary of sampleapp is running" in capsys.readouterr().err
