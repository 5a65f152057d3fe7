"""The sequential judge: anytime-valid decisions on evidence that accumulates (SPEC §4).

The controller looks at a canary every interval, up to a deadline: sixty looks in thirty
minutes by default. A fixed-sample test re-run at every look fails healthy canaries far more
often than its level says, and passes whatever it cannot yet tell apart. So each metric is
judged on everything seen since both variants became ready, with boundaries that hold over
all looks together, however many there are:

- **fail** as soon as the evidence that the canary is worse reaches 1/alpha_fail: the e-value
  `inf over "not worse" of M_t`, where M_t is the normal-mixture martingale of the difference
  below. By Ville's inequality a canary that is not worse ever fails with probability at most
  alpha_fail, split evenly across the metrics (Bonferroni), so the verdict keeps alpha_fail.
- **pass** only when the confidence sequence at level alpha_pass lies wholly on the good side of
  `-tolerance` (non-inferiority): a canary worse by more than the tolerance ever passes with
  probability at most alpha_pass. Absence of evidence is never a pass.
- otherwise the metric is undecided and the analysis goes on; at the deadline the verdict is
  inconclusive, with the traffic a decision would have needed.

The difference: for ratio and histogram metrics, the good shares `p_c - p_b` (a histogram's
good requests are those at or below its latency `objective`, read exactly from the bucket
counts); for samples metrics, the means of the per-look values. Its estimate has variance
`V = v_c/n_c + v_b/n_b`; with the information `I = 1/V` and `S = I (estimate - delta)`,
the mixture of Gaussian likelihood ratios over the drift, with N(0, tau^2) for each of a few
scales tau (weights w),

    M_t(delta) = sum_k w_k (1 + tau_k^2 I)^(-1/2) exp(tau_k^2 S^2 / (2 (1 + tau_k^2 I)))

is a nonnegative martingale under `delta` in the Gaussian limit (Robbins' normal mixture;
Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Ann. Statist. 2021; as an asymptotic confidence sequence with a plug-in variance:
Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and
asymptotic confidence sequences", Ann. Statist. 2024). The confidence sequence is
`{delta: M_t(delta) < 1/alpha}`. The scales are multiples of the tolerance, most weight on the
tolerance itself: the boundary is tightest where a pass is decided, and the larger scales let a
big regression (or the seed's 10% -> 20%) be decided within minutes.

Shares are smoothed for the variance only, `(good + 1/2) / (total + 1)`, so that zero errors
on one side do not claim zero variance. Fewer than MIN_REQUESTS per variant (MIN_SAMPLES for
samples metrics) is no data yet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

KINDS = ("ratio", "histogram", "samples")
DIRECTIONS = ("higher", "lower", "either")
ALPHA_FAIL = 0.01  # a canary that is not worse fails at most this often (the whole verdict)
ALPHA_PASS = 0.05  # a canary worse by more than its tolerance passes at most this often
# The tolerance when canary.yaml gives none: 0.5 points of a share (ratio: of the good share;
# histogram: of the share within the objective); samples: 10% of the baseline's mean.
DEFAULT_TOLERANCE = {"ratio": 0.005, "histogram": 0.005, "samples": 0.1}
MIN_REQUESTS = 30  # per variant, ratio and histogram
MIN_SAMPLES = 5  # per variant, samples
SCALES = ((1.0, 0.6), (3.0, 0.1), (10.0, 0.1), (30.0, 0.1), (100.0, 0.1))  # (x tolerance, w)


class Result(StrEnum):
    PASS = "Pass"  # noqa: S105 (a result, not a password)
    HIGH = "High"  # shown higher than the baseline (a failure when lower is better)
    LOW = "Low"
    UNDECIDED = "Undecided"  # neither shown worse nor shown no worse yet
    NODATA = "NoData"


class Verdict(StrEnum):
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    MARGINAL = "marginal"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"  # not decided yet; at the deadline, final


@dataclass(frozen=True)
class Counts:
    good: int
    total: int


Buckets = tuple[tuple[float, float], ...]  # (upper bound `le`, cumulative count), ascending
Side = Counts | Buckets | tuple[float, ...] | None  # one variant's data of one interval


@dataclass(frozen=True)
class Step:
    """One interval's increments of one metric: what each variant added since the last look."""

    baseline: Side
    canary: Side


