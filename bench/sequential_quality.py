"""How good is the sequential judge? Whole analyses, look by look, against today's judge and
a Kayenta-style Mann-Whitney U judge, on the same simulated traffic.

An analysis looks every INTERVAL (30 s) until the DEADLINE (30 min): LOOKS = 60 looks. At each
look each variant got requests ~ Poisson(rate * 30 s) and of those, good ones ~ Binomial(n, p).
Each trial draws one such stream per variant, and the three judges read the SAME streams:

- **sequential** (controller/domain/sequential.py, the new judge): one critical ratio metric,
  higher is better, tolerance 0.005; `assess` on every step since the first look, after every
  look; the analysis ends at the first pass or fail, and is inconclusive at the deadline.
- **old judge** (controller/domain/judge.py, today's): at each look, `judge` on the sums of the
  last 4 intervals (the 2-minute sliding window; fewer at looks 1 to 3), one critical ratio
  metric, tolerance 0; the analysis ends at its first pass or fail. In the controller its first
  look comes after a warm-up; here it looks from look 1, like the sequential judge.
- **MWU** (Kayenta-style): at each look, Mann-Whitney U (scipy, normal approximation with tie
  and continuity correction) of the canary's per-interval success rates against the
  baseline's, over ALL intervals so far (Kayenta's canary analysis keeps the whole interval
  since its start), one-sided at 1% each side (Kayenta's confidence 0.98). Choice made here: it
  FAILS at the first look where the canary is significantly lower, and PASSES only at the
  deadline if it never was (Kayenta passes when no difference is detected; Spinnaker's canary
  stage ends early only on a failing intermediate score). Passing at the first look without a
  significant difference instead would pass every canary at look 1: one interval per side can
  never be significant. An interval without requests has no rate; with no rate at all the
  analysis is inconclusive.

Prints (markdown):
  (1) per scenario: each judge's pass / fail / inconclusive shares and the time by which 50%
      and 90% of the analyses had a decision (minutes; ">30" when fewer ever decided), with
      the trial counts;
  (2) the targets of the sequential judge, its measured rate with a Wilson 95% interval (the
      simulation's noise), and ✓ / ✗;
  (3) the traffic (req/s per variant) each judge needs to fail >= 95% of 99% -> 98% canaries
      by the deadline, over a grid of rates, next to its pass share on that regression and its
      false failures on A/A (99% vs 99%) at the same rate: power bought with false failures, or
      lost to early passes, shows there;
  and the run's wall time.

Seeded (each scenario and grid rate has its own seed), single process, about a minute on 2
cores (59 s measured).
Run: cd /work/main && .venv/bin/python bench/sequential_quality.py
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from scipy import stats

from controller.domain import judge as old
from controller.domain import sequential as seq

INTERVAL = 30  # seconds between looks
LOOKS = 60  # 30 minutes
WINDOW = 4  # the old judge's 2-minute window, in intervals
HALF_ALPHA = 0.01  # MWU, each side (Kayenta's confidence 0.98)
TRIALS = 2000  # sequential judge, per scenario
AA_TRIALS = 4000  # sequential judge, A/A scenarios (false failures near 1% need them)
OTHER_TRIALS = 1000  # old judge and MWU: the first trials of the same streams
GRID = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
GRID_TRIALS = 1000  # per rate and judge, regression and A/A
TARGET_POWER = 0.95
JUDGES = ("sequential", "old judge", "MWU")

SPECS = [seq.Spec("success", kind="ratio", direction="higher", tolerance=0.005, critical=True)]

INCONCLUSIVE, PASS, FAIL = 0, 1, 2
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Streams:
    """Per-look increments, (trials, LOOKS) each."""

    total_b: Ints
    good_b: Ints
    total_c: Ints
    good_c: Ints

    def head(self, trials: int) -> Streams:
        return Streams(self.total_b[:trials], self.good_b[:trials], self.total_c[:trials],
                       self.good_c[:trials])


@dataclass(frozen=True)
class Outcomes:
    """Per trial: the verdict (INCONCLUSIVE, PASS, FAIL) and the look it came at (0: none)."""

    verdict: npt.NDArray[np.int8]
    look: Ints

    @property
    def trials(self) -> int:
        return len(self.verdict)

    def share(self, verdict: int) -> float:
        return float(np.mean(self.verdict == verdict))

    def count(self, verdict: int) -> int:
        return int(np.sum(self.verdict == verdict))

    def minutes_until(self, quantile: float) -> float:
        """The time by which this share of all analyses had a decision (inf: never)."""
        decided = np.sort(self.look[self.verdict != INCONCLUSIVE])
        rank = math.ceil(quantile * self.trials)
        return math.inf if rank > len(decided) else float(decided[rank - 1]) * INTERVAL / 60

    def decided_by(self, minutes: float) -> int:
        looks = round(minutes * 60 / INTERVAL)
        return int(np.sum((self.verdict != INCONCLUSIVE) & (self.look <= looks)))


def simulate(seed: int, trials: int, rate: float, good_b: float, good_c: float) -> Streams:
    rng = np.random.default_rng(seed)
    mean = rate * INTERVAL
    total_b = rng.poisson(mean, size=(trials, LOOKS))
    total_c = rng.poisson(mean, size=(trials, LOOKS))
    return Streams(total_b, rng.binomial(total_b, good_b), total_c, rng.binomial(total_c, good_c))


def _outcomes(verdicts: list[int], looks: list[int]) -> Outcomes:
    return Outcomes(np.array(verdicts, dtype=np.int8), np.array(looks, dtype=np.int64))


# --- the judges -------------------------------------------------------------------------------

def sequential_judge(s: Streams) -> Outcomes:
    verdicts, looks = [], []
    rows = zip(s.total_b.tolist(), s.good_b.tolist(), s.total_c.tolist(), s.good_c.tolist(),
               strict=True)
    for total_b, good_b, total_c, good_c in rows:
        steps: list[seq.Step] = []
        verdict, at = INCONCLUSIVE, 0
        for look in range(LOOKS):
            steps.append(seq.Step(seq.Counts(good_b[look], total_b[look]),
                                  seq.Counts(good_c[look], total_c[look])))
            found = seq.assess(SPECS, [steps], detail=False).verdict
            if found in (seq.Verdict.PASS, seq.Verdict.FAIL):
                verdict, at = (PASS if found is seq.Verdict.PASS else FAIL), look + 1
                break
        verdicts.append(verdict)
        looks.append(at)
    return _outcomes(verdicts, looks)


@cache
def _old_verdict(good_b: int, total_b: int, good_c: int, total_c: int) -> old.Verdict:
    metric = old.MetricInput("success", "ratio", "higher", old.Counts(good_b, total_b),
                             old.Counts(good_c, total_c), critical=True, tolerance=0.0)
    return old.judge([metric]).verdict


def old_judge(s: Streams) -> Outcomes:
    def window(x: Ints) -> list[list[int]]:
        summed = np.cumsum(np.pad(x, ((0, 0), (1, 0))), axis=1)
        ends = np.arange(1, LOOKS + 1)
        starts = np.maximum(ends - WINDOW, 0)
        return (summed[:, ends] - summed[:, starts]).tolist()  # type: ignore[no-any-return]

    verdicts, looks = [], []
    rows = zip(window(s.good_b), window(s.total_b), window(s.good_c), window(s.total_c),
               strict=True)
    for good_b, total_b, good_c, total_c in rows:
        verdict, at = INCONCLUSIVE, 0
        for look in range(LOOKS):
            found = _old_verdict(good_b[look], total_b[look], good_c[look], total_c[look])
            if found in (old.Verdict.PASS, old.Verdict.FAIL):
                verdict, at = (PASS if found is old.Verdict.PASS else FAIL), look + 1
                break
        verdicts.append(verdict)
        looks.append(at)
    return _outcomes(verdicts, looks)


def _p_lower(canary: npt.NDArray[np.float64], baseline: npt.NDArray[np.float64]) -> \
        npt.NDArray[np.float64]:
    """One-sided p that the canary's rates are lower, per row (NaN p: not significant)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.mannwhitneyu(canary, baseline, alternative="less", method="asymptotic",
                               axis=1).pvalue
    return np.nan_to_num(np.asarray(p, dtype=np.float64), nan=1.0)


