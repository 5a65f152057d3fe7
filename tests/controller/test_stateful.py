"""Stateful workloads: a variant that would share stable's disk or join its cluster is refused
unless canary.yaml opts in; a StatefulSet's variants take their claims with them, so a later
canary never starts on a stale disk. Real commits, the real StatefulSet controller and garbage
collector of the local cluster."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import Harness, deployment

pytestmark = pytest.mark.cluster


def database(rate: str) -> list[dict[str, Any]]:
    sts = deployment("db", rate, replicas=2)
    sts["kind"] = "StatefulSet"
    sts["spec"]["serviceName"] = "db"
    sts["spec"]["volumeClaimTemplates"] = [{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "resources": {"requests": {"storage": "1Gi"}}}}]
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
                "spec": {"clusterIP": "None", "selector": {"app": "db"},
                         "ports": [{"port": 5432}]}}
    return [sts, headless]


@pytest.fixture
def volumes(harness: Harness) -> Iterator[None]:
    """Volumes for the claims to bind (the local cluster has no provisioner): without them
    the pods wait for storage and nothing becomes ready."""
    core = client.CoreV1Api(harness.api)
    names = [f"pv{i}-{harness.namespace[-6:]}" for i in range(6)]
    for name in names:
        core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                     "hostPath": {"path": f"/var/lib/{name}"}}})  # kwok runs nothing there
    try:
        yield
    finally:
        for name in names:
            core.delete_persistent_volume(name)


def claims(harness: Harness) -> set[str]:
    found = client.CoreV1Api(harness.api).list_namespaced_persistent_volume_claim(
        harness.namespace).items
    return {str(c.metadata.name) for c in found if c.metadata.deletion_timestamp is None}


def statefulsets(harness: Harness) -> set[str]:
    found = client.AppsV1Api(harness.api).list_namespaced_stateful_set(harness.namespace).items
    return {str(s.metadata.name) for s in found}


def policy(harness: Harness, **fields: Any) -> dict[str, Any]:
    return {"namespace": harness.namespace, "bootstrap": "direct", **fields}


def test_a_headless_statefulset_is_refused_variants_unless_opted_in(harness: Harness) -> None:
    harness.repo.write("apps/db/canary.yaml", policy(harness))
    harness.repo.write("apps/db/db.yml", database("10"))
    harness.repo.commit("db")
    harness.settle(lambda: "db" in statefulsets(harness), "stable db")
    harness.repo.write("apps/db/db.yml", database("20"))
    sha = harness.repo.commit("db: rate 20")
    line = harness.settle(lambda: next((line for line in harness.repo.note(sha).splitlines()
                                        if "gitops-canary/db: error:" in line), None),
                          "the refusal")
    assert "StatefulSet db belongs to the headless Service db" in line
    assert statefulsets(harness) == {"db"}


@pytest.mark.usefixtures("volumes")
def test_a_promoted_statefulset_canary_leaves_no_claims_behind(harness: Harness) -> None:
    opted = policy(harness, workloads={"db": {"stateful": True}})
    harness.repo.write("apps/db/canary.yaml", opted)
    harness.repo.write("apps/db/db.yml", database("10"))
    harness.repo.commit("db")
    harness.settle(lambda: {"data-db-0", "data-db-1"} <= claims(harness), "stable's claims")
    harness.repo.write("apps/db/db.yml", database("20"))
    sha = harness.repo.commit("db: rate 20")
    harness.settle(lambda: {"data-db-canary-0", "data-db-baseline-0"} <= claims(harness),
                   "the variants' own claims")
    harness.repo.write("apps/db/canary.yaml", {**opted, "promote": sha})
    harness.repo.commit("promote db")
    harness.settle(lambda: statefulsets(harness) == {"db"}, "variants deleted", timeout=120)
    harness.settle(lambda: claims(harness) == {"data-db-0", "data-db-1"},
                   "the variants' claims deleted with them", timeout=120)