@dataclass(frozen=True)
class Spec:
    """A metric as the judge sees it."""

    name: str
    kind: str = "ratio"
    direction: str = "higher"  # the way the metric is better; histograms: always "lower"
    tolerance: float | None = None  # None: DEFAULT_TOLERANCE of the kind
    critical: bool = False
    weight: float = 1.0
    objective: float | None = None  # histogram: seconds; good requests take at most this

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.direction not in DIRECTIONS:
            raise ValueError(f"{self.name}: kind {self.kind!r}, direction {self.direction!r}")
        if not (self.weight > 0 and (self.tolerance is None or self.tolerance >= 0)):
            raise ValueError(f"{self.name}: weight must be > 0 and tolerance >= 0")
        if self.kind == "histogram" and (self.objective is None or self.objective <= 0):
            raise ValueError(f"{self.name}: a histogram metric needs an objective > 0")

    @property
    def allowed(self) -> float:
        return DEFAULT_TOLERANCE[self.kind] if self.tolerance is None else self.tolerance


@dataclass(frozen=True)
class Evidence:
    """What a metric's accumulated data shows."""

    name: str
    kind: str
    result: Result
    critical: bool
    weight: float
    baseline: float | None = None  # good share (ratio, histogram) or mean (samples)
    canary: float | None = None
    n_baseline: int = 0  # requests (ratio, histogram) or samples
    n_canary: int = 0
    estimate: float | None = None  # canary - baseline
    lower: float | None = None  # the confidence sequence at level alpha_pass
    upper: float | None = None
    e_value: float | None = None  # evidence that the canary is worse
    threshold: float = 1 / ALPHA_FAIL  # e_value at or above this fails the metric
    tolerance: float = 0.0  # in the estimate's units (samples: relative, times the mean)
    needed: float | None = None  # times the information a decision would need (None: unknown)
    quantiles: tuple[float | None, float | None] | None = None  # histogram: p99 base, canary

    @property
    def failed(self) -> bool:
        return self.result in (Result.HIGH, Result.LOW)


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    score: float
    metrics: tuple[Evidence, ...]


def assess(specs: Sequence[Spec], series: Sequence[Sequence[Step]], pass_score: float = 95,
           marginal_score: float = 75, alpha_fail: float = ALPHA_FAIL,
           alpha_pass: float = ALPHA_PASS, detail: bool = True) -> Assessment:
    """The verdict on all the steps so far (`series[i]` holds metric i's steps, in order).
    Without `detail` the confidence bounds and the traffic needed are left out (a replay
    needs them only at its last look)."""
    if len(series) != len(specs):
        raise ValueError(f"{len(specs)} metrics, {len(series)} series")
    if not (0 < alpha_fail < 1 and 0 < alpha_pass < 1):
        raise ValueError("alpha_fail and alpha_pass must be in (0, 1)")
    each = alpha_fail / max(1, len(specs))
    metrics = tuple(evaluate(spec, steps, each, alpha_pass, detail) for spec, steps in
                    zip(specs, series, strict=True))
    return Assessment(*_verdict(metrics, pass_score, marginal_score), metrics)


def _verdict(metrics: Sequence[Evidence], pass_score: float,
             marginal_score: float) -> tuple[Verdict, float]:
    total = sum(m.weight for m in metrics)
    if not metrics or total <= 0:
        return Verdict.INCONCLUSIVE, 0.0
    passing = sum(m.weight for m in metrics if m.result is Result.PASS)
    failing = sum(m.weight for m in metrics if m.failed)
    score = 100 * passing / total
    if any(m.failed and m.critical for m in metrics):
        return Verdict.FAIL, score  # decided: no later look can undo it
    if 100 * (total - failing) / total < marginal_score:
        return Verdict.FAIL, score  # even if every undecided metric passed
    if any(m.result in (Result.UNDECIDED, Result.NODATA) for m in metrics):
        return Verdict.INCONCLUSIVE, score
    if score >= pass_score:
        return Verdict.PASS, score
    return (Verdict.MARGINAL if score >= marginal_score else Verdict.FAIL), score


