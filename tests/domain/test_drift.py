"""Drift as a table: what a dry run of git's object would change in the live one."""

from __future__ import annotations

import copy
from typing import Any

from controller.domain.drift import Drift, deleted, differences


def live_deployment(replicas: int = 4, image: str = "sampleapp:v1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "demo", "uid": "u1", "resourceVersion": "7",
                     "generation": 2, "managedFields": [{"manager": "gitops-canary"}],
                     "annotations": {"gitops-canary/fingerprint": "f1"}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "app", "image": image, "env": [{"name": "TOKEN", "value": "s3cret"}]}]}}},
        "status": {"readyReplicas": replicas},
    }


def test_the_same_object_is_no_drift_whatever_the_server_wrote() -> None:
    live = live_deployment()
    would = copy.deepcopy(live)
    would["metadata"].update(resourceVersion="8", generation=3, managedFields=[])
    would["status"] = {}
    assert differences(would, live) == ()


def test_replicas_and_images_are_named_with_their_values_live_then_git() -> None:
    assert differences(live_deployment(), live_deployment(1, "sampleapp:hacked")) == (
        "spec.replicas 1 → 4",
        "spec.template.spec.containers[0].image sampleapp:hacked → sampleapp:v1")


def test_other_values_are_never_shown_they_may_be_secret() -> None:
    live, would = live_deployment(), live_deployment()
    live["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "hacked"
    (change,) = differences(would, live)
    assert change == "spec.template.spec.containers[0].env[0].value changed"
    assert "s3cret" not in change
    assert "hacked" not in change


def test_a_secret_shows_no_value_at_all() -> None:
    live = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"port": 5432}}
    would = {**live, "data": {"port": 6543}}
    assert differences(would, live) == ("data.port changed",)


def test_an_annotation_path_is_bracketed_and_a_field_missing_live_is_said() -> None:
    live, would = live_deployment(), live_deployment()
    del live["metadata"]["annotations"]["gitops-canary/fingerprint"]
    assert differences(would, live) == (
        "metadata.annotations[gitops-canary/fingerprint] missing",)


def test_a_revision_the_deployment_controller_writes_meanwhile_is_no_drift() -> None:
    """The live object read, then the dry run: a `kubectl set image` makes the Deployment
    controller bump its revision annotation in between."""
    live, would = live_deployment(), live_deployment()
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "2"
    would["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    assert differences(would, live) == ()
    would["metadata"]["annotations"]["team"] = "payments"
    assert differences(would, live) == ("metadata.annotations.team missing",)


def test_ignored_paths_are_another_controllers() -> None:
    assert differences(live_deployment(4), live_deployment(7), ["spec.replicas"]) == ()


def test_a_drift_names_its_object_and_at_most_two_changes() -> None:
    drift = Drift(("Deployment", "demo", "web"), ("a 1 → 2", "b changed", "c changed"))
    assert str(drift) == "Deployment web a 1 → 2, b changed and 1 more"
    assert str(deleted(("Service", "demo", "web"))) == "Service web deleted"