def mwu_judge(s: Streams) -> Outcomes:
    with np.errstate(all="ignore"):
        rate_b = np.where(s.total_b > 0, s.good_b / np.maximum(s.total_b, 1), np.nan)
        rate_c = np.where(s.total_c > 0, s.good_c / np.maximum(s.total_c, 1), np.nan)
    trials = len(rate_b)
    verdict = np.full(trials, INCONCLUSIVE, dtype=np.int8)
    look = np.zeros(trials, dtype=np.int64)
    full = ~(np.isnan(rate_b).any(axis=1) | np.isnan(rate_c).any(axis=1))
    for t in range(1, LOOKS + 1):  # trials with a rate in every interval: all at once
        active = np.flatnonzero(full & (verdict == INCONCLUSIVE))
        if len(active) == 0:
            break
        failed = active[_p_lower(rate_c[active, :t], rate_b[active, :t]) < HALF_ALPHA]
        verdict[failed], look[failed] = FAIL, t
    for i in np.flatnonzero(~full):  # the rest one by one, on the intervals that have a rate
        for t in range(1, LOOKS + 1):
            can, base = rate_c[i, :t], rate_b[i, :t]
            can, base = can[~np.isnan(can)], base[~np.isnan(base)]
            if len(can) and len(base) and _p_lower(can[None, :], base[None, :])[0] < HALF_ALPHA:
                verdict[i], look[i] = FAIL, t
                break
    seen = ~(np.isnan(rate_b).all(axis=1) | np.isnan(rate_c).all(axis=1))
    passed = seen & (verdict == INCONCLUSIVE)
    verdict[passed], look[passed] = PASS, LOOKS
    return Outcomes(verdict, look)