# --- one metric -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sides:
    """Accumulated data of both variants, reduced to what the test needs."""

    value_b: float
    value_c: float
    var_b: float  # per observation
    var_c: float
    n_b: int
    n_c: int


def evaluate(spec: Spec, steps: Sequence[Step], alpha_fail: float,
             alpha_pass: float = ALPHA_PASS, detail: bool = True) -> Evidence:
    """The evidence of one metric, from all its steps (alpha_fail: this metric's share)."""
    base = Evidence(spec.name, spec.kind, Result.NODATA, spec.critical, spec.weight,
                    threshold=1 / alpha_fail)
    sides = _samples(steps) if spec.kind == "samples" else _shares(spec, steps)
    quantiles = _quantiles(steps) if spec.kind == "histogram" and detail else None
    if sides is None:
        value_b, value_c, n_b, n_c = _partial(spec, steps)
        return dataclasses.replace(base, baseline=value_b, canary=value_c, n_baseline=n_b,
                                   n_canary=n_c, quantiles=quantiles)
    estimate = sides.value_c - sides.value_b
    unit = (abs(sides.value_b) or 1.0) if spec.kind == "samples" else 1.0  # samples: relative
    tolerance = spec.allowed * unit
    scale = tolerance or DEFAULT_TOLERANCE[spec.kind] * unit  # the mixture's: never 0
    variance = sides.var_c / sides.n_c + sides.var_b / sides.n_b
    info = 1 / variance if variance > 0 else math.inf
    sign = _bad_sign(spec)  # +1: higher is worse, -1: lower is worse, 0: either way
    e_worse = _e_worse(estimate, info, scale, sign)
    if e_worse >= 1 / alpha_fail:
        result = Result.HIGH if estimate > 0 else Result.LOW
    elif _shown_within(estimate, info, scale, tolerance, sign, alpha_pass):
        result = Result.PASS
    else:
        result = Result.UNDECIDED
    lower = upper = needed = None
    if detail:
        radius = _radius(info, scale, alpha_pass)
        lower, upper = estimate - radius, estimate + radius
        if result is Result.UNDECIDED:
            needed = _needed(estimate, info, scale, tolerance, sign, alpha_fail, alpha_pass)
    return Evidence(
        spec.name, spec.kind, result, spec.critical, spec.weight, sides.value_b, sides.value_c,
        sides.n_b, sides.n_c, estimate, lower, upper, e_worse, 1 / alpha_fail, tolerance,
        needed, quantiles)


def _bad_sign(spec: Spec) -> int:
    if spec.kind == "histogram":
        return -1  # the share within the objective: lower is worse
    return {"higher": -1, "lower": 1, "either": 0}[spec.direction]


def _counts(spec: Spec, side: Side) -> tuple[int, int] | None:
    """(good, total) of one step's side, when usable."""
    if spec.kind == "ratio":
        if not isinstance(side, Counts):
            return None
        return (side.good, side.total) if 0 <= side.good <= side.total else None
    if not isinstance(side, tuple) or not side or not isinstance(side[0], tuple):
        return None
    buckets: Buckets = side
    total = next((count for le, count in buckets if le == math.inf), None)
    objective = spec.objective or 0.0
    good = max((count for le, count in buckets if le <= objective), default=0.0)
    if total is None or not 0 <= good <= total:
        return None
    return round(good), round(total)


