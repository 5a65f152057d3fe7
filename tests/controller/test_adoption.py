"""Workloads already running, applied by kubectl (or Flux, or Argo CD): with `adopt: true` the
controller takes them over — equal to git, they become stable as they are (nothing rolls out);
different, they are the baseline of a canary. Without it, they are never taken over. Real
commits, real cluster; the "kubectl" objects are created by the API client with another field
manager, as kubectl's server-side apply does."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client, dynamic

from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster


def kubectl_apply(harness: Harness, obj: dict[str, Any]) -> None:
    api = dynamic.DynamicClient(harness.api)
    res = api.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": harness.namespace}}
    api.server_side_apply(res, body=obj, namespace=harness.namespace, field_manager="kubectl")


def running(harness: Harness, rate: str = "10") -> client.V1Deployment:
    kubectl_apply(harness, deployment("web", rate))
    kubectl_apply(harness, service("web"))
    found: client.V1Deployment = harness.settle(
        lambda: (d := harness.deployments().get("web")) and ready(d, 4) and d,
        "web running, applied by kubectl")
    return found


def app(harness: Harness, rate: str, **policy: Any) -> str:
    harness.repo.write("apps/web/canary.yaml", {"namespace": harness.namespace, **policy})
    harness.repo.write("apps/web/deployment.yml", deployment("web", rate))
    harness.repo.write("apps/web/service.yml", service("web"))
    return harness.repo.commit("web, now from git")


def test_a_workload_equal_to_git_is_adopted_as_stable_without_a_canary(
        harness: Harness) -> None:
    before = running(harness)
    sha = app(harness, "10", adopt=True)
    note = harness.settle(lambda: "adopted" in harness.repo.note(sha)
                          and harness.repo.note(sha), "the adopted status")
    assert "success: adopted: stable runs" in note
    after = harness.deployments()
    assert set(after) == {"web"}
    assert after["web"].metadata.uid == before.metadata.uid
    revision = "deployment.kubernetes.io/revision"
    assert after["web"].metadata.annotations[revision] == \
        before.metadata.annotations[revision]  # nothing rolled out
    assert harness.record("web").phase == "Stable"


def test_a_workload_that_differs_is_the_baseline_of_a_canary(harness: Harness) -> None:
    running(harness, rate="10")
    sha = app(harness, "20", adopt=True)
    found = harness.settle(lambda: (d := harness.deployments()) and
                           {"web-baseline", "web-canary"} <= set(d) and d, "the variants")
    assert found["web-baseline"].spec.template.spec.containers[0].env[0].value == "10"
    assert found["web-canary"].spec.template.spec.containers[0].env[0].value == "20"
    assert found["web"].spec.template.spec.containers[0].env[0].value == "10"
    assert harness.record("web").canary_revision == sha


def test_without_adopt_a_running_workload_is_never_taken_over(harness: Harness) -> None:
    running(harness)
    sha = app(harness, "10")
    line = harness.settle(lambda: next((line for line in harness.repo.note(sha).splitlines()
                                        if line.startswith("gitops-canary/web:")), None),
                          "the refusal")
    assert ": error: " in line
    assert "Deployment web exists and is not app web's (managed by " in line
    assert "kubectl" in line
    assert "adopt: true takes it over" in line
    assert set(harness.deployments()) == {"web"}  # no variants next to it either
