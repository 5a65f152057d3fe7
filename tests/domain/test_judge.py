"""The judge as tables of numbers: baseline and canary in, per-metric results and a verdict out."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, cast

import numpy as np
import pytest

from controller.domain.judge import (
    Counts,
    MetricInput,
    Result,
    Verdict,
    judge,
    parse_input,
    summary,
    to_json,
)
from controller.errors import InputError

SOURCE = "analysis.json"
Side = Counts | tuple[float, ...] | None


def ratio(baseline: Side, canary: Side, direction: str = "higher", name: str = "success-rate",
          critical: bool = False, weight: float = 1.0) -> MetricInput:
    return MetricInput(name, "ratio", direction, baseline, canary, critical, weight)


def samples(baseline: Side, canary: Side, direction: str = "lower", name: str = "latency",
            critical: bool = False) -> MetricInput:
    return MetricInput(name, "samples", direction, baseline, canary, critical)


def draw(seed: int, kind: str, *args: float, size: int = 40) -> tuple[float, ...]:
    """A reproducible sample: draw(1, "normal", 100, 5) is 40 values from N(100, 5)."""
    rng = np.random.default_rng(seed)
    return tuple(getattr(rng, kind)(*args, size=size).tolist())


def seeded_counts(seed: int, success: float, total: int = 1000) -> Counts:
    return Counts(int(np.random.default_rng(seed).binomial(total, success)), total)


LATENCY = draw(1, "lognormal", math.log(100), 0.2)


@pytest.mark.parametrize("metrics", [
    [ratio(Counts(990, 1000), Counts(990, 1000))],
    [ratio(Counts(1000, 1000), Counts(1000, 1000))],  # no errors at all: Fisher has no table
    [ratio(Counts(0, 1000), Counts(0, 1000), direction="either")],
    [samples(LATENCY, LATENCY)],
    [samples((1.0,) * 5, (1.0,) * 5, direction="either")],  # no spread: Levene cannot divide
    [ratio(Counts(990, 1000), Counts(990, 1000)), samples(LATENCY, LATENCY, critical=True)],
], ids=["ratio", "all-good", "all-bad", "samples", "constant", "two-metrics"])
def test_identical_data_passes_with_score_100(metrics: list[MetricInput]) -> None:
    judgement = judge(metrics)
    assert (judgement.verdict, judgement.score) == (Verdict.PASS, 100)
    assert {m.result for m in judgement.metrics} == {Result.PASS}


@pytest.mark.parametrize("direction", ["higher", "either"])
def test_sparse_errors_do_not_pass(direction: str) -> None:
    """0 errors of 1000 in baseline, 8 of 1000 in canary: few errors, still significant."""
    judgement = judge([ratio(Counts(1000, 1000), Counts(992, 1000), direction)])
    [metric] = judgement.metrics
    assert judgement.verdict is Verdict.FAIL
    assert (metric.result, metric.failed) == (Result.LOW, True)
    assert metric.p_value is not None
    assert metric.p_value < 0.02
    assert metric.statistic == 0  # the odds ratio: the baseline has no errors


@pytest.mark.parametrize(("direction", "verdict", "failed"), [
    ("higher", Verdict.PASS, False),
    ("lower", Verdict.FAIL, True),
    ("either", Verdict.FAIL, True),
])
def test_the_seed_story_canary_succeeds_twice_as_often(direction: str, verdict: Verdict,
                                                       failed: bool) -> None:
    """The seed guide moves success_rate from 10 to 20: significant, and High stays High."""
    metric = ratio(seeded_counts(1, 0.10), seeded_counts(2, 0.20), direction)
    judgement = judge([metric])
    assert judgement.verdict is verdict
    assert (judgement.metrics[0].result, judgement.metrics[0].failed) == (Result.HIGH, failed)
    assert judgement.score == (0 if failed else 100)


GOOD = ratio(Counts(990, 1000), Counts(990, 1000), name="ok")


@pytest.mark.parametrize("metric", [
    ratio(None, Counts(990, 1000)),
    ratio(Counts(990, 1000), None),
    ratio(Counts(0, 0), Counts(0, 0)),
    ratio(Counts(49, 49), Counts(990, 1000)),
    ratio(Counts(990, 1000), Counts(1001, 1000)),  # from a query: not valid, not a crash
    ratio(Counts(-1, 1000), Counts(990, 1000)),
    ratio(Counts(cast(int, math.nan), 1000), Counts(990, 1000)),
    samples(LATENCY, LATENCY[:4]),
    samples(LATENCY, (*LATENCY[:4], math.nan, math.nan)),
    samples(None, LATENCY),
    samples(Counts(1, 2), LATENCY),
], ids=["no-baseline", "no-canary", "total-0", "total-49", "good>total", "negative", "nan",
        "4-samples", "4-and-nan", "samples-none", "counts-as-samples"])
def test_no_data_is_inconclusive(metric: MetricInput) -> None:
    judgement = judge([metric, GOOD])
    assert judgement.verdict is Verdict.INCONCLUSIVE
    assert judgement.metrics[0].result is Result.NODATA
    assert judgement.score == 50  # NoData is not a pass


def test_nothing_to_judge_is_inconclusive() -> None:
    assert judge([]).verdict is Verdict.INCONCLUSIVE


SPARSE = (Counts(1000, 1000), Counts(992, 1000))


@pytest.mark.parametrize(("metrics", "verdict", "score"), [
    # a critical failure decides, whatever the score and even with another metric's data missing
    ([*[GOOD] * 20, ratio(*SPARSE, critical=True)], Verdict.FAIL, 100 * 20 / 21),
    ([GOOD, ratio(*SPARSE, critical=True), ratio(None, None, name="x")], Verdict.FAIL, 100 / 3),
    # weighted share of the non-failing metrics against the thresholds (95 / 75)
    ([ratio(*SPARSE, weight=1), dataclasses.replace(GOOD, weight=19)],
     Verdict.PASS, 95),
    ([ratio(*SPARSE, weight=5), dataclasses.replace(GOOD, weight=15)],
     Verdict.MARGINAL, 75),
    ([ratio(*SPARSE, weight=6), dataclasses.replace(GOOD, weight=14)],
     Verdict.FAIL, 70),
    # a metric that is better than baseline counts as passing
    ([ratio(seeded_counts(1, 0.1), seeded_counts(2, 0.2)), ratio(*SPARSE, name="e")],
     Verdict.FAIL, 50),
])
def test_critical_weights_and_thresholds(metrics: list[MetricInput], verdict: Verdict,
                                         score: float) -> None:
    judgement = judge(metrics)
    assert judgement.verdict is verdict
    assert judgement.score == pytest.approx(score)


@pytest.mark.parametrize(("pass_score", "marginal_score", "verdict"), [
    (95, 75, Verdict.FAIL),
    (50, 25, Verdict.PASS),
    (90, 50, Verdict.MARGINAL),
])
def test_thresholds_are_the_callers(pass_score: float, marginal_score: float,
                                    verdict: Verdict) -> None:
    metrics = [ratio(*SPARSE), GOOD]
    assert judge(metrics, pass_score, marginal_score).verdict is verdict


BASE_LATENCY = draw(10, "normal", 100, 5)


@pytest.mark.parametrize(("canary", "direction", "result", "failed", "test"), [
    # the same distribution, drawn again
    (draw(11, "normal", 100, 5), "lower", Result.PASS, False, "mann-whitney"),
    (draw(11, "normal", 100, 5), "either", Result.PASS, False, "mann-whitney"),
    # 30% slower
    (draw(12, "normal", 130, 5), "lower", Result.HIGH, True, "mann-whitney"),
    (draw(12, "normal", 130, 5), "higher", Result.HIGH, False, "mann-whitney"),
    (draw(12, "normal", 130, 5), "either", Result.HIGH, True, "mann-whitney"),
    # 30% faster
    (draw(13, "normal", 70, 5), "lower", Result.LOW, False, "mann-whitney"),
    # the same median, six times the spread: more users see the slow tail
    (draw(14, "normal", 100, 30), "lower", Result.HIGH, True, "brown-forsythe"),
    (draw(14, "normal", 100, 30), "higher", Result.LOW, True, "brown-forsythe"),
    (draw(14, "normal", 100, 30), "either", Result.HIGH, True, "brown-forsythe"),
    # a narrower canary is fine
    (draw(15, "normal", 100, 1), "lower", Result.PASS, False, "mann-whitney"),
], ids=["same", "same-either", "slower", "slower-higher", "slower-either", "faster", "wider",
        "wider-higher", "wider-either", "narrower"])
def test_samples(canary: tuple[float, ...], direction: str, result: Result, failed: bool,
                 test: str) -> None:
    [metric] = judge([samples(BASE_LATENCY, canary, direction)]).metrics
    assert (metric.result, metric.failed, metric.test) == (result, failed, test)
    assert metric.effect == pytest.approx(np.median(canary) / np.median(BASE_LATENCY))


@pytest.mark.parametrize(("metric", "tolerance", "result"), [
    # 99.0% vs 98.5% of 100k requests: significant, 0.5 points
    (ratio(Counts(99_000, 100_000), Counts(98_500, 100_000)), 0.0, Result.LOW),
    (ratio(Counts(99_000, 100_000), Counts(98_500, 100_000)), 0.01, Result.PASS),
    # 5% slower with little noise: significant, a ratio of 1.05
    (samples(draw(20, "normal", 100, 1), draw(21, "normal", 105, 1)), 0.0, Result.HIGH),
    (samples(draw(20, "normal", 100, 1), draw(21, "normal", 105, 1)), 0.1, Result.PASS),
])
def test_tolerance_lets_a_small_significant_change_pass(metric: MetricInput, tolerance: float,
                                                        result: Result) -> None:
    judgement = judge([dataclasses.replace(metric, tolerance=tolerance)])
    assert judgement.metrics[0].result is result
    assert judgement.metrics[0].p_value is not None
    assert judgement.metrics[0].p_value < 0.001
    assert judgement.verdict is (Verdict.FAIL if result is not Result.PASS else Verdict.PASS)


def test_infinite_latency_is_slower_than_any() -> None:
    """histogram_quantile() answers +Inf beyond the last bucket."""
    judgement = judge([samples(LATENCY, (math.inf,) * 10)])
    [metric] = judgement.metrics
    assert (metric.result, metric.failed, metric.canary) == (Result.HIGH, True, math.inf)
    metrics = to_json(judgement)["metrics"]
    assert isinstance(metrics, list)
    assert (metrics[0]["canary"], metrics[0]["effect"]) == (None, None)  # JSON has no infinity


def test_invalid_metric_and_confidence_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="kind"):
        MetricInput("x", "histogram", "lower", None, None)
    with pytest.raises(ValueError, match="weight"):
        MetricInput("x", "ratio", "lower", None, None, weight=0)
    with pytest.raises(ValueError, match="confidence"):
        judge([GOOD], confidence=1)


VALID: dict[str, Any] = {
    "metrics": [
        {"name": "success-rate", "kind": "ratio", "direction": "higher", "critical": True,
         "baseline": {"good": 990, "total": 1000}, "canary": {"good": 992.0, "total": 1000}},
        {"name": "latency", "kind": "samples", "direction": "lower", "weight": 2,
         "tolerance": 0.1, "baseline": [1, 2.5, 3, 4, 5], "canary": None},
    ],
    "thresholds": {"pass": 90, "marginal": 60},
}


def test_parse_input() -> None:
    metrics, pass_score, marginal_score = parse_input(VALID, SOURCE)
    assert metrics == [
        MetricInput("success-rate", "ratio", "higher", Counts(990, 1000), Counts(992, 1000),
                    critical=True),
        MetricInput("latency", "samples", "lower", (1.0, 2.5, 3.0, 4.0, 5.0), None, weight=2,
                    tolerance=0.1),
    ]
    assert (pass_score, marginal_score) == (90, 60)
    assert parse_input({"metrics": VALID["metrics"]}, SOURCE)[1:] == (95, 75)


def with_first(**fields: object) -> dict[str, object]:
    return {"metrics": [{**VALID["metrics"][0], **fields}]}


@pytest.mark.parametrize(("data", "field", "problem"), [
    ([], "(top level)", "must be a mapping"),
    ({}, "metrics", "at least one metric"),
    ({**VALID, "metric": []}, "metric", "unknown field"),
    (with_first(canary={"good": 1, "total": "1000"}), "metrics[0].canary.total", "number"),
    (with_first(canary={"good": 1001, "total": 1000}), "metrics[0].canary.good", "exceed"),
    (with_first(canary={"good": 1.5, "total": 1000}), "metrics[0].canary.good", "whole"),
    (with_first(canary={"good": True, "total": 1000}), "metrics[0].canary.good", "boolean"),
    (with_first(baseline={"good": 1, "total": -3}), "metrics[0].baseline.total", "0 or more"),
    (with_first(baseline={"good": 1}), "metrics[0].baseline.total", "required"),
    (with_first(baseline={"good": 1, "total": 2, "bad": 1}), "metrics[0].baseline.bad",
     "unknown field"),
    (with_first(baseline=[1, 2, 3]), "metrics[0].baseline", "must be a mapping"),
    (with_first(kind="samples", baseline={"good": 1, "total": 2}), "metrics[0].baseline",
     "list of numbers"),
    (with_first(kind="samples", baseline=[1, 2, "3"]), "metrics[0].baseline[2]", "finite"),
    (with_first(kind="samples", baseline=[1, math.nan]), "metrics[0].baseline[1]", "finite"),
    (with_first(direction="up"), "metrics[0].direction", "higher, lower, either"),
    (with_first(kind="histogram"), "metrics[0].kind", "ratio, samples"),
    (with_first(name=""), "metrics[0].name", "required"),
    (with_first(weight=0), "metrics[0].weight", "positive"),
    (with_first(tolerance=-0.1), "metrics[0].tolerance", "0 or more"),
    (with_first(critical="yes"), "metrics[0].critical", "true or false"),
    (with_first(threshold=1), "metrics[0].threshold", "unknown field"),
    ({"metrics": [{"name": "x", "baseline": None}]}, "metrics[0].canary", "null means no data"),
    ({"metrics": [{"name": "x", "baseline": None, "canary": None}] * 2}, "metrics", "unique"),
    ({**VALID, "thresholds": {"pass": 101}}, "thresholds", "<= 100"),
    ({**VALID, "thresholds": {"pass": 50, "marginal": 60}}, "thresholds", "marginal"),
    ({**VALID, "thresholds": {"fail": 50}}, "thresholds.fail", "unknown field"),
])
def test_parse_input_names_the_path(data: object, field: str, problem: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_input(data, SOURCE)
    assert (caught.value.file, caught.value.field) == (SOURCE, field)
    assert problem in caught.value.problem


def test_to_json_shape() -> None:
    judgement = judge([ratio(*SPARSE, critical=True), samples(BASE_LATENCY, None)])
    data = to_json(judgement)
    json.dumps(data, allow_nan=False)
    assert data == {
        "verdict": "fail",
        "score": 0.0,
        "metrics": [
            {"name": "success-rate", "result": "Low", "baseline": 1.0, "canary": 0.992,
             "p_value": 0.00770348, "effect": -0.008, "statistic": 0.0, "critical": True,
             "weight": 1.0, "failed": True, "undecided": False, "test": "fisher"},
            {"name": "latency", "result": "NoData", "baseline": 99.1174, "canary": None,
             "p_value": None, "effect": None, "statistic": None, "critical": False,
             "weight": 1.0, "failed": False, "undecided": False, "test": ""},
        ],
    }


@pytest.mark.parametrize(("metrics", "line"), [
    ([ratio(Counts(102, 1000), Counts(201, 1000))],
     "canary 20.1% good vs baseline 10.2% (p<0.001): pass, score 100"),
    ([ratio(*SPARSE)], "canary 99.2% good vs baseline 100.0% (p=0.0077): fail, score 0"),
    ([ratio(Counts(9990, 10000), Counts(9995, 10000))],
     "canary 99.95% good vs baseline 99.90% (p=0.3): pass, score 100"),
    ([samples(BASE_LATENCY, draw(14, "normal", 100, 30))],
     "canary median 102 vs baseline 99.1, wider spread (p<0.001): fail, score 0"),
    ([ratio(None, None)], "not enough data: inconclusive, score 0"),
    ([GOOD, ratio(None, None, name="errors"), ratio(*SPARSE, name="sparse")],
     "inconclusive, score 33.3: sparse Low: canary 99.2% good vs baseline 100.0% (p=0.0077); "
     "errors no data; ok ok"),
])
def test_summary(metrics: list[MetricInput], line: str) -> None:
    assert summary(judge(metrics)) == line


def test_summary_fits_a_commit_status() -> None:
    metrics = [ratio(*SPARSE, name=f"metric-with-a-long-name-{i}") for i in range(10)]
    line = summary(judge(metrics))
    assert len(line) == 140
    assert line.startswith("fail, score 0: metric-with-a-long-name-0 Low: canary 99.2%")
    assert line.endswith("…")


@pytest.mark.parametrize(("baseline", "canary", "verdict", "undecided"), [
    # Seen live with judgment: auto: worse by half, p=0.066 two-sided on ~170 requests.
    (Counts(26, 169), Counts(13, 169), Verdict.INCONCLUSIVE, True),
    # The same rates on more requests: significant, a fail.
    (Counts(154, 1000), Counts(77, 1000), Verdict.FAIL, False),
    # Better, not significant: nothing to wait for.
    (Counts(13, 169), Counts(26, 169), Verdict.PASS, False),
    # A hair worse, far from significant (A/A noise): a pass.
    (Counts(990, 1000), Counts(989, 1000), Verdict.PASS, False),
])
def test_worse_but_not_yet_significant_is_undecided_not_a_pass(
        baseline: Counts, canary: Counts, verdict: Verdict, undecided: bool) -> None:
    judgement = judge([MetricInput("success-rate", "ratio", "higher", baseline, canary,
                                   critical=True)])
    assert judgement.verdict is verdict
    assert judgement.metrics[0].undecided is undecided
    if undecided:
        assert "looks worse, not significant yet" in summary(judgement)
