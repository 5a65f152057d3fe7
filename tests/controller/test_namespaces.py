"""Objects live where their manifests say: rendered Helm and Kustomize output sets namespaces
explicitly, often not canary.yaml's. The variants are found, waited for and deleted in the
namespace of the workload they copy. Real commits, real cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.edges.git import GitSource
from controller.edges.kube import Kube
from controller.edges.statuses import GitNotesSink
from controller.reconcile import Reconciler
from tests.conftest import fresh_namespace
from tests.controller.conftest import DeployRepo, Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster


@pytest.fixture
def elsewhere(api_client: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(api_client, f"t-elsewhere-{uuid.uuid4().hex[:6]}") as name:
        yield name


@pytest.fixture
def two(deploy_repo: DeployRepo, namespace: str, elsewhere: str, state_namespace: str,
        api_client: client.ApiClient, tmp_path: Path) -> Harness:
    source = GitSource(str(deploy_repo.remote), "main", tmp_path / "mirror")
    kube = Kube(api_client, frozenset({namespace, elsewhere}), state_namespace=state_namespace)
    return Harness(deploy_repo, elsewhere, api_client,
                   Reconciler(source, kube, GitNotesSink(source)), state_namespace)


def placed(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    obj["metadata"]["namespace"] = namespace
    return obj


def test_variants_live_and_die_in_the_workloads_own_namespace(
        two: Harness, namespace: str, elsewhere: str) -> None:
    # canary.yaml names one namespace; the manifests set another, explicitly.
    two.repo.write("apps/web/canary.yaml", {"namespace": namespace, "bootstrap": "direct"})
    two.repo.write("apps/web/deployment.yml", placed(deployment("web", "10"), elsewhere))
    two.repo.write("apps/web/service.yml", placed(service("web"), elsewhere))
    two.repo.commit("web, in its own namespace")
    two.settle(lambda: (d := two.deployments().get("web")) and ready(d, 4), "stable web")

    two.repo.write("apps/web/deployment.yml", placed(deployment("web", "20"), elsewhere))
    sha = two.repo.commit("web: rate 20")
    two.settle(lambda: (d := two.deployments()) and ready(d.get("web-canary"), 1)
               and ready(d.get("web-baseline"), 1), "variants ready in the workload's namespace")
    note = two.settle(lambda: "baseline and canary ready" in two.repo.note(sha)
                      and two.repo.note(sha), "the variants seen ready")
    assert "gitops-canary/web: pending: " in note
    apps = client.AppsV1Api(two.api)
    assert not apps.list_namespaced_deployment(namespace).items  # nothing in canary.yaml's

    two.repo.write("apps/web/deployment.yml", placed(deployment("web", "10"), elsewhere))
    two.repo.commit("revert: web back to 10")
    two.settle(lambda: set(two.deployments()) == {"web"}, "variants deleted where they lived")
    assert "rejected" in two.settle(lambda: "rejected" in two.repo.note(sha)
                                    and two.repo.note(sha), "the rejected status")
