"""The sequential judge as tables of numbers: accumulated counts in, evidence and a verdict out.

The figures the judge reports are recomputed here from the formulas of its docstring (the
normal-mixture martingale over SCALES), so a change of the boundary shows as a changed number,
and the decisions are checked on both sides of their thresholds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.domain.sequential import (
    ALPHA_FAIL,
    ALPHA_PASS,
    DEFAULT_TOLERANCE,
    SCALES,
    Counts,
    Result,
    Spec,
    Step,
    Verdict,
    assess,
    evaluate,
    quantile,
    summary,
    to_json,
)

INF = math.inf
SUCCESS = Spec("success-rate", critical=True)


def mixture(s: float, info: float, scale: float) -> float:
    """M_t for |S| = s, straight from the docstring's formula."""
    return sum(w / math.sqrt(1 + (f * scale) ** 2 * info)
               * math.exp((f * scale) ** 2 * s * s / (2 * (1 + (f * scale) ** 2 * info)))
               for f, w in SCALES)


def information(good_b: int, total_b: int, good_c: int, total_c: int) -> float:
    smooth_b, smooth_c = (good_b + 0.5) / (total_b + 1), (good_c + 0.5) / (total_c + 1)
    return 1 / (smooth_b * (1 - smooth_b) / total_b + smooth_c * (1 - smooth_c) / total_c)


def counts(good_b: int, total_b: int, good_c: int, total_c: int) -> list[list[Step]]:
    return [[Step(Counts(good_b, total_b), Counts(good_c, total_c))]]


# --- one metric: the figures are the formulas' -------------------------------------------------

@pytest.mark.parametrize(("good_b", "total_b", "good_c", "total_c"), [
    (990, 1000, 970, 1000), (9900, 10000, 9850, 10000), (100, 1000, 200, 1000),
    (50, 60, 20, 60)])
def test_the_e_value_and_the_confidence_sequence_are_the_formulas(
        good_b: int, total_b: int, good_c: int, total_c: int) -> None:
    (m,) = assess([SUCCESS], counts(good_b, total_b, good_c, total_c)).metrics
    estimate = good_c / total_c - good_b / total_b
    info = information(good_b, total_b, good_c, total_c)
    tolerance = DEFAULT_TOLERANCE["ratio"]
    assert m.estimate == pytest.approx(estimate, abs=1e-12)
    if estimate < 0:  # the canary looks worse: the evidence is M_t at "no difference"
        assert m.e_value == pytest.approx(mixture(info * -estimate, info, tolerance), rel=1e-9)
    else:  # it looks better: the least evidence against "not worse" is at the estimate
        assert m.e_value == pytest.approx(mixture(0, info, tolerance), rel=1e-9)
    assert m.lower is not None
    assert m.upper is not None
    radius = (m.upper - m.lower) / 2
    assert mixture(info * radius, info, tolerance) == pytest.approx(1 / ALPHA_PASS, rel=1e-6)
    assert m.estimate == pytest.approx((m.upper + m.lower) / 2)


def test_fail_exactly_when_the_e_value_reaches_one_over_alpha() -> None:
    """Walk the canary's errors up one by one: it fails at the first count whose e-value is
    at least 100, not one request earlier."""
    seen = []
    for bad in range(10, 60):
        (m,) = assess([SUCCESS], counts(990, 1000, 1000 - bad, 1000)).metrics
        info = information(990, 1000, 1000 - bad, 1000)
        e = mixture(info * (bad - 10) / 1000, info, DEFAULT_TOLERANCE["ratio"])
        assert (m.result is Result.LOW) == (e >= 1 / ALPHA_FAIL), (bad, e, m)
        seen.append(m.result)
    assert Result.UNDECIDED in seen
    assert Result.LOW in seen
    first = seen.index(Result.LOW)
    assert all(r is Result.LOW for r in seen[first:])  # more errors never un-fail


def test_pass_exactly_when_the_sequence_clears_the_tolerance() -> None:
    """The same share on both sides, more and more requests: a pass comes once M_t at
    -tolerance reaches 1/alpha_pass, never on little data."""
    tolerance = DEFAULT_TOLERANCE["ratio"]
    results = []
    for total in (1_000, 5_000, 20_000, 40_000, 80_000):
        good = total * 99 // 100
        (m,) = assess([SUCCESS], counts(good, total, good, total)).metrics
        info = information(good, total, good, total)
        shown = mixture(info * tolerance, info, tolerance) >= 1 / ALPHA_PASS
        assert (m.result is Result.PASS) == shown, (total, m)
        assert m.result is not Result.LOW
        results.append(m.result)
    assert results[0] is Result.UNDECIDED
    assert results[-1] is Result.PASS


