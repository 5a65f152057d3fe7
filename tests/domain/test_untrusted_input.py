"""What git may not write, and what a decision may touch (issue 9), as tables: pure functions,
no cluster, no mocks."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controller.domain.inventory import EARLY, STABLE, VARIANT, plan
from controller.domain.machine import Action, Owned
from controller.domain.manifests import parse_manifests
from controller.domain.policy import Policy
from controller.domain.render import fingerprint, key_of, render
from controller.domain.types import LABEL_APP
from controller.errors import InputError
from tests.domain.test_render import deployment
from tests.domain.test_render import manifests as parsed

POLICY = Policy(app="web", namespace="demo")
FILE = "apps/web/deployment.yml"


def with_path(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    holder = obj
    for key in path[:-1]:
        holder = holder.setdefault(key, {})
    holder[path[-1]] = value
    return obj


@pytest.mark.parametrize(("path", "value", "field", "problem"), [
    (("metadata", "annotations"), {"gitops-canary/previous-fingerprint": "abc"},
     "metadata.annotations.gitops-canary/previous-fingerprint", "the controller's own"),
    (("metadata", "labels"), {"gitops-canary/app": "shop"},
     "metadata.labels.gitops-canary/app", "the controller's own key"),
    (("spec", "selector", "matchLabels"), {"app": "web", "gitops-canary/version": "canary"},
     "spec.selector.matchLabels.gitops-canary/version", "the controller's own"),
    (("spec", "template", "metadata", "labels"), {"gitops-canary/version": "baseline"},
     "spec.template.metadata.labels.gitops-canary/version", "the controller's own"),
    (("spec", "template", "metadata", "annotations"), {"gitops-canary/fingerprint": "x"},
     "spec.template.metadata.annotations.gitops-canary/fingerprint", "the controller's own"),
    (("metadata", "labels"), "oops", "metadata.labels", "must be a mapping of strings"),
    (("metadata", "annotations"), {"replicas": 3}, "metadata.annotations",
     "must be a mapping of strings"),
    (("metadata", "name"), "web-canary", "metadata.name", "reserved for the controller's"),
    (("metadata", "name"), "web-baseline", "metadata.name", "reserved"),
])
def test_git_may_not_write_what_the_controller_writes(path: tuple[str, ...], value: Any,
                                                      field: str, problem: str) -> None:
    obj = with_path(deployment(name="web"), path, value)
    with pytest.raises(InputError) as refused:
        parse_manifests({FILE: yaml.safe_dump(obj)}, POLICY)
    assert refused.value.file == FILE
    assert refused.value.field == f"document 1: {field}"
    assert problem in refused.value.problem


def test_names_merely_containing_canary_and_other_kinds_are_fine() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-canary"}}
    manifests = parse_manifests({FILE: yaml.safe_dump_all([deployment(name="canary-web"),
                                                          service])}, POLICY)
    assert [m.name for m in manifests] == ["canary-web", "web-canary"]


def test_governance_is_part_of_the_fingerprint_only_when_set() -> None:
    manifests = parsed(deployment(name="web"), policy=POLICY)
    plain = fingerprint(manifests, Policy(app="web").governance)
    assert plain == fingerprint(manifests)
    guarded = fingerprint(manifests, Policy(app="web", approvers=("lead@example.com",))
                          .governance)
    assert guarded != plain
    assert fingerprint(manifests, Policy(app="web", judgment="auto").governance) not in (
        plain, guarded)


def config(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"k": "v"}}


def service() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}


def rendered_with_live(*live_names: str) -> Any:
    manifests = parsed(deployment(name="web", config="web-new"), config("web-new"), service(),
                       policy=POLICY)
    live = {key_of(m.obj): m.obj for m in manifests if m.name in live_names}
    return manifests, render(POLICY, manifests, live, "r2")


def owned(kind: str, name: str, role: str, api_version: str = "v1") -> Owned:
    return Owned(api_version, kind, "demo", name, role)


def names(objects: Any) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]


def test_every_applied_object_carries_its_app_label() -> None:
    _, rendered = rendered_with_live("web")
    for obj in (*rendered.passthrough, *rendered.stable, *rendered.canary):
        assert obj["metadata"]["labels"][LABEL_APP] == "web"


def test_a_canary_applies_only_new_configs_and_its_variants_never_the_service() -> None:
    manifests, rendered = rendered_with_live("web")
    writes = plan([Action.APPLY_VARIANTS], rendered, (), False, {m.key for m in manifests})
    (step,) = writes.steps
    assert names(step.apply) == ["ConfigMap/web-new", "Deployment/web-baseline",
                                 "Deployment/web-canary"]
    assert {(o.name, o.role) for o in writes.intent} == {
        ("web-new", EARLY), ("web-baseline", VARIANT), ("web-canary", VARIANT)}


def test_a_first_deployment_applies_everything_it_needs() -> None:
    manifests, rendered = rendered_with_live()
    writes = plan([Action.APPLY_VARIANTS], rendered, (), True, {m.key for m in manifests})
    assert names(writes.steps[0].apply) == ["ConfigMap/web-new", "Service/web",
                                           "Deployment/web-canary"]
    assert {o.role for o in writes.intent if o.name in ("web-new", "web")} == {STABLE}


def test_a_reject_deletes_the_variants_and_the_early_objects_git_no_longer_has() -> None:
    manifests, rendered = rendered_with_live("web")
    inventory = (owned("Deployment", "web", STABLE, "apps/v1"),
                 owned("Deployment", "web-canary", VARIANT, "apps/v1"),
                 owned("ConfigMap", "web-new", EARLY), owned("ConfigMap", "still-wanted", EARLY))
    desired = {m.key for m in manifests if m.name != "web-new"} | {
        ("ConfigMap", "demo", "still-wanted")}
    writes = plan([Action.DELETE_VARIANTS], rendered, inventory, False, desired)
    assert {o.name for o in writes.steps[0].delete} == {"web-canary", "web-new"}
    assert {o.name for o in writes.after} == {"web", "still-wanted"}


def test_a_promotion_makes_early_objects_stable_and_keeps_them() -> None:
    manifests, rendered = rendered_with_live("web")
    inventory = (owned("Deployment", "web-canary", VARIANT, "apps/v1"),
                 owned("ConfigMap", "web-new", EARLY))
    writes = plan([Action.APPLY_STABLE, Action.DELETE_VARIANTS], rendered, inventory, False,
                  {m.key for m in manifests})
    assert names(writes.steps[0].apply) == ["ConfigMap/web-new", "Service/web",
                                           "Deployment/web"]
    assert {o.name for o in writes.steps[1].delete} == {"web-canary"}
    assert {(o.name, o.role) for o in writes.after} == {
        ("web-new", STABLE), ("web", STABLE)}


def test_a_replaced_canary_deletes_only_the_variants_it_no_longer_renders() -> None:
    manifests, rendered = rendered_with_live("web")
    inventory = (owned("Deployment", "web-canary", VARIANT, "apps/v1"),
                 owned("ConfigMap", "old-canary", VARIANT))
    writes = plan([Action.APPLY_VARIANTS], rendered, inventory, False,
                  {m.key for m in manifests})
    assert {o.name for o in writes.steps[0].delete} == {"old-canary"}
    assert "old-canary" in {o.name for o in writes.intent}
    assert "old-canary" not in {o.name for o in writes.after}