def _sums(spec: Spec, steps: Sequence[Step]) -> tuple[int, int, int, int]:
    good_b = total_b = good_c = total_c = 0
    for step in steps:
        base, can = _counts(spec, step.baseline), _counts(spec, step.canary)
        if base is not None:
            good_b, total_b = good_b + base[0], total_b + base[1]
        if can is not None:
            good_c, total_c = good_c + can[0], total_c + can[1]
    return good_b, total_b, good_c, total_c


def _shares(spec: Spec, steps: Sequence[Step]) -> _Sides | None:
    good_b, total_b, good_c, total_c = _sums(spec, steps)
    if min(total_b, total_c) < MIN_REQUESTS:
        return None
    smooth_b, smooth_c = (good_b + 0.5) / (total_b + 1), (good_c + 0.5) / (total_c + 1)
    return _Sides(good_b / total_b, good_c / total_c, smooth_b * (1 - smooth_b),
                  smooth_c * (1 - smooth_c), total_b, total_c)


def _values(steps: Sequence[Step], variant: str) -> list[float]:
    found = []
    for step in steps:
        side = getattr(step, variant)
        if isinstance(side, tuple):
            found += [float(v) for v in side if isinstance(v, int | float) and math.isfinite(v)]
    return found


def _samples(steps: Sequence[Step]) -> _Sides | None:
    base, can = _values(steps, "baseline"), _values(steps, "canary")
    if min(len(base), len(can)) < MIN_SAMPLES:
        return None
    mean_b, mean_c = sum(base) / len(base), sum(can) / len(can)
    var_b = sum((x - mean_b) ** 2 for x in base) / (len(base) - 1)
    var_c = sum((x - mean_c) ** 2 for x in can) / (len(can) - 1)
    floor = (1e-6 * max(abs(mean_b), abs(mean_c), 1e-9)) ** 2  # identical values: not certainty
    return _Sides(mean_b, mean_c, max(var_b, floor), max(var_c, floor), len(base), len(can))


def _partial(spec: Spec, steps: Sequence[Step]) -> tuple[float | None, float | None, int, int]:
    """What there is of too little data: the values and counts, for the status."""
    if spec.kind == "samples":
        base, can = _values(steps, "baseline"), _values(steps, "canary")
        return (sum(base) / len(base) if base else None, sum(can) / len(can) if can else None,
                len(base), len(can))
    good_b, total_b, good_c, total_c = _sums(spec, steps)
    return (good_b / total_b if total_b else None, good_c / total_c if total_c else None,
            total_b, total_c)


# --- the boundary -----------------------------------------------------------------------------

def _log_mixture(s: float, info: float, scale: float) -> float:
    """log M for |S| = s at information `info` (the mixture over SCALES times `scale`)."""
    terms = []
    for factor, weight in SCALES:
        t2i = (factor * scale) ** 2 * info
        terms.append(math.log(weight) - 0.5 * math.log1p(t2i)
                     + (factor * scale) ** 2 * s * s / (2 * (1 + t2i)))
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _log_m(estimate: float, delta: float, info: float, scale: float) -> float:
    """log M_t(delta): the evidence against the difference being `delta`."""
    if math.isinf(info):
        return math.inf if estimate != delta else -math.inf
    return _log_mixture(info * abs(estimate - delta), info, scale)


def _e_worse(estimate: float, info: float, scale: float, sign: int) -> float:
    """inf of M_t(delta) over the deltas where the canary is not worse (delta on the good side
    of 0, or 0 itself when either way is worse)."""
    if sign != 0 and estimate * sign <= 0:
        return 0.0 if math.isinf(info) else math.exp(_log_m(estimate, estimate, info, scale))
    log_e = _log_m(estimate, 0.0, info, scale)
    return math.inf if log_e > 700 else math.exp(log_e)


def _shown_within(estimate: float, info: float, scale: float, tolerance: float, sign: int,
                  alpha: float) -> bool:
    """The confidence sequence excludes every delta worse than the tolerance."""
    edges = [(-tolerance, -1), (tolerance, 1)] if sign == 0 else [(sign * tolerance, sign)]
    for edge, bad in edges:
        if bad * (estimate - edge) >= 0:
            return False  # the estimate itself is beyond the tolerance
        if _log_m(estimate, edge, info, scale) < math.log(1 / alpha):
            return False
    return True


