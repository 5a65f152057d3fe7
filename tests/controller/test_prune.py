"""The cluster converges to git by deletion too: what an app applied and git no longer has is
deleted (a Service with the commit that removed it, a workload once its removal is promoted),
an app folder removed from git takes its objects and record along, and nothing outside an
app's inventory is ever deleted. Real commits, real cluster."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster


def services(harness: Harness) -> set[str]:
    return {str(s.metadata.name) for s in
            client.CoreV1Api(harness.api).list_namespaced_service(harness.namespace).items}


def app(harness: Harness, objects: list[dict[str, Any]], **policy: Any) -> str:
    harness.repo.write("apps/web/canary.yaml", {"namespace": harness.namespace,
                                                "bootstrap": "direct", **policy})
    harness.repo.write("apps/web/manifests.yml", objects)
    return harness.repo.commit("web")


def stable(harness: Harness, *names: str) -> None:
    harness.settle(lambda: (d := harness.deployments()) and set(d) == set(names)
                   and all(ready(d[n], 4) for n in names), f"stable {names}")


def unmanaged(harness: Harness) -> None:
    """A Service someone applied by hand: no app's, so never deleted."""
    client.CoreV1Api(harness.api).create_namespaced_service(harness.namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "by-hand"},
        "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}})


def test_a_service_removed_from_git_is_deleted_and_nothing_else(harness: Harness) -> None:
    unmanaged(harness)
    app(harness, [deployment("web", "10"), service("web"), service("web-admin")])
    stable(harness, "web")
    harness.settle(lambda: {"web", "web-admin"} <= services(harness), "both services")
    app(harness, [deployment("web", "10"), service("web")])
    harness.settle(lambda: "web-admin" not in services(harness), "web-admin pruned")
    assert services(harness) == {"web", "by-hand"}
    assert set(harness.deployments()) == {"web"}


def test_a_workload_removed_goes_once_its_removal_is_promoted(harness: Harness) -> None:
    app(harness, [deployment("web", "10"), deployment("worker", "10")])
    stable(harness, "web", "worker")
    sha = app(harness, [deployment("web", "10")])
    harness.settle(lambda: "web-canary" in harness.deployments(), "the removal's canary")
    assert "worker" in harness.deployments()  # not before the promotion
    app(harness, [deployment("web", "10")], promote=sha)
    harness.settle(lambda: set(harness.deployments()) == {"web"}, "worker pruned on promote")


def test_prune_false_keeps_what_left_git(harness: Harness) -> None:
    app(harness, [deployment("web", "10"), service("web"), service("web-admin")], prune=False)
    stable(harness, "web")
    app(harness, [deployment("web", "10"), service("web")], prune=False)
    for _ in range(5):
        harness.reconcile()
    assert "web-admin" in services(harness)


def test_an_app_folder_removed_from_git_takes_its_objects_and_record(harness: Harness) -> None:
    unmanaged(harness)
    app(harness, [deployment("web", "10"), service("web")])
    harness.repo.write("apps/shop/canary.yaml", {"namespace": harness.namespace,
                                                 "bootstrap": "direct"})
    harness.repo.write("apps/shop/manifests.yml", [deployment("shop", "10"), service("shop")])
    harness.repo.commit("shop")
    stable(harness, "web", "shop")
    harness.repo.remove("apps/shop")
    sha = harness.repo.commit("shop: retired")
    harness.settle(lambda: set(harness.deployments()) == {"web"}, "shop's objects deleted")
    assert services(harness) == {"web", "by-hand"}
    assert "shop" not in harness.reconciler.kube.records()
    assert "gitops-canary/shop: success: pruned: apps/shop/ left git; 2 object(s) deleted" \
        in harness.repo.note(sha)


def test_a_moved_app_folder_is_not_pruned(harness: Harness) -> None:
    app(harness, [deployment("web", "10"), service("web")])
    stable(harness, "web")
    before = harness.deployments()["web"].metadata.uid
    harness.repo.write("apps/frontend/web/canary.yaml", {"namespace": harness.namespace,
                                                         "bootstrap": "direct", "app": "web"})
    harness.repo.write("apps/frontend/web/manifests.yml", [deployment("web", "10"),
                                                           service("web")])
    harness.repo.remove("apps/web")
    harness.repo.commit("web: moved")
    for _ in range(5):
        harness.reconcile()
    assert harness.deployments()["web"].metadata.uid == before
    assert harness.record("web").path == "apps/frontend/web"
