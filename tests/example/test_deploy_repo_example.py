"""The deploy repository to copy (deploy-repo-example/) renders as its README says.

Pure: the real `gitops-canary render` command runs in-process on the example's files; the live
stable objects come from a file (`--live`), as the CLI offers for offline use. No cluster.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.domain.policy import (
    DEFAULT_GOOD,
    DEFAULT_TOTAL,
    Analysis,
    counted,
    parse_policy,
)
from controller.domain.types import LABEL_VERSION

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy-repo-example" / "sampleapp"
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


def render(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code = main(["render", *args, "--output", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    objects: list[dict[str, Any]] = json.loads(out)
    return objects


def by_name(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def rate(deployment: dict[str, Any]) -> str:
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return str(next(e["value"] for e in env if e["name"] == "SUCCESS_RATE"))


def assert_variant(deployment: dict[str, Any], version: str) -> None:
    meta, spec = deployment["metadata"], deployment["spec"]
    assert meta["name"] == f"sampleapp-{version}"
    assert meta["namespace"] == "demo"
    assert meta["labels"][LABEL_VERSION] == version
    assert spec["selector"]["matchLabels"] == {"app": "sampleapp", LABEL_VERSION: version}
    assert spec["template"]["metadata"]["labels"][LABEL_VERSION] == version
    assert spec["replicas"] == 1  # 25% of 4


def expected_service() -> dict[str, Any]:
    """The example's Service as written, in its namespace, labelled with the app it belongs to
    (the controller's own label: what it applied, and for which app)."""
    service: dict[str, Any] = yaml.safe_load((EXAMPLE / "service.yml").read_text())
    service["metadata"]["namespace"] = "demo"
    service["metadata"]["labels"]["gitops-canary/app"] = "sampleapp"
    return service


def test_first_deployment_renders_the_service_and_only_the_canary(
        capsys: pytest.CaptureFixture[str]) -> None:
    objects = by_name(render(capsys, str(EXAMPLE)))

    assert sorted(objects) == [("Deployment", "sampleapp-canary"), ("Service", "sampleapp")]
    assert objects["Service", "sampleapp"] == expected_service()
    canary = objects["Deployment", "sampleapp-canary"]
    assert_variant(canary, "canary")
    assert rate(canary) == "10"


def test_a_new_version_renders_baseline_from_live_stable_and_canary_from_git(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    app = tmp_path / "sampleapp"
    shutil.copytree(EXAMPLE, app)
    manifest = app / "deployment.yml"
    text = manifest.read_text()
    assert text.count('value: "10"') == 1
    manifest.write_text(text.replace('value: "10"', 'value: "20"'))

    stable: dict[str, Any] = yaml.safe_load((EXAMPLE / "deployment.yml").read_text())
    stable["metadata"].update({
        "namespace": "demo", "uid": "0b6c1f4e-1111-4a2b-9c3d-000000000001",
        "resourceVersion": "4711", "generation": 1,
        "creationTimestamp": "2024-01-01T00:00:00Z",
        "annotations": {"gitops-canary/fingerprint": "old",
                        "deployment.kubernetes.io/revision": "1"}})
    stable["status"] = {"replicas": 4, "readyReplicas": 4, "availableReplicas": 4,
                        "observedGeneration": 1}
    assert stable["spec"]["replicas"] == 4
    assert rate(stable) == "10"
    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump(stable, sort_keys=False))

    objects = by_name(render(capsys, str(app), "--live", str(live)))

    # During a canary nothing stable reads changes: the Service waits for the promotion.
    assert sorted(objects) == [("Deployment", "sampleapp-baseline"),
                               ("Deployment", "sampleapp-canary")]
    baseline, canary = (objects["Deployment", "sampleapp-baseline"],
                        objects["Deployment", "sampleapp-canary"])
    assert_variant(baseline, "baseline")
    assert_variant(canary, "canary")
    assert (rate(baseline), rate(canary)) == ("10", "20")
    assert "status" not in baseline
    for field in SERVER_FIELDS:
        assert field not in baseline["metadata"]
    assert "annotations" not in baseline["metadata"]  # server and controller annotations go


def test_the_example_manifests_are_the_repositorys_sample_app_manifests() -> None:
    for name in ("deployment.yml", "service.yml"):
        assert (EXAMPLE / name).read_bytes() == (REPO / "manifests" / name).read_bytes(), (
            f"deploy-repo-example/sampleapp/{name} differs from manifests/{name}: copy it again")
    assert 'value: "10"' in (EXAMPLE / "deployment.yml").read_text()


SELECTOR = 'namespace="{{ namespace }}", pod=~"{{ pod_regex }}"'
BUCKETS = f"request_duration_seconds_bucket{{{SELECTOR}}}"
# sampleapp/app.py's DURATION_BUCKETS (not imported: importing the app registers its metrics).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LATENCY_QUERY = (f"sum by (le) (clamp_min({BUCKETS} - {BUCKETS} offset {{{{ window }}}}, 0) or "
                 f"({BUCKETS} unless {BUCKETS} offset {{{{ window }}}}))")


def test_the_example_analysis_judges_the_seed_s_success_rate_and_latency() -> None:
    policy = parse_policy((EXAMPLE / "canary.yaml").read_text(), "canary.yaml", "sampleapp")
    assert (policy.namespace, policy.percentage, policy.promote) == ("demo", 25, None)
    analysis, default = policy.analysis, Analysis()
    # The timing shown is the default's.
    assert (analysis.warmup, analysis.interval, analysis.deadline, analysis.pass_score,
            analysis.marginal_score) == (default.warmup, default.interval, default.deadline,
                                         default.pass_score, default.marginal_score)
    assert [m.name for m in analysis.metrics] == ["success-rate", "latency"]
    success, latency = analysis.metrics
    # The success rate is the default metric, its exact-count queries written out.
    assert success == default.metrics[0]
    assert (success.good, success.total) == (DEFAULT_GOOD, DEFAULT_TOTAL)
    assert success.good == counted(f'requests_total{{{SELECTOR}, custom_status="good"}}')
    assert (latency.kind, latency.direction, latency.critical, latency.objective,
            latency.tolerance) == ("histogram", "lower", True, 0.25, None)
    assert latency.query == LATENCY_QUERY
    # The objective is one of the app's bucket bounds: the share within it is read exactly.
    assert latency.objective in DURATION_BUCKETS


def test_a_zero_percentage_is_refused_naming_the_file_and_the_field(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    app = tmp_path / "sampleapp"
    shutil.copytree(EXAMPLE, app)
    (app / "canary.yaml").write_text("namespace: demo\npercentage: 0\n")

    code = main(["render", str(app), "--output", "json"])
    out, err = capsys.readouterr()

    assert code == 2
    assert out == ""
    assert "canary.yaml" in err
    assert "percentage" in err
    assert "must be in (0, 100]" in err
