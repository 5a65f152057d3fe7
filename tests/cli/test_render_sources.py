"""`gitops-canary render` of Kustomize and Helm folders on disk, with the pinned tools: what a
reconcile would apply, shown before any push (first deployment: the canary; with --live: the
variants of the workloads that changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.domain.types import ANNOTATION_WORKLOAD_FINGERPRINT


def write(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump_all(
        content if isinstance(content, list) else [content], sort_keys=False))


def web(name: str, image: str = "web:v1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": image,
                                                           "envFrom": [{"configMapRef": {
                                                               "name": "settings"}}]}]}}}}


def rendered(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["render", *args, "-o", "json"]) == 0
    found: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return found


def overlay(tmp_path: Path) -> Path:
    write(tmp_path / "base" / "web.yaml", [web("web"), web("worker")])
    write(tmp_path / "base" / "kustomization.yaml", {
        "resources": ["web.yaml"],
        "configMapGenerator": [{"name": "settings", "literals": ["MODE=plain"]}]})
    app = tmp_path / "prod"
    write(app / "kustomization.yaml", {"resources": ["../base"], "namePrefix": "prod-",
                                       "namespace": "shop",
                                       "images": [{"name": "web", "newTag": "v2"}]})
    write(app / "canary.yaml", {"namespace": "default"})
    return app


def test_a_kustomize_overlay_renders_its_base_prefix_and_generator(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    objects = rendered([str(overlay(tmp_path))], capsys)
    names = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects}
    config = next(n for k, _, n in names if k == "ConfigMap")
    assert config.startswith("prod-settings-")  # the generator's hash suffix, prefixed
    # A first deployment: the canaries, in the namespace the overlay sets.
    assert ("Deployment", "shop", "prod-web-canary") in names
    assert ("Deployment", "shop", "prod-worker-canary") in names
    canary = next(o for o in objects if o["metadata"]["name"] == "prod-web-canary")
    container = canary["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "web:v2"
    assert container["envFrom"][0]["configMapRef"]["name"] == config


def test_with_live_stable_only_the_changed_workload_gets_variants(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = overlay(tmp_path)
    first = rendered([str(app)], capsys)
    # Stable as the controller would have applied it: render with the live objects equal to
    # git gives the stable objects (annotated with each workload's own fingerprint).
    live = tmp_path / "live.yaml"
    stable_now = [{**o, "metadata": {**o["metadata"],
                                     "name": o["metadata"]["name"].removesuffix("-canary")}}
                  for o in first if o["kind"] == "Deployment"]
    write(live, stable_now)
    as_stable = rendered([str(app), "--live", str(live)], capsys)
    deployments = [o for o in as_stable if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"prod-web", "prod-worker"}
    write(live, deployments)
    # Now only the worker changes.
    write(tmp_path / "base" / "web.yaml", [web("web"), web("worker", image="worker:v3")])
    changed = rendered([str(app), "--live", str(live)], capsys)
    variants = {o["metadata"]["name"] for o in changed if o["kind"] == "Deployment"}
    assert variants == {"prod-worker-baseline", "prod-worker-canary"}
    assert all(ANNOTATION_WORKLOAD_FINGERPRINT in d["metadata"]["annotations"]
               for d in deployments)


def test_a_helm_chart_renders_with_its_values_and_canary_yaml_values(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "chart"
    write(app / "Chart.yaml", {"apiVersion": "v2", "name": "web", "version": "0.1.0"})
    write(app / "values.yaml", {"image": "web:v1", "replicas": 2})
    write(app / "values-prod.yaml", {"replicas": 6})
    template = web("{{ .Release.Name }}", image="{{ .Values.image }}")
    template["spec"]["replicas"] = "REPLICAS"
    write(app / "templates" / "web.yaml",
          yaml.safe_dump(template).replace("REPLICAS", "{{ .Values.replicas }}"))
    write(app / "canary.yaml", {"namespace": "shop", "helm": {
        "releaseName": "shop-web", "valuesFiles": ["values-prod.yaml"],
        "values": {"image": "web:v9"}}})
    objects = rendered([str(app)], capsys)
    (canary,) = [o for o in objects if o["kind"] == "Deployment"]
    assert canary["metadata"]["name"] == "shop-web-canary"
    assert canary["metadata"]["namespace"] == "shop"
    assert canary["spec"]["template"]["spec"]["containers"][0]["image"] == "web:v9"
    assert canary["spec"]["replicas"] == 2  # 25% of values-prod's 6, rounded half up


def test_a_broken_chart_is_an_error_naming_the_tool(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "chart"
    write(app / "Chart.yaml", {"apiVersion": "v2", "name": "web", "version": "0.1.0"})
    write(app / "templates" / "bad.yaml", "{{ .Values.missing.deeper }}\n")
    write(app / "canary.yaml", {})
    assert main(["render", str(app)]) == 2
    err = capsys.readouterr().err
    assert f"{app}/Chart.yaml: helm template: " in err
    assert "nil pointer" in err or "missing" in err
