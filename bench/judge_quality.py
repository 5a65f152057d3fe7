"""How good is the judge's ratio test? A simulation of success rates, A/A and A/B.

The judge (controller/domain/judge.py) compares a ratio metric with Fisher's exact test on the
counts of the whole window. The usual alternative, Kayenta's, runs Mann-Whitney U on a series of
per-interval values. Both see the SAME simulated requests here: each variant's n requests are
split into INTERVALS equal intervals; "ours" sums them into good/total, the rank tests see one
success rate per interval. Every method is one-sided at alpha/2 = 1% (confidence 0.98), on a
success rate where higher is better.

Prints:
  (a) false failures on A/A data (99% vs 99%, n = 2000 per variant; goal <= 1%);
  (b) the power curve for a drop from 99% to 98% and the requests per variant for 95% power;
  (c) the sparse case: 0 errors of 1000 in baseline, 8 of 1000 in canary.
Methods: ours (judge, ratio); MWU = plain Mann-Whitney U on the interval rates (Kayenta-like);
samples = the judge's own samples path on the interval rates (MWU + effect bound + the
Brown-Forsythe spread test), to show what the spread test costs on A/A. "ours exact" is the
judge's failure probability computed over the binomial distributions instead of sampled: the
check on the simulation's noise.

Seeded, single process, under a minute on 2 cores.
Run: cd /work/main && .venv/bin/python bench/judge_quality.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import stats

from controller.domain.judge import Counts, MetricInput, Verdict, judge

INTERVALS = 10
CONFIDENCE = 0.98
HALF_ALPHA = (1 - CONFIDENCE) / 2
AA_TRIALS, AA_N, SUCCESS = 10_000, 2000, 0.99
DROP_TO = 0.98
POWER_TRIALS = 1000
POWER_GRID = (1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10_000, 12_000, 15_000, 20_000)
TARGET_POWER = 0.95
SPARSE_N, SPARSE_ERRORS, SPARSE_TRIALS = 1000, 8, 2000

Ints = npt.NDArray[np.int64]
# A method takes the interval counts of baseline and canary, (trials, INTERVALS) each, and the
# requests per interval, and says for each trial whether the canary fails.
Method = Callable[[Ints, Ints, int], npt.NDArray[np.bool_]]


def ours(base: Ints, can: Ints, per_interval: int) -> npt.NDArray[np.bool_]:
    total = per_interval * INTERVALS
    return np.array([
        judge([MetricInput("success-rate", "ratio", "higher", Counts(int(b), total),
                           Counts(int(c), total))], confidence=CONFIDENCE).verdict is Verdict.FAIL
        for b, c in zip(base.sum(axis=1), can.sum(axis=1), strict=True)])


def mann_whitney(base: Ints, can: Ints, per_interval: int) -> npt.NDArray[np.bool_]:
    p_low = stats.mannwhitneyu(can / per_interval, base / per_interval, alternative="less",
                               axis=1).pvalue
    return np.asarray(p_low < HALF_ALPHA)


def samples_path(base: Ints, can: Ints, per_interval: int) -> npt.NDArray[np.bool_]:
    return np.array([
        judge([MetricInput("success-rate", "samples", "higher", tuple((b / per_interval).tolist()),
                           tuple((c / per_interval).tolist()))],
              confidence=CONFIDENCE).verdict is Verdict.FAIL
        for b, c in zip(base, can, strict=True)])


METHODS: dict[str, Method] = {"ours": ours, "MWU": mann_whitney, "samples": samples_path}


def simulate(rng: np.random.Generator, n: int, success_b: float, success_c: float,
             trials: int) -> tuple[Ints, Ints]:
    per_interval = n // INTERVALS
    return (rng.binomial(per_interval, success_b, size=(trials, INTERVALS)),
            rng.binomial(per_interval, success_c, size=(trials, INTERVALS)))


def failure_rates(rng: np.random.Generator, n: int, success_b: float, success_c: float,
                  trials: int) -> dict[str, float]:
    base, can = simulate(rng, n, success_b, success_c, trials)
    return {name: float(method(base, can, n // INTERVALS).mean())
            for name, method in METHODS.items()}


def fails(n: int, errors_b: int, errors_c: int) -> bool:
    return judge([MetricInput("success-rate", "ratio", "higher", Counts(n - errors_b, n),
                              Counts(n - errors_c, n))],
                 confidence=CONFIDENCE).verdict is Verdict.FAIL


def exact_failure_rate(n: int, success_b: float, success_c: float) -> float:
    """The judge's failure probability without sampling noise: over every error count of the
    baseline, the fewest canary errors that fail (failing is monotone in them, so bisect),
    weighted by their binomial probabilities."""
    errors_b, errors_c = stats.binom(n, 1 - success_b), stats.binom(n, 1 - success_c)
    rate = 0.0
    for x_b in range(int(errors_b.ppf(1e-12)), int(errors_b.isf(1e-12)) + 1):
        low, high = x_b, n + 1  # n + 1: no canary fails
        while low < high:
            middle = (low + high) // 2
            low, high = (low, middle) if fails(n, x_b, middle) else (middle + 1, high)
        rate += float(errors_b.pmf(x_b)) * float(errors_c.sf(low - 1))
    return rate


def crossing(curve: list[tuple[int, float]]) -> tuple[int, float] | None:
    """The first grid n reaching the target power, and the linear interpolation below it."""
    for (n0, p0), (n1, p1) in zip([(0, 0.0), *curve], curve, strict=False):
        if p1 >= TARGET_POWER:
            return n1, n0 + (TARGET_POWER - p0) / (p1 - p0) * (n1 - n0)
    return None


def main() -> None:
    started = time.monotonic()
    names = list(METHODS)
    print(f"judge quality: {INTERVALS} intervals per variant, confidence {CONFIDENCE} "
          f"(one side at {HALF_ALPHA:.0%}), higher success is better")
    print("  ours    = judge ratio metric: Fisher's exact test on the window's good/total")
    print("  MWU     = Mann-Whitney U on the per-interval success rates (Kayenta-like)")
    print("  samples = judge samples metric on the interval rates (MWU + Brown-Forsythe)")

    aa = failure_rates(np.random.default_rng(1), AA_N, SUCCESS, SUCCESS, AA_TRIALS)
    print(f"\n(a) A/A: {SUCCESS:.0%} vs {SUCCESS:.0%}, n={AA_N:,} per variant, "
          f"{AA_TRIALS:,} trials: false failures (goal <= 1%)")
    print(f"    {'ours exact':>10}" + "".join(f"{name:>10}" for name in names))
    print(f"    {exact_failure_rate(AA_N, SUCCESS, SUCCESS):>10.2%}"
          + "".join(f"{aa[name]:>10.2%}" for name in names))

    print(f"\n(b) power to catch {SUCCESS:.0%} -> {DROP_TO:.0%}, {POWER_TRIALS:,} trials per n")
    print(f"    {'n/variant':>10}{'ours exact':>12}" + "".join(f"{name:>10}" for name in names))
    names = ["ours exact", *names]
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    rng = np.random.default_rng(2)
    for n in POWER_GRID:
        power = failure_rates(rng, n, SUCCESS, DROP_TO, POWER_TRIALS)
        power["ours exact"] = exact_failure_rate(n, SUCCESS, DROP_TO)
        for name in names:
            curves[name].append((n, power[name]))
        print(f"    {n:>10,}{power['ours exact']:>12.1%}"
              + "".join(f"{power[name]:>10.1%}" for name in names[1:]))
    print(f"    requests per variant for {TARGET_POWER:.0%} power, grid (interpolated):")
    found = {name: crossing(curves[name]) for name in names}
    for name, cross in found.items():
        shown = f"> {POWER_GRID[-1]:,}" if cross is None else \
            f"{cross[0]:,} (~{round(cross[1], -2):,.0f})"
        print(f"    {name:>12}: {shown}")
    mwu, ratio_test = found["MWU"], found["ours"]
    if mwu and ratio_test:
        print(f"    required n, MWU / ours: {mwu[1] / ratio_test[1]:.2f} (interpolated), "
              f"{mwu[0] / ratio_test[0]:.2f} (grid), both on the same simulated requests")

    print(f"\n(c) sparse: baseline 0 errors of {SPARSE_N:,}, canary {SPARSE_ERRORS} of "
          f"{SPARSE_N:,}")
    per_interval = SPARSE_N // INTERVALS
    rng = np.random.default_rng(3)
    base = np.full((SPARSE_TRIALS, INTERVALS), per_interval, dtype=np.int64)
    # the canary's 8 errors fall at random among its requests, hence among the intervals
    errors = rng.multivariate_hypergeometric([per_interval] * INTERVALS, SPARSE_ERRORS,
                                             size=SPARSE_TRIALS)
    fixed = {name: float(method(base, per_interval - errors, per_interval).mean())
             for name, method in METHODS.items()}
    fixed["ours exact"] = float(fails(SPARSE_N, 0, SPARSE_ERRORS))
    print(f"    {'caught in':<40}" + "".join(f"{name:>12}" for name in names))
    print(f"    {f'exactly {SPARSE_ERRORS} errors ({SPARSE_TRIALS:,} placements)':<40}"
          + "".join(f"{fixed[name]:>12.1%}" for name in names))
    sparse_success = 1 - SPARSE_ERRORS / SPARSE_N
    drawn = failure_rates(rng, SPARSE_N, 1.0, sparse_success, SPARSE_TRIALS)
    drawn["ours exact"] = exact_failure_rate(SPARSE_N, 1.0, sparse_success)
    print(f"    {f'canary errors ~ Binomial({SPARSE_N:,}, {1 - sparse_success:.1%})':<40}"
          + "".join(f"{drawn[name]:>12.1%}" for name in names))
    print(f"\n{time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