def _radius(info: float, scale: float, alpha: float) -> float:
    """Half-width of the confidence sequence at level alpha: the |estimate - delta| where
    M_t reaches 1/alpha."""
    if math.isinf(info):
        return 0.0
    target, low, high = math.log(1 / alpha), 0.0, 1.0
    while _log_mixture(info * high, info, scale) < target:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _log_mixture(info * middle, info, scale) < target \
            else (low, middle)
    return high


def _needed(estimate: float, info: float, scale: float, tolerance: float, sign: int,
            alpha_fail: float, alpha_pass: float) -> float | None:
    """How many times today's information a decision would need, if the estimate held: the
    radius must shrink below the distance to the nearest decision."""
    worse = sign * estimate > 0 if sign else estimate != 0
    gaps = [(abs(estimate), alpha_fail)] if worse else []
    within = tolerance - (sign * estimate if sign else abs(estimate))
    if within > 0:
        gaps.append((within, alpha_pass))
    if not gaps or math.isinf(info):
        return None
    best = math.inf
    for gap, alpha in gaps:
        low, high = 1.0, 2.0
        while _radius(info * high, scale, alpha) > gap:
            high *= 2
            if high > 1e9:
                break
        else:
            for _ in range(40):
                middle = math.sqrt(low * high)
                low, high = (middle, high) if _radius(info * middle, scale, alpha) > gap \
                    else (low, middle)
            best = min(best, high)
    return None if math.isinf(best) else best


def _quantiles(steps: Sequence[Step]) -> tuple[float | None, float | None]:
    """p99 of each variant from its summed buckets (linear within a bucket, as
    histogram_quantile does): for the status, never for the decision."""
    out: list[float | None] = []
    for variant in ("baseline", "canary"):
        summed: dict[float, float] = {}
        for step in steps:
            side = getattr(step, variant)
            if isinstance(side, tuple) and side and isinstance(side[0], tuple):
                for le, count in side:
                    summed[le] = summed.get(le, 0.0) + count
        out.append(quantile(0.99, sorted(summed.items())))
    return out[0], out[1]


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    previous_le, previous_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return previous_le  # beyond the last finite bound: that bound, at least
            if count == previous_count:
                return le
            return previous_le + (le - previous_le) * (rank - previous_count) / (
                count - previous_count)
        previous_le, previous_count = le, count
    return None


# --- what it says -----------------------------------------------------------------------------

def _figure(x: float | None) -> float | None:
    """Six significant digits for JSON; NaN and infinity are not JSON, so None."""
    return float(f"{x:.6g}") if x is not None and math.isfinite(x) else None


def to_json(a: Assessment) -> dict[str, object]:
    return {
        "verdict": a.verdict.value,
        "score": _figure(a.score),
        "metrics": [
            {"name": m.name, "kind": m.kind, "result": m.result.value,
             "baseline": _figure(m.baseline), "canary": _figure(m.canary),
             "requests" if m.kind != "samples" else "samples": [m.n_baseline, m.n_canary],
             "estimate": _figure(m.estimate), "lower": _figure(m.lower),
             "upper": _figure(m.upper), "level": 1 - ALPHA_PASS,
             "e_value": _figure(m.e_value) if m.e_value is None or math.isfinite(m.e_value)
             else 1e300, "threshold": _figure(m.threshold), "tolerance": _figure(m.tolerance),
             "needed": _figure(m.needed), "critical": m.critical, "weight": _figure(m.weight),
             **({"p99": [_figure(q) for q in m.quantiles]} if m.quantiles else {})}
            for m in a.metrics
        ],
    }


SUMMARY_LENGTH = 140  # a commit status description


