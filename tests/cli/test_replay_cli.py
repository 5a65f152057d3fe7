"""`gitops-canary replay`: the controller's own decision over a recorded series, no cluster.

The contract of the README: one analysis object (or an array of them, answered in order),
each `series` element one interval's increments, a look after each; the answer says the
verdict, when it was decided (seconds after the first look's data began), and the evidence.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from controller.cli import main
from controller.domain.replay import Recorded, parse, replay, resume, to_document
from controller.domain.sequential import Counts, Spec, Step
from controller.errors import InputError


def analysis(steps: list[tuple[tuple[int, int], tuple[int, int]]], **extra: Any) -> dict[str, Any]:
    return {"interval": 30, "deadline": 1800, **extra,
            "metrics": [{"name": "success", "kind": "ratio", "direction": "higher",
                         "tolerance": 0.005, "critical": True, "weight": 1,
                         "series": [{"baseline": {"good": b[0], "total": b[1]},
                                     "canary": {"good": c[0], "total": c[1]}}
                                    for b, c in steps]}]}


WORSE = analysis([((59, 60), (55, 60))] * 20)  # 98.3% vs 91.7% good, 60 requests a look
BETTER = analysis([((6, 60), (12, 60))] * 20)  # the seed: 10% -> 20% good
SAME = analysis([((59, 60), (59, 60))] * 5)  # a short series: nothing decided yet


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(WORSE))
    out = run(["replay", "--input", str(path), "-o", "json"], capsys)
    assert out["verdict"] == "fail"
    assert out["decided_at"] == 30 * out["looks"]
    assert 1 < out["looks"] < 20
    (metric,) = out["metrics"]
    assert metric["result"] == "Low"
    assert metric["e_value"] >= metric["threshold"] == 100
    assert metric["requests"] == [60 * out["looks"]] * 2
    assert metric["upper"] < 0  # the whole confidence sequence says worse
    # one look earlier the evidence was not enough: the decision is the first one possible
    earlier = json.loads(json.dumps(WORSE))
    earlier["metrics"][0]["series"] = earlier["metrics"][0]["series"][:out["looks"] - 1]
    path.write_text(json.dumps(earlier))
    before = run(["replay", "--input", str(path), "-o", "json"], capsys)
    assert (before["verdict"], before["decided_at"]) == ("inconclusive", None)


def test_an_array_on_stdin_is_answered_in_order(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps([BETTER, SAME, WORSE])))
    out = run(["replay", "--input", "-", "-o", "json"], capsys)
    assert [o["verdict"] for o in out] == ["pass", "inconclusive", "fail"]
    assert out[0]["metrics"][0]["lower"] > -0.005
    assert out[1]["decided_at"] is None
    assert out[1]["looks"] == 5


def test_the_deadline_ends_it_inconclusive_with_the_traffic_it_would_need(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(analysis([((59, 60), (59, 60))] * 10, deadline=120)))
    out = run(["replay", "--input", str(path), "-o", "json"], capsys)
    assert (out["verdict"], out["decided_at"], out["looks"]) == ("inconclusive", 120, 4)
    assert out["metrics"][0]["needed"] > 1
    assert "inconclusive at the deadline, needs ~" in out["summary"]


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(BETTER))
    assert main(["replay", "--input", str(path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pass after ")
    assert "canary 20.0% vs 10.0% good" in line


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["metrics"][0].update(colour="red"), "metrics[0].colour: unknown field"),
    (lambda d: d["metrics"][0]["series"][1]["canary"].update(good=70),
     "metrics[0].series[1].canary.good: must not exceed total"),
    (lambda d: d["metrics"][0]["series"][0].pop("baseline"),
     "metrics[0].series[0].baseline: is required (null means no data)"),
    (lambda d: d["metrics"].append({**d["metrics"][0], "name": "b", "series": []}),
     "every metric needs a series of the same length"),
    (lambda d: d["metrics"][0].update(kind="histogram"), "metrics[0].direction: a histogram"),
    (lambda d: d["metrics"][0].update(kind="histogram", direction="lower"),
     "metrics[0].objective: a histogram metric needs"),
    (lambda d: d.update(interval=0), "interval: must be a positive whole number"),
])
def test_bad_input_names_the_field(change: Any, words: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(json.dumps(WORSE))
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert main(["replay", "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert words in err


def test_histogram_buckets_must_be_cumulative_and_end_at_inf() -> None:
    def doc(baseline: object) -> dict[str, Any]:
        return {"metrics": [{"name": "latency", "kind": "histogram", "objective": 0.25,
                             "series": [{"baseline": baseline, "canary": None}]}]}

    recorded = parse(doc({"0.1": 5, "0.25": 9, "+Inf": 10}), "h.json")
    assert recorded.series[0][0].baseline == ((0.1, 5.0), (0.25, 9.0), (float("inf"), 10.0))
    with pytest.raises(InputError, match=r"series\[0\].baseline.0.25: bucket counts are cumul"):
        parse(doc({"0.1": 5, "0.25": 4, "+Inf": 10}), "h.json")
    with pytest.raises(InputError, match=r"needs the \+Inf bucket"):
        parse(doc({"0.1": 5}), "h.json")


def test_a_document_written_reads_back_the_same() -> None:
    recorded = parse(WORSE, "a.json")
    again = parse(json.loads(json.dumps(to_document(recorded))), "b.json")
    assert again == recorded
    assert replay(again) == replay(recorded)


def test_a_long_analysis_is_kept_small_and_decides_the_same() -> None:
    """Beyond the looks a record keeps, neighbours merge: the sums and the decision stay."""
    spec = Spec("success", tolerance=0.005, critical=True)
    steps = tuple(Step(Counts(59, 60), Counts(59 - (i % 2), 60)) for i in range(101))
    recorded = Recorded(specs=(spec,), series=(steps,))
    small = recorded.bounded(limit=30)
    assert small.looks <= 30
    assert small.interval == 30 * 4
    assert small.assess() == recorded.assess()


def test_evidence_of_another_analysis_is_not_resumed() -> None:
    recorded = parse(WORSE, "a.json")
    text = json.dumps(to_document(recorded))
    assert resume(text, Recorded(specs=recorded.specs, series=((),))).series == \
        recorded.series
    other = Recorded(specs=(Spec("success", tolerance=0.01, critical=True),), series=((),))
    assert resume(text, other) == other
    assert resume("{not json", other) == other