@pytest.mark.parametrize(("spec", "base", "canary", "result"), [
    # the seed: 10% good -> 20% good is better beyond doubt; reversed, worse
    (SUCCESS, Counts(100, 1000), Counts(200, 1000), Result.PASS),
    (SUCCESS, Counts(200, 1000), Counts(100, 1000), Result.LOW),
    # too few requests on one side is no data, whatever the shares
    (SUCCESS, Counts(29, 29), Counts(0, 1000), Result.NODATA),
    (SUCCESS, None, Counts(0, 1000), Result.NODATA),
    # an error ratio, lower is better: more errors are High
    (Spec("errors", direction="lower"), Counts(10, 1000), Counts(80, 1000), Result.HIGH),
    (Spec("errors", direction="lower"), Counts(80, 1000), Counts(10, 1000), Result.PASS),
    # either way is worse: a big rise fails too
    (Spec("share", direction="either"), Counts(100, 1000), Counts(200, 1000), Result.HIGH),
    (Spec("share", direction="either"), Counts(100, 1000), Counts(101, 1000),
     Result.UNDECIDED),
    # sparse errors: 0 of 5000 vs 25 of 5000 is shown worse
    (SUCCESS, Counts(5000, 5000), Counts(4975, 5000), Result.LOW),
    # a canary worse within the tolerance on plenty of data passes; beyond it, fails
    (Spec("s", tolerance=0.02), Counts(99_000, 100_000), Counts(98_900, 100_000),
     Result.PASS),
    (Spec("s", tolerance=0.0), Counts(99_000, 100_000), Counts(98_600, 100_000), Result.LOW),
])
def test_one_metric(spec: Spec, base: Counts | None, canary: Counts, result: Result) -> None:
    m = evaluate(spec, [Step(base, canary)], ALPHA_FAIL)
    assert m.result is result, m


def test_a_histogram_is_judged_on_the_share_within_its_objective() -> None:
    """Bucket bounds are read exactly: good = the count at the objective's bucket."""
    spec = Spec("latency", "histogram", "lower", objective=0.25, critical=True)
    base = ((0.1, 900.0), (0.25, 995.0), (0.5, 1000.0), (INF, 1000.0))
    slow = ((0.1, 0.0), (0.25, 10.0), (0.5, 990.0), (INF, 1000.0))
    m = evaluate(spec, [Step(base, slow)], ALPHA_FAIL)
    assert m.result is Result.LOW
    assert (m.baseline, m.canary) == (0.995, 0.01)
    assert (m.n_baseline, m.n_canary) == (1000, 1000)
    assert m.quantiles is not None
    p99_base, p99_canary = m.quantiles
    assert p99_base == pytest.approx(0.1 + 0.15 * (990 - 900) / (995 - 900))  # rank 990
    assert p99_canary == pytest.approx(0.25 + 0.25 * (990 - 10) / 980)
    same = evaluate(spec, [Step(base, base)] * 30, ALPHA_FAIL)
    assert same.result is Result.PASS


def test_histogram_steps_add_up_bucket_by_bucket() -> None:
    spec = Spec("latency", "histogram", "lower", objective=0.25)
    step = Step(((0.25, 40.0), (INF, 50.0)), ((0.25, 30.0), (INF, 50.0)))
    m = evaluate(spec, [step, step], ALPHA_FAIL)
    assert (m.baseline, m.canary, m.n_baseline, m.n_canary) == (0.8, 0.6, 100, 100)


def test_samples_compare_means_of_the_looks_values() -> None:
    spec = Spec("p99", "samples", "lower")
    rng = np.random.default_rng(7)
    steps = [Step((float(rng.normal(100, 2)),), (float(rng.normal(130, 2)),))
             for _ in range(20)]
    m = evaluate(spec, steps, ALPHA_FAIL)
    assert m.result is Result.HIGH
    assert m.baseline is not None
    assert m.tolerance == pytest.approx(0.1 * m.baseline)
    steps = [Step((float(rng.normal(100, 2)),), (float(rng.normal(100, 2)),))
             for _ in range(20)]
    assert evaluate(spec, steps, ALPHA_FAIL).result is Result.PASS
    assert evaluate(spec, steps[:4], ALPHA_FAIL).result is Result.NODATA


def test_quantile_is_linear_within_a_bucket_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (0.2, 100.0), (INF, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.15)
    assert quantile(0.99, [(0.1, 0.0), (INF, 10.0)]) == 0.1  # beyond the last bound
    assert quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None


# --- the verdict ------------------------------------------------------------------------------

BAD, GOOD, SAME_LITTLE = (Counts(200, 1000), Counts(100, 1000)), \
    (Counts(100, 1000), Counts(200, 1000)), (Counts(100, 1000), Counts(100, 1000))


