"""Kustomize and Helm folders, rendered by the pinned tools (hack/render-tools/build.sh) from
real commits, applied to the real cluster: the shapes real repositories have — a base and an
overlay with a generator and a name prefix, a chart with values — and their failures, quoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import ready

pytestmark = pytest.mark.cluster


def base(harness: Harness, rate: str = "10") -> None:
    """apps/shop-base: a Deployment reading a generated ConfigMap, and its Service."""
    web = deployment("web", rate, config="web-config")
    harness.repo.write("apps/shop-base/deployment.yml", web)
    harness.repo.write("apps/shop-base/service.yml", service("web"))
    harness.repo.write("apps/shop-base/kustomization.yaml", {
        "resources": ["deployment.yml", "service.yml"],
        "configMapGenerator": [{"name": "web-config", "literals": ["MODE=plain"]}]})


def overlay(harness: Harness, tag: str = "v1", **policy: Any) -> None:
    """apps/shop: the app, an overlay of the base (outside its folder) with a prefix."""
    harness.repo.write("apps/shop/canary.yaml", {"namespace": harness.namespace, **policy})
    harness.repo.write("apps/shop/kustomization.yaml", {
        "resources": ["../shop-base"], "namePrefix": "prod-",
        "images": [{"name": "sampleapp", "newTag": tag}]})


def image(d: Any) -> str:
    return str(d.spec.template.spec.containers[0].image)


def test_a_kustomize_overlay_deploys_and_a_change_in_its_base_starts_a_canary(
        harness: Harness) -> None:
    base(harness)
    overlay(harness, bootstrap="direct")
    harness.repo.commit("shop: a kustomize overlay")
    found = harness.settle(lambda: (d := harness.deployments()).get("prod-web")
                           and ready(d["prod-web"], 4) and d, "prod-web deployed")
    assert image(found["prod-web"]) == "sampleapp:v1"
    assert set(found) == {"prod-web"}
    from kubernetes import client
    core = client.CoreV1Api(harness.api)
    configs = [c.metadata.name for c in core.list_namespaced_config_map(harness.namespace).items
               if c.metadata.name.startswith("prod-web-config-")]
    assert len(configs) == 1  # the generator's hashed name, prefixed
    assert core.read_namespaced_service("prod-web", harness.namespace).spec.selector == {
        "app": "web"}

    # A change in the overlay: the image tag.
    overlay(harness, tag="v2", bootstrap="direct")
    sha = harness.repo.commit("shop: v2")
    found = harness.settle(lambda: {"prod-web-baseline", "prod-web-canary"} <=
                           set(d := harness.deployments()) and d, "variants of prod-web")
    assert image(found["prod-web-canary"]) == "sampleapp:v2"
    assert image(found["prod-web-baseline"]) == "sampleapp:v1"
    assert image(found["prod-web"]) == "sampleapp:v1"  # stable untouched
    assert harness.record("shop").canary_revision == sha

    # A change only in the base, outside the app's folder, is the app's change too.
    base(harness, rate="30")
    changed = harness.repo.commit("shop-base: rate 30")
    harness.settle(lambda: harness.record("shop").canary_revision == changed,
                   "the base's commit is the new canary revision")
    canary = harness.settle(lambda: (d := harness.deployments().get("prod-web-canary"))
                            and d.spec.template.spec.containers[0].env[0].value == "30" and d,
                            "the canary runs the base's change")
    assert image(canary) == "sampleapp:v2"


def chart(folder: Path, harness: Harness) -> None:
    harness.repo.write("apps/chart/Chart.yaml", {"apiVersion": "v2", "name": "web",
                                                 "version": "0.1.0"})
    harness.repo.write("apps/chart/values.yaml", {"image": {"tag": "v1"}, "rate": "10"})
    template = deployment("web", "10")
    template["metadata"]["name"] = "{{ .Release.Name }}"
    container = template["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "sampleapp:{{ .Values.image.tag }}"
    container["env"][0]["value"] = "{{ .Values.rate }}"  # quoted by the YAML dump
    harness.repo.write("apps/chart/templates/deployment.yaml", template)


def test_a_helm_chart_renders_with_canary_yaml_values(harness: Harness, tmp_path: Path) -> None:
    chart(tmp_path, harness)
    harness.repo.write("apps/chart/canary.yaml", {
        "app": "shop", "namespace": harness.namespace, "bootstrap": "direct",
        "helm": {"releaseName": "shop-web", "values": {"rate": "20"}}})
    harness.repo.commit("shop: a helm chart")
    found = harness.settle(lambda: (d := harness.deployments()).get("shop-web")
                           and ready(d["shop-web"], 4) and d, "shop-web deployed")
    container = found["shop-web"].spec.template.spec.containers[0]
    assert container.image == "sampleapp:v1"
    assert container.env[0].value == "20"  # canary.yaml's values over the chart's

    harness.repo.write("apps/chart/values.yaml", {"image": {"tag": "v2"}, "rate": "10"})
    harness.repo.commit("shop: chart values v2")
    found = harness.settle(lambda: {"shop-web-canary", "shop-web-baseline"} <=
                           set(d := harness.deployments()) and d, "the chart's variants")
    assert image(found["shop-web-canary"]) == "sampleapp:v2"
    assert image(found["shop-web"]) == "sampleapp:v1"


@pytest.mark.parametrize(("files", "words"), [
    ({"apps/shop/kustomization.yaml": {"resources": ["missing.yml"]}},
     "apps/shop/kustomization.yaml: kustomize build: "),
    # No network: a remote base is refused, whatever it names.
    ({"apps/shop/kustomization.yaml": {
        "resources": ["https://github.com/kubernetes-sigs/kustomize//examples/helloWorld"]}},
     "apps/shop/kustomization.yaml: kustomize build: "),
    ({"apps/shop/Chart.yaml": {"apiVersion": "v2", "name": "x", "version": "0.1.0"},
      "apps/shop/templates/bad.yaml": "{{ .Values.nothing.here }}\n"},
     "apps/shop/Chart.yaml: helm template: "),
])
def test_a_render_failure_is_an_error_status_quoting_the_tool(
        harness: Harness, files: dict[str, Any], words: str) -> None:
    harness.repo.write("apps/shop/canary.yaml", {"namespace": harness.namespace})
    for path, content in files.items():
        harness.repo.write(path, content)
    sha = harness.repo.commit("shop: broken")
    line = harness.settle(lambda: next((line for line in harness.repo.note(sha).splitlines()
                                        if line.startswith("gitops-canary/shop:")), None),
                          "the error status")
    assert ": error: " in line, line
    assert words in line, line
    assert "gitops-canary-export-" not in line, line  # without our temporary folders
    assert harness.deployments() == {}