Judge = Callable[[Streams], Outcomes]
RUN: dict[str, Judge] = {"sequential": sequential_judge, "old judge": old_judge,
                         "MWU": mwu_judge}


# --- scenarios and targets --------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    text: str
    verdict: int  # the outcome counted (PASS, FAIL, INCONCLUSIVE)
    bound: float  # its share, at most or at least
    at_most: bool
    within: float | None = None  # minutes: count only decisions by then (a median target)

    def measure(self, o: Outcomes) -> tuple[int, int]:
        if self.within is not None:
            return o.decided_by(self.within), o.trials
        return o.count(self.verdict), o.trials

    def met(self, o: Outcomes) -> bool:
        k, n = self.measure(o)
        return k / n <= self.bound if self.at_most else k / n >= self.bound


@dataclass(frozen=True)
class Scenario:
    name: str
    rate: float  # req/s per variant
    good_b: float
    good_c: float
    targets: tuple[Target, ...]
    trials: int = TRIALS


def _fails_at_most(bound: float) -> Target:
    return Target(f"false failures ≤ {bound:.0%}", FAIL, bound, at_most=True)


def _share(text: str, verdict: int, bound: float, at_most: bool = False) -> Target:
    return Target(text, verdict, bound, at_most)


def _median_within(minutes: float) -> Target:
    return Target(f"median decision ≤ {minutes:g} min (decided by then ≥ 50%)", PASS, 0.5,
                  at_most=False, within=minutes)


SCENARIOS = (
    Scenario("A/A 99%, 2 req/s", 2, 0.99, 0.99, (_fails_at_most(0.01),), AA_TRIALS),
    Scenario("A/A 99%, 10 req/s", 10, 0.99, 0.99,
             (_fails_at_most(0.01), _share("pass by the deadline ≥ 90%", PASS, 0.9)), AA_TRIALS),
    Scenario("99% → 98%, 1 req/s", 1, 0.99, 0.98,
             (_share("pass ≤ 5%", PASS, 0.05, at_most=True),)),
    Scenario("99% → 98%, 2 req/s", 2, 0.99, 0.98,
             (_share("pass ≤ 5%", PASS, 0.05, at_most=True),)),
    Scenario("99% → 98%, 10 req/s", 10, 0.99, 0.98,
             (_share("pass ≤ 5%", PASS, 0.05, at_most=True),
              _share("fail by the deadline ≥ 80%", FAIL, 0.8))),
    Scenario("99% → 95%, 2 req/s", 2, 0.99, 0.95,
             (_share("fail ≥ 95%", FAIL, 0.95), _median_within(10))),
    Scenario("10% → 20% good, 2 req/s", 2, 0.10, 0.20,
             (_share("pass ≥ 95%", PASS, 0.95), _median_within(10))),
    Scenario("20% → 10% good, 2 req/s", 2, 0.20, 0.10, (_share("fail ≥ 95%", FAIL, 0.95),)),
    Scenario("no traffic, 0 req/s", 0, 0.99, 0.99,
             (_share("inconclusive 100%", INCONCLUSIVE, 1.0),)),
)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _minutes(x: float) -> str:
    return f">{LOOKS * INTERVAL / 60:g}" if math.isinf(x) else f"{x:g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


# --- the report -------------------------------------------------------------------------------

