"""A canary that can never become ready ends at `readyTimeout` with the scheduler's reason,
instead of waiting at "canary deployed" until a person reverts. Real commits, the real
scheduler on the local cluster's nodes: a DaemonSet with a hostPort cannot run a second copy
beside stable on any node."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import Harness

pytestmark = pytest.mark.cluster


def daemonset(rate: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "labels": {"app": "agent"}},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                     "containers": [{"name": "agent", "image": "agent:v1",
                                     "env": [{"name": "RATE", "value": rate}],
                                     "ports": [{"containerPort": 9100, "hostPort": 9100}]}]}}},
    }


def ready(harness: Harness) -> bool:
    found = client.AppsV1Api(harness.api).list_namespaced_daemon_set(harness.namespace).items
    return any(d.metadata.name == "agent" and d.status.desired_number_scheduled
               and d.status.number_ready == d.status.desired_number_scheduled for d in found)


def test_a_daemonset_canary_with_a_host_port_fails_with_the_schedulers_reason(
        harness: Harness) -> None:
    harness.repo.write("apps/agent/canary.yaml", {"namespace": harness.namespace,
                                                  "bootstrap": "direct", "readyTimeout": "5s"})
    harness.repo.write("apps/agent/daemonset.yml", daemonset("1"))
    harness.repo.commit("agent on every node")
    harness.settle(lambda: ready(harness), "the stable DaemonSet on every node")

    harness.repo.write("apps/agent/daemonset.yml", daemonset("2"))
    sha = harness.repo.commit("agent: rate 2")
    note = harness.settle(lambda: "not ready after" in harness.repo.note(sha)
                          and harness.repo.note(sha), "the failure at the ready timeout",
                          timeout=90)
    line = next(line for line in note.splitlines() if line.startswith("gitops-canary/agent:"))
    assert ": failure: baseline and canary not ready after 5s: " in line, line
    assert "free ports" in line, line  # the scheduler's own words
    assert harness.record("agent").phase == "Failed"
