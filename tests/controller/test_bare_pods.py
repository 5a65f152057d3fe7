"""A bare Pod's spec cannot change in place (only its images can): a promoted change of its
environment replaces it — deleted, then created with the new spec — and the status says so.
Real commits, real cluster."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import Harness

pytestmark = pytest.mark.cluster


def pod(rate: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "worker", "labels": {"app": "worker"}},
            "spec": {"containers": [{"name": "w", "image": "worker:v1",
                                     "env": [{"name": "RATE", "value": rate}]}]}}


def live(harness: Harness, name: str) -> client.V1Pod | None:
    try:
        found: client.V1Pod = client.CoreV1Api(harness.api).read_namespaced_pod(
            name, harness.namespace)
    except client.ApiException:
        return None
    return found


def running(p: client.V1Pod | None) -> bool:
    return p is not None and p.metadata.deletion_timestamp is None and any(
        c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])


def test_an_env_change_of_a_bare_pod_is_promoted_by_delete_and_create(
        harness: Harness) -> None:
    harness.repo.write("apps/worker/canary.yaml", {"namespace": harness.namespace,
                                                   "bootstrap": "direct"})
    harness.repo.write("apps/worker/pod.yml", pod("1"))
    harness.repo.commit("worker")
    first = harness.settle(lambda: running(p := live(harness, "worker")) and p, "the pod")

    harness.repo.write("apps/worker/pod.yml", pod("2"))
    sha = harness.repo.commit("worker: rate 2")
    harness.settle(lambda: running(live(harness, "worker-canary"))
                   and running(live(harness, "worker-baseline")), "the variant pods")
    harness.repo.write("apps/worker/canary.yaml", {"namespace": harness.namespace,
                                                   "bootstrap": "direct", "promote": sha})
    harness.repo.commit("promote worker")
    note = harness.settle(lambda: "promoted" in harness.repo.note(sha)
                          and harness.repo.note(sha), "the promoted status", timeout=120)
    assert "its pods replaced (deleted and created)" in note
    after = live(harness, "worker")
    assert after is not None
    assert after.metadata.uid != first.metadata.uid  # a new pod, not an update
    assert after.spec.containers[0].env[0].value == "2"
    assert live(harness, "worker-canary") is None or \
        live(harness, "worker-canary").metadata.deletion_timestamp is not None
