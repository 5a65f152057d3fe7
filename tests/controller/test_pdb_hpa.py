"""A PodDisruptionBudget keeps protecting stable while a canary runs, and an autoscaled
workload's variants follow the size the autoscaler gave stable. Real commits, the real
disruption controller of the local cluster."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster

PDB = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"},
       "spec": {"minAvailable": 3, "selector": {"matchLabels": {"app": "web"}}}}


def app(harness: Harness, rate: str, *extra: dict[str, Any], replicas: int | None = 4) -> str:
    web = deployment("web", rate)
    if replicas is None:
        del web["spec"]["replicas"]
    harness.repo.write("apps/web/canary.yaml", {"namespace": harness.namespace,
                                                "bootstrap": "direct"})
    harness.repo.write("apps/web/manifests.yml", [web, service("web"), *extra])
    return harness.repo.commit(f"web: rate {rate}")


def allowed(harness: Harness) -> tuple[int, int] | None:
    """(disruptionsAllowed, expectedPods) once the disruption controller has seen the PDB."""
    pdb = client.PolicyV1Api(harness.api).read_namespaced_pod_disruption_budget(
        "web", harness.namespace)
    status = pdb.status
    if status is None or status.observed_generation != pdb.metadata.generation:
        return None
    return int(status.disruptions_allowed or 0), int(status.expected_pods or 0)


def test_a_pdb_counts_stable_alone_while_a_canary_runs(harness: Harness) -> None:
    app(harness, "10", PDB)
    harness.settle(lambda: (d := harness.deployments().get("web")) and ready(d, 4),
                   "stable web")
    assert harness.settle(lambda: allowed(harness) == (1, 4) and allowed(harness),
                          "4 stable pods, minAvailable 3: 1 disruption allowed")
    app(harness, "20", PDB)
    harness.settle(lambda: (d := harness.deployments()) and ready(d.get("web-canary"), 1)
                   and ready(d.get("web-baseline"), 1), "baseline and canary ready")
    for _ in range(5):  # the disruption controller had every chance to count them
        harness.reconcile()
    assert allowed(harness) == (1, 4)  # not 3 of 6: a drain may still take one stable pod


def test_an_autoscaled_stables_size_sets_the_variants(harness: Harness) -> None:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "web"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "web"}, "minReplicas": 1, "maxReplicas": 20}}
    app(harness, "10", hpa, replicas=None)
    harness.settle(lambda: "web" in harness.deployments(), "stable web")
    # The autoscaler's decision (no metrics server here: set as it would).
    client.AppsV1Api(harness.api).patch_namespaced_deployment_scale(
        "web", harness.namespace, {"spec": {"replicas": 8}})
    harness.settle(lambda: ready(harness.deployments().get("web"), 8), "stable at 8")
    sha = app(harness, "20", hpa, replicas=None)
    found = harness.settle(lambda: (d := harness.deployments()) and "web-canary" in d and d,
                           "the variants")
    assert found["web-canary"].spec.replicas == 2  # 25% of 8, not of git's (absent: 1)
    assert found["web-baseline"].spec.replicas == 2
    note = harness.repo.note(sha)  # posted by the reconcile that deployed them
    assert "baseline and canary 2 replica(s) each next to stable 8" in note, note
