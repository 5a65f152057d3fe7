"""The cluster converges to git between commits: an unchanged app is compared with the cluster
every resync, stable drift of each kind is corrected (or only reported, `drift: report`), a
deleted variant is recreated, and the baseline is git's stable spec, never a drifted live
object. Real commits, real cluster, changes made as `kubectl` makes them."""

from __future__ import annotations

import random
from typing import Any

import pytest
from kubernetes import client

from controller.drift import Resync
from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster

CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
          "data": {"GREETING": "hello"}}


def app(harness: Harness, rate: str = "10", **policy: Any) -> str:
    harness.repo.write("apps/web/canary.yaml", {"namespace": harness.namespace,
                                                "bootstrap": "direct", **policy})
    harness.repo.write("apps/web/manifests.yml",
                       [deployment("web", rate, config="web-config"), service("web"), CONFIG])
    return harness.repo.commit(f"web {rate}")


def stable(harness: Harness) -> None:
    harness.settle(lambda: (d := harness.deployments()) and set(d) == {"web"}
                   and ready(d["web"], 4), "stable web")


def every_reconcile(harness: Harness) -> None:
    harness.reconciler.resync = Resync(0.0)


def apps(harness: Harness) -> client.AppsV1Api:
    return client.AppsV1Api(harness.api)


def core(harness: Harness) -> client.CoreV1Api:
    return client.CoreV1Api(harness.api)


def hand_edit(harness: Harness, name: str = "web", replicas: int | None = 1,
              image: str | None = "sampleapp:hacked") -> None:
    """What `kubectl scale` and `kubectl set image` do: another field manager's update."""
    spec: dict[str, Any] = {}
    if replicas is not None:
        spec["replicas"] = replicas
    if image is not None:
        spec["template"] = {"spec": {"containers": [{"name": "app", "image": image}]}}
    apps(harness).patch_namespaced_deployment(name, harness.namespace, {"spec": spec},
                                              field_manager="kubectl")


def image(d: client.V1Deployment) -> str:
    return str(d.spec.template.spec.containers[0].image)


def drift_events(harness: Harness, reason: str) -> list[str]:
    events = core(harness).list_namespaced_event(harness.namespace).items
    return [f"{e.involved_object.kind} {e.involved_object.name}: {e.message}"
            for e in events if e.reason == reason]


def test_stable_drift_of_each_kind_is_corrected_within_one_resync(harness: Harness) -> None:
    sha = app(harness)
    stable(harness)
    every_reconcile(harness)
    harness.reconcile()  # in sync: nothing to say
    hand_edit(harness)
    core(harness).delete_namespaced_service("web", harness.namespace)
    core(harness).patch_namespaced_config_map("web-config", harness.namespace,
                                              {"data": {"GREETING": "hacked"}})

    result = harness.reconcile()  # one resync

    web = harness.deployments()["web"]
    assert (web.spec.replicas, image(web)) == (4, "sampleapp:v1")
    assert core(harness).read_namespaced_service("web", harness.namespace).spec.selector == \
        {"app": "web"}
    assert core(harness).read_namespaced_config_map("web-config", harness.namespace).data == \
        {"GREETING": "hello"}
    (outcome,) = result.outcomes
    assert outcome.drift_corrected
    assert sorted(str(d) for d in outcome.drift) == [
        "ConfigMap web-config data.GREETING changed",
        "Deployment web spec.replicas 1 → 4, spec.template.spec.containers[0].image "
        "sampleapp:hacked → sampleapp:v1",
        "Service web deleted"]
    note = harness.repo.note(sha)
    assert f"gitops-canary/web: success: drift corrected to {sha[:7]}: " in note
    assert "Deployment web spec.replicas 1 → 4" in note
    assert "Deployment web: corrected to git: spec.replicas 1 → 4, spec.template.spec." \
           "containers[0].image sampleapp:hacked → sampleapp:v1" in \
           drift_events(harness, "DriftCorrected")

    calm = harness.reconcile()  # the next resync: in sync, nothing said
    assert calm.outcomes[0].drift == ()
    assert harness.repo.note(sha) == note