@pytest.mark.parametrize(("metrics", "verdict", "score"), [
    ([(True, 1, GOOD)], Verdict.PASS, 100),
    ([(True, 1, BAD)], Verdict.FAIL, 0),
    ([(True, 1, SAME_LITTLE)], Verdict.INCONCLUSIVE, 0),
    # a failing critical metric decides at once, whatever is undecided
    ([(True, 1, BAD), (False, 1, SAME_LITTLE)], Verdict.FAIL, 0),
    # non-critical: the score of the decided metrics, once all are decided
    ([(False, 1, GOOD), (False, 1, GOOD), (False, 1, GOOD), (False, 1, GOOD), (False, 1, BAD)],
     Verdict.MARGINAL, 80),
    ([(False, 1, GOOD), (False, 3, BAD)], Verdict.FAIL, 25),
    # undecided: wait, unless even its pass could not lift the score to marginal
    ([(False, 1, SAME_LITTLE), (False, 1, GOOD), (False, 1, GOOD)], Verdict.INCONCLUSIVE,
     200 / 3),
    ([(False, 1, SAME_LITTLE), (False, 3, BAD)], Verdict.FAIL, 0),
])
def test_the_verdict(metrics: list[tuple[bool, float, tuple[Counts, Counts]]],
                     verdict: Verdict, score: float) -> None:
    specs = [Spec(f"m{i}", critical=critical, weight=weight)
             for i, (critical, weight, _) in enumerate(metrics)]
    series = [[Step(*sides)] for _, _, sides in metrics]
    found = assess(specs, series)
    assert found.verdict is verdict, found
    assert found.score == pytest.approx(score)


def test_the_failure_level_is_split_across_metrics() -> None:
    (one,) = assess([SUCCESS], counts(990, 1000, 970, 1000)).metrics
    two = assess([SUCCESS, Spec("other")], [*counts(990, 1000, 970, 1000),
                                            *counts(990, 1000, 990, 1000)]).metrics
    assert one.threshold == 1 / ALPHA_FAIL
    assert two[0].threshold == 2 / ALPHA_FAIL
    assert two[0].e_value == pytest.approx(one.e_value)


def test_no_traffic_is_never_a_pass() -> None:
    empty = [[Step(Counts(0, 0), Counts(0, 0))] * 60]
    assert assess([SUCCESS], empty).verdict is Verdict.INCONCLUSIVE
    assert assess([SUCCESS], [[Step(None, None)] * 60]).verdict is Verdict.INCONCLUSIVE


def test_healthy_canaries_watched_at_every_look_rarely_fail() -> None:
    """Anytime validity, on a fixed seed: 300 A/A analyses of 60 looks at 2 and at 10 req/s
    per variant (99% good) — the level is 1%, and a fixed test re-run at every look fails
    several percent (bench/sequential_quality.py has the full table)."""
    rng = np.random.default_rng(2026)
    failed = decided = 0
    for rate in (2, 10):
        for _ in range(300):
            steps: list[Step] = []
            for _look in range(60):
                n_b, n_c = (int(x) for x in rng.poisson(rate * 30, 2))
                steps.append(Step(Counts(int(rng.binomial(n_b, 0.99)), n_b),
                                  Counts(int(rng.binomial(n_c, 0.99)), n_c)))
                verdict = assess([SUCCESS], [steps], detail=False).verdict
                if verdict is not Verdict.INCONCLUSIVE:
                    failed += verdict is Verdict.FAIL
                    decided += 1
                    break
    assert failed <= 3  # of 600: within the 1% level
    assert decided >= 250  # and at 10 req/s, most pass within the 30 minutes


# --- what it says -----------------------------------------------------------------------------

def test_status_lines_carry_the_evidence() -> None:
    fail = assess([SUCCESS], counts(4146, 4188, 4121, 4210))
    assert summary(fail) == \
        f"canary 97.9% vs 99.0% good (4,210/4,188 req): worse, " \
        f"e={fail.metrics[0].e_value:.3g} ≥ 100: fail"
    passing = assess([SUCCESS], counts(30, 300, 62, 310))
    assert summary(passing).startswith("canary 20.0% vs 10.0% good (310/300 req): no worse "
                                       "than 0.5 pts (95% CS [")
    assert summary(passing).endswith("]): pass")
    waiting = assess([SUCCESS], counts(1176, 1188, 1197, 1210))
    assert summary(waiting).endswith("pts: inconclusive")
    final = summary(waiting, final=True)
    needed = waiting.metrics[0].needed
    assert needed is not None
    assert needed > 1
    assert final.endswith(f"inconclusive at the deadline, needs ~{needed:.2g}x the traffic")
    assert len(final) <= 140


def test_json_has_every_figure() -> None:
    out = to_json(assess([SUCCESS], counts(990, 1000, 970, 1000)))
    metrics = out["metrics"]
    assert isinstance(metrics, list)
    (m,) = metrics
    assert set(m) >= {"name", "kind", "result", "baseline", "canary", "requests", "estimate",
                      "lower", "upper", "level", "e_value", "threshold", "tolerance",
                      "needed", "critical", "weight"}
    assert m["requests"] == [1000, 1000]