def run_scenarios() -> dict[str, dict[str, Outcomes]]:
    print("## (1) Whole analyses, look by look (interval 30 s, deadline 30 min)\n")
    print("Time to decision: the time by which 50% / 90% of ALL analyses had a pass or fail "
          "(inconclusive ones count as never).\n")
    print("| scenario | judge | trials | pass | fail | inconclusive | 50% decided by (min) "
          "| 90% decided by (min) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    results: dict[str, dict[str, Outcomes]] = {}
    for seed, scenario in enumerate(SCENARIOS, start=1):
        streams = simulate(seed, scenario.trials, scenario.rate, scenario.good_b,
                           scenario.good_c)
        results[scenario.name] = {}
        for name in JUDGES:
            trials = scenario.trials if name == "sequential" else min(OTHER_TRIALS,
                                                                      scenario.trials)
            o = RUN[name](streams.head(trials))
            results[scenario.name][name] = o
            print(f"| {scenario.name} | {name} | {o.trials:,} | {_pct(o.share(PASS))} | "
                  f"{_pct(o.share(FAIL))} | {_pct(o.share(INCONCLUSIVE))} | "
                  f"{_minutes(o.minutes_until(0.5))} | {_minutes(o.minutes_until(0.9))} |")
    return results


def _measured(target: Target, o: Outcomes) -> str:
    k, n = target.measure(o)
    return f"{_pct(k / n)}{'' if target.met(o) else ' ✗'}"


def report_targets(results: dict[str, dict[str, Outcomes]]) -> list[str]:
    print("\n## (2) The sequential judge against its targets\n")
    print("The old judge's and MWU's figures on the same target (fewer trials) are for "
          "comparison; ✗ marks a miss.\n")
    print("| scenario | target | sequential | Wilson 95% | 50% decided by (min) | met "
          "| old judge | MWU |")
    print("| --- | --- | ---: | --- | ---: | :---: | ---: | ---: |")
    missed = []
    for scenario in SCENARIOS:
        found = results[scenario.name]
        o = found["sequential"]
        for target in scenario.targets:
            k, n = target.measure(o)
            low, high = wilson(k, n)
            ok = target.met(o)
            if not ok:
                missed.append(f"{scenario.name}: {target.text}: measured {_pct(k / n)}")
            others = " | ".join(_measured(target, found[name]) for name in JUDGES[1:])
            print(f"| {scenario.name} | {target.text} | {_pct(k / n)} ({k:,}/{n:,}) | "
                  f"[{_pct(low)}, {_pct(high)}] | {_minutes(o.minutes_until(0.5))} | "
                  f"{'✓' if ok else '✗'} | {others} |")
    return missed


def report_traffic() -> None:
    print(f"\n## (3) Traffic for a {TARGET_POWER:.0%}-power decision on 99% → 98% "
          f"({GRID_TRIALS} trials per rate and judge)\n")
    print("Each cell: regression failed by the deadline / regression passed / A/A (99% vs 99%) "
          "failed, at that rate per variant.\n")
    print("| req/s per variant | " + " | ".join(JUDGES) + " |")
    print("| ---: | " + " | ".join("---" for _ in JUDGES) + " |")
    first: dict[str, float | None] = dict.fromkeys(JUDGES)
    cost: dict[str, tuple[float, float, float]] = {}
    for i, rate in enumerate(GRID):
        regression = simulate(100 + i, GRID_TRIALS, rate, 0.99, 0.98)
        aa = simulate(200 + i, GRID_TRIALS, rate, 0.99, 0.99)
        cells = []
        for name in JUDGES:
            r, a = RUN[name](regression), RUN[name](aa)
            cells.append(f"{_pct(r.share(FAIL))} / {_pct(r.share(PASS))} / {_pct(a.share(FAIL))}")
            if first[name] is None and r.share(FAIL) >= TARGET_POWER:
                first[name], cost[name] = rate, (r.share(PASS), a.share(FAIL), a.share(PASS))
        print(f"| {rate:g} | " + " | ".join(cells) + " |")
    print(f"\n| judge | smallest grid rate failing ≥ {TARGET_POWER:.0%} of 99% → 98% | "
          "regression passed there | A/A failed there | A/A passed there |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in JUDGES:
        needed = first[name]
        if needed is None:
            print(f"| {name} | > {GRID[-1]:g} req/s | n/a | n/a | n/a |")
        else:
            passed, aa_failed, aa_passed = cost[name]
            print(f"| {name} | {needed:g} req/s ({needed * LOOKS * INTERVAL:,.0f} requests per "
                  f"variant in 30 min) | {_pct(passed)} | {_pct(aa_failed)} | "
                  f"{_pct(aa_passed)} |")


def main() -> None:
    started = time.monotonic()
    print("# Sequential judge quality: whole analyses of simulated canaries\n")
    print(f"One critical ratio metric (success, higher is better). Every look (every {INTERVAL} "
          f"s, {LOOKS} looks) each variant gets Poisson(rate * {INTERVAL} s) requests, good ones "
          "Binomial(n, p). The three judges read the same streams: **sequential** (new, "
          "tolerance 0.005, all data since look 1), **old judge** (Fisher on the last "
          f"{WINDOW} intervals, first pass or fail ends it), **MWU** (Kayenta-style, "
          "per-interval rates since look 1, fails at the first p < 1%, passes at the deadline "
          "otherwise).\n")
    results = run_scenarios()
    missed = report_targets(results)
    report_traffic()
    if missed:
        print("\nTargets missed by the sequential judge:")
        for line in missed:
            print(f"- {line}")
    print(f"\nwall time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