def test_drift_report_only_says_it_once_and_when_it_is_gone(harness: Harness) -> None:
    sha = app(harness, drift="report")
    stable(harness)
    every_reconcile(harness)
    hand_edit(harness, image=None)

    first, second = harness.reconcile(), harness.reconcile()

    assert harness.deployments()["web"].spec.replicas == 1  # not corrected
    assert [str(d) for d in first.outcomes[0].drift] == ["Deployment web spec.replicas 1 → 4"]
    assert not first.outcomes[0].drift_corrected
    assert second.outcomes[0].drift == ()  # said once, not on every resync
    assert "gitops-canary/web: error: drift (drift: report, not corrected): Deployment web " \
           "spec.replicas 1 → 4" in harness.repo.note(sha)
    assert len(drift_events(harness, "DriftDetected")) == 1

    hand_edit(harness, replicas=4, image=None)  # a person puts it back
    harness.reconcile()
    assert f"gitops-canary/web: success: in sync: stable runs {sha[:7]} as git says again" in \
        harness.repo.note(sha)


def test_an_unchanged_app_is_not_read_until_its_resync_is_due(harness: Harness) -> None:
    app(harness)
    stable(harness)
    now = [0.0]
    harness.reconciler.resync = Resync(60.0, clock=lambda: now[0], rng=random.Random(7))  # noqa: S311
    harness.reconcile()  # schedules the app's first comparison within one interval
    hand_edit(harness, image=None)

    assert harness.reconcile().outcomes[0].skipped
    assert harness.deployments()["web"].spec.replicas == 1
    now[0] = 60.0  # one interval later: due whatever the jitter drew
    assert not harness.reconcile().outcomes[0].skipped
    assert harness.deployments()["web"].spec.replicas == 4


def test_replicas_an_hpa_drives_are_not_drift(harness: Harness) -> None:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "web"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "web"},
                    "minReplicas": 2, "maxReplicas": 10,
                    "metrics": [{"type": "Resource", "resource": {
                        "name": "cpu", "target": {"type": "Utilization",
                                                  "averageUtilization": 80}}}]}}
    harness.repo.write("apps/web/canary.yaml", {"namespace": harness.namespace,
                                                "bootstrap": "direct"})
    harness.repo.write("apps/web/manifests.yml", [deployment("web", "10"), hpa])
    harness.repo.commit("web with an HPA")
    stable(harness)
    every_reconcile(harness)
    hand_edit(harness, replicas=6, image=None)  # as the HPA scales: within its bounds

    result = harness.reconcile()

    assert result.outcomes[0].drift == ()
    assert harness.deployments()["web"].spec.replicas == 6


def test_a_deleted_variant_is_recreated_and_the_canary_goes_on(harness: Harness) -> None:
    app(harness)
    stable(harness)
    sha = app(harness, rate="20")
    harness.settle(lambda: (d := harness.deployments()) and {"web-baseline", "web-canary"} <=
                   set(d) and harness.record("web").phase.value == "AwaitingPromotion",
                   "baseline and canary ready, awaiting a person")
    said = harness.repo.note(sha)
    apps(harness).delete_namespaced_deployment("web-baseline", harness.namespace)

    result = harness.reconcile()

    assert "web-baseline" in harness.deployments()
    assert [str(d) for d in result.outcomes[0].drift] == ["Deployment web-baseline deleted"]
    assert harness.record("web").phase.value == "AwaitingPromotion"  # the verdict stands
    assert harness.repo.note(sha) == said  # and is not overwritten by housekeeping
    assert any(e.startswith("Deployment web-baseline: corrected to git")
               for e in drift_events(harness, "DriftCorrected"))


def test_the_baseline_is_gits_stable_spec_not_a_drifted_live_object(harness: Harness) -> None:
    app(harness, drift="report")
    stable(harness)
    hand_edit(harness, replicas=None)  # stable now runs an image git never had
    app(harness, rate="20", drift="report")

    found = harness.settle(lambda: (d := harness.deployments()) and
                           {"web-baseline", "web-canary"} <= set(d) and d, "the variants")

    assert image(found["web"]) == "sampleapp:hacked"  # reported, left as it is
    assert image(found["web-baseline"]) == "sampleapp:v1"
    assert image(found["web-canary"]) == "sampleapp:v1"
