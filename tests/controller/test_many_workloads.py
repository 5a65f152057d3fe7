"""One file, a dozen services and a datastore, as real release manifests are written: a commit
that changes one service canaries that service alone (its variants behind its own Service,
its pods analysed), promote and revert act on what changed, and the datastore opted out of
canaries is applied as written. Real commits, real cluster."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster

SERVICES = [f"svc{i:02d}" for i in range(1, 12)]  # eleven services, and redis: twelve
APP = "apps/shop"


def release(harness: Harness, rates: dict[str, str], redis_image: str = "redis:7") -> None:
    objects: list[dict[str, Any]] = []
    for name in SERVICES:
        objects += [deployment(name, rates.get(name, "10"), replicas=2), service(name)]
    redis = deployment("redis", "0", replicas=1, image=redis_image)
    objects += [redis, service("redis")]
    harness.repo.write(f"{APP}/release.yaml", objects)


def policy(harness: Harness, **fields: Any) -> dict[str, Any]:
    return {"namespace": harness.namespace, "bootstrap": "direct",
            "workloads": {"redis": {"canary": False}}, **fields}


def endpoints(harness: Harness, name: str) -> int:
    slices = client.DiscoveryV1Api(harness.api).list_namespaced_endpoint_slice(
        harness.namespace, label_selector=f"kubernetes.io/service-name={name}").items
    return len([e for s in slices for e in s.endpoints or [] if e.conditions.ready])


def rollout(d: client.V1Deployment) -> str:
    """The Deployment's ReplicaSet revision: it moves only when the pods are replaced."""
    return str(d.metadata.annotations["deployment.kubernetes.io/revision"])


def rate(d: client.V1Deployment) -> str:
    return str(d.spec.template.spec.containers[0].env[0].value)


def stable(harness: Harness) -> dict[str, client.V1Deployment]:
    harness.repo.write(f"{APP}/canary.yaml", policy(harness))
    release(harness, {})
    harness.repo.commit("shop: twelve services")
    names = [*SERVICES, "redis"]
    found: dict[str, client.V1Deployment] = harness.settle(
        lambda: (d := harness.deployments()) and set(d) == set(names)
        and all(ready(d[n], 1 if n == "redis" else 2) for n in names) and d, "all stable")
    return found


def test_one_changed_service_gets_the_only_variants_and_promote_applies_it(
        harness: Harness) -> None:
    before = stable(harness)
    release(harness, {"svc05": "20"})
    sha = harness.repo.commit("shop: svc05 rate 20")
    found = harness.settle(
        lambda: (d := harness.deployments()) and {"svc05-baseline", "svc05-canary"} <= set(d)
        and ready(d["svc05-canary"], 1) and d, "svc05's variants")
    variants = {n for n in found if n.endswith(("-baseline", "-canary"))}
    assert variants == {"svc05-baseline", "svc05-canary"}  # not 24, and no redis copies
    assert rate(found["svc05-canary"]) == "20"
    assert rate(found["svc05-baseline"]) == rate(found["svc05"]) == "10"
    harness.settle(lambda: endpoints(harness, "svc05") == 4, "svc05: 2 stable + 2 variants")
    assert endpoints(harness, "svc04") == 2
    assert endpoints(harness, "redis") == 1
    record = harness.record("shop")
    assert record.canary_revision == sha
    for name in SERVICES:
        if name != "svc05":  # unchanged and untouched
            assert harness.deployments()[name].metadata.generation == \
                before[name].metadata.generation

    harness.repo.write(f"{APP}/canary.yaml", policy(harness, promote=sha))
    harness.repo.commit("promote svc05")
    found = harness.settle(lambda: (d := harness.deployments()) and "svc05-canary" not in d
                           and rate(d["svc05"]) == "20" and d, "svc05 promoted")
    assert not {n for n in found if n.endswith(("-baseline", "-canary"))}
    for name in SERVICES:
        if name != "svc05":  # their new fingerprint annotations roll nothing out
            assert rollout(found[name]) == rollout(before[name]) == "1"


def test_a_revert_deletes_only_the_changed_services_variants(harness: Harness) -> None:
    stable(harness)
    release(harness, {"svc02": "5", "svc09": "5"})
    harness.repo.commit("shop: svc02 and svc09 rate 5")
    found = harness.settle(
        lambda: (d := harness.deployments()) and {"svc02-canary", "svc09-canary"} <= set(d)
        and d, "both changed services' variants")
    assert {n for n in found if n.endswith("-canary")} == {"svc02-canary", "svc09-canary"}
    release(harness, {})
    harness.repo.commit("revert: back to stable")
    found = harness.settle(lambda: (d := harness.deployments()) and not any(
        n.endswith(("-baseline", "-canary")) for n in d) and d, "variants deleted")
    assert rate(found["svc02"]) == rate(found["svc09"]) == "10"


def test_a_datastore_opted_out_is_applied_as_written_without_variants(
        harness: Harness) -> None:
    stable(harness)
    release(harness, {}, redis_image="redis:7.2")
    harness.repo.commit("shop: redis 7.2")
    found = harness.settle(
        lambda: (d := harness.deployments()) and d["redis"].spec.template.spec.containers[0]
        .image == "redis:7.2" and d, "redis applied directly")
    assert not any(n.endswith(("-baseline", "-canary")) for n in found)
    assert harness.record("shop").canary_revision is None