def summary(a: Assessment, final: bool = False, suffix: str = "") -> str:
    """One line with the evidence, failing metrics first, e.g. 'canary 97.9% vs 99.0% good
    (4,210/4,188 req): worse, e=142 ≥ 100: fail'. `final`: the deadline has come. `suffix`
    (what happens next) always fits: the evidence is shortened for it."""
    outcome = a.verdict.value
    if a.verdict is Verdict.INCONCLUSIVE and final:
        outcome = "inconclusive at the deadline"
        needed = [m.needed for m in a.metrics if m.needed is not None]
        if needed:
            outcome += f", needs ~{max(needed):.2g}x the traffic"
    if len(a.metrics) == 1:
        line = f"{describe(a.metrics[0])}: {outcome}"
    else:
        order = sorted(a.metrics, key=lambda m: (not m.failed, m.result is Result.PASS))
        score = f", score {round(a.score, 1):g}" if 0 < a.score < 100 else ""  # weights mattered
        line = f"{outcome}{score}: " + "; ".join(
            f"{m.name} {describe(m)}" if m.failed or m is order[0]
            else f"{m.name} {_word(m)}" for m in order)
    room = SUMMARY_LENGTH - len(suffix)
    return (line if len(line) <= room else line[:room - 1] + "…") + suffix


def _word(m: Evidence) -> str:
    return {Result.PASS: "ok", Result.NODATA: "no data", Result.UNDECIDED: "undecided"}.get(
        m.result, "worse")


def describe(m: Evidence) -> str:
    """The metric's figures and what they show."""
    figures = _figures(m)
    if m.result is Result.NODATA:
        return f"{figures}: not enough data yet" if figures else "no data"
    if m.failed:
        return f"{figures}: {_worse_word(m)}, e={_e(m.e_value)} ≥ {_e(m.threshold)}"
    units = "" if m.kind == "samples" else " pts"
    bounds = "" if m.lower is None or m.upper is None else \
        f"{1 - ALPHA_PASS:.0%} CS [{_delta(m, m.lower)}, {_delta(m, m.upper)}]"
    if m.result is Result.PASS:
        return f"{figures}: no worse than {_delta(m, m.tolerance, signed=False)}" + (
            f" ({bounds})" if bounds else "")
    return f"{figures}, {bounds}{units}" if bounds else figures


def _worse_word(m: Evidence) -> str:
    if m.kind == "histogram":
        return "slower"
    return "worse"


def _figures(m: Evidence) -> str:
    n = f"{m.n_canary:,}/{m.n_baseline:,} {'samples' if m.kind == 'samples' else 'req'}"
    if m.baseline is None or m.canary is None:
        return f"({n})" if m.n_baseline or m.n_canary else ""
    if m.kind == "samples":
        return f"canary mean {m.canary:.3g} vs {m.baseline:.3g} ({n})"
    canary, baseline = _percents(m.canary, m.baseline)
    what = "good"
    if m.kind == "histogram":
        what = "fast enough"
        if m.quantiles and None not in m.quantiles:
            n += f"; p99 {m.quantiles[1]:.3g}s vs {m.quantiles[0]:.3g}s"
    return f"canary {canary} vs {baseline} {what} ({n})"


def _delta(m: Evidence, x: float, signed: bool = True) -> str:
    """A difference in the metric's units: points of a share, or the samples' own."""
    if m.kind == "samples":
        return f"{x:+.3g}" if signed else f"{x:.3g}"
    points = x * 100
    digits = 2 if abs(points) < 0.1 else 1
    return f"{points:+.{digits}f}" if signed else f"{points:.{digits}f} pts"


def _e(x: float | None) -> str:
    if x is None:
        return "?"
    if not math.isfinite(x) or x >= 1e6:
        return "1e6+" if x >= 1e6 else "?"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _percents(a: float, b: float) -> tuple[str, str]:
    """Enough decimals to show the difference: 20.1% vs 10.2%, 99.95% vs 99.90%."""
    points = abs(a - b) * 100
    digits = min(3, max(1, math.ceil(-math.log10(points)))) if points else 1
    return f"{a:.{digits}%}", f"{b:.{digits}%}"
