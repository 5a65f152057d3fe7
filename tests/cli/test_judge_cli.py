"""`gitops-canary judge --input FILE`: anyone can reproduce a verdict from saved data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from controller.cli import main

SEED = {
    "metrics": [{"name": "success-rate", "kind": "ratio", "direction": "higher",
                 "baseline": {"good": 102, "total": 1000},
                 "canary": {"good": 201, "total": 1000}, "critical": True}],
    "thresholds": {"pass": 95, "marginal": 75},
}


def test_judge_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(SEED))
    assert main(["judge", "--input", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "pass"
    assert out["score"] == 100
    (metric,) = out["metrics"]
    assert metric["result"] == "High"
    assert metric["p_value"] < 0.001
    assert set(metric) >= {"name", "result", "baseline", "canary", "p_value", "effect"}


def test_judge_stdin_and_a_failing_verdict_still_exits_zero(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    reversed_ = json.loads(json.dumps(SEED))
    metric = reversed_["metrics"][0]
    metric["baseline"], metric["canary"] = metric["canary"], metric["baseline"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(reversed_)))
    assert main(["judge", "--input", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "fail"


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "stdin"),
    ('{"metrics": [{"name": "x", "kind": "ratio", "direction": "higher", '
     '"baseline": {"good": 5, "total": 3}, "canary": {"good": 1, "total": 3}}]}',
     "metrics[0].baseline"),
    ('{"metrics": [], "colour": 1}', "colour"),
])
def test_invalid_input_exits_2_naming_the_problem(
        text: str, message: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["judge", "--input", "-"]) == 2
    assert message in capsys.readouterr().err
