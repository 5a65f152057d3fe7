"""Recorded analyses: the `gitops-canary replay` format, read and written, and the replay.

A recorded analysis is what the controller saw of one canary, one element per look, in the
form the README documents (keep it stable: backtests depend on it):

    {"interval": 30, "deadline": 1800, "thresholds": {"pass": 95, "marginal": 75},
     "metrics": [{"name": "success", "kind": "ratio", "direction": "higher",
                  "tolerance": 0.005, "critical": true, "weight": 1,
                  "series": [{"baseline": {"good": 97, "total": 98},
                              "canary": {"good": 95, "total": 97}}]}]}

Each `series` element is one interval's increments. A histogram metric has an `objective`
(seconds) and each side is its cumulative bucket counts, `{"0.1": 80, "0.25": 97, "+Inf": 98}`;
a samples metric's side is a list of values. `null` is no data for that interval.
The replay runs the controller's own decision (`sequential.assess`) after each element and
stops at the first decision, or at the deadline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from controller.domain import sequential
from controller.domain.judge import counts_input, samples_input, thresholds_input
from controller.domain.policy import _Fields, _kind
from controller.domain.sequential import Buckets, Counts, Side, Spec, Step, Verdict
from controller.errors import InputError

MAX_LOOKS = 360  # kept in a record; beyond, neighbouring looks merge (see Recorded.bounded)


@dataclass(frozen=True)
class Recorded:
    """One analysis: its settings, its metrics, and each metric's steps so far."""

    interval: int = 30
    deadline: int = 1800
    pass_score: float = 95.0
    marginal_score: float = 75.0
    specs: tuple[Spec, ...] = ()
    series: tuple[tuple[Step, ...], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # not replayed

    def add(self, steps: tuple[Step, ...]) -> Recorded:
        """With one more look: `steps[i]` is metric i's increments."""
        return Recorded(self.interval, self.deadline, self.pass_score, self.marginal_score,
                        self.specs, tuple((*old, new) for old, new in
                                          zip(self.series, steps, strict=True)), self.extra)

    def bounded(self, limit: int = MAX_LOOKS) -> Recorded:
        """At most `limit` looks kept: beyond, neighbours merge in pairs (and the interval
        doubles). Their sum, and so today's decision, is unchanged; a record stays small
        however long the deadline."""
        recorded = self
        while recorded.looks > limit:
            recorded = Recorded(
                recorded.interval * 2, recorded.deadline, recorded.pass_score,
                recorded.marginal_score, recorded.specs,
                tuple(tuple(_merge(steps[i:i + 2]) for i in range(0, len(steps), 2))
                      for steps in recorded.series), recorded.extra)
        return recorded

    @property
    def looks(self) -> int:
        return len(self.series[0]) if self.series else 0

    def assess(self, detail: bool = True, looks: int | None = None) -> sequential.Assessment:
        cut = self.looks if looks is None else looks
        return sequential.assess(self.specs, [s[:cut] for s in self.series], self.pass_score,
                                 self.marginal_score, detail=detail)


def _merge(steps: tuple[Step, ...]) -> Step:
    return Step(*(_add([getattr(step, variant) for step in steps])
                  for variant in ("baseline", "canary")))


def _add(sides: list[Side]) -> Side:
    counts = [side for side in sides if isinstance(side, Counts)]
    if counts:
        return Counts(sum(c.good for c in counts), sum(c.total for c in counts))
    summed: dict[float, float] = {}
    values: list[float] = []
    for side in sides:
        for item in side if isinstance(side, tuple) else ():
            if isinstance(item, tuple):
                summed[item[0]] = summed.get(item[0], 0.0) + item[1]
            elif isinstance(item, int | float):
                values.append(float(item))
    if summed:
        return tuple(sorted(summed.items()))
    return tuple(values) if any(side is not None for side in sides) else None


def resume(text: str | None, fresh: Recorded) -> Recorded:
    """The evidence a record keeps, when it was gathered for the same analysis as `fresh`
    (same metrics, same settings); otherwise `fresh`: the analysis starts over."""
    if not text:
        return fresh
    try:
        stored = parse(json.loads(text), "the record's evidence")
    except (InputError, ValueError):
        return fresh
    same = (stored.specs, stored.deadline, stored.pass_score, stored.marginal_score) == (
        fresh.specs, fresh.deadline, fresh.pass_score, fresh.marginal_score)
    return Recorded(stored.interval, stored.deadline, stored.pass_score, stored.marginal_score,
                    stored.specs, stored.series, fresh.extra) if same else fresh


def replay(recorded: Recorded) -> dict[str, object]:
    """The decision a controller with this analysis would have made, and when."""
    last = math.ceil(recorded.deadline / recorded.interval)
    decided_at: int | None = None
    looks = 0
    for look in range(1, recorded.looks + 1):
        looks = look
        if recorded.assess(detail=False, looks=look).verdict is not Verdict.INCONCLUSIVE \
                or look >= last:
            decided_at = look * recorded.interval
            break
    assessment = recorded.assess(looks=looks)
    out = sequential.to_json(assessment)
    # A marginal verdict (the score between the thresholds) is a failure status: "fail".
    verdict = "fail" if assessment.verdict is Verdict.MARGINAL else assessment.verdict.value
    return {"verdict": verdict, "decided_at": decided_at, "looks": looks,
            "score": out["score"], "metrics": out["metrics"],
            "summary": sequential.summary(assessment, final=decided_at is not None)}


# --- reading ----------------------------------------------------------------------------------

def parse(data: object, source: str) -> Recorded:
    top = _Fields(source, data, "")
    interval = _seconds(top, "interval", 30)
    deadline = _seconds(top, "deadline", 1800)
    pass_score, marginal_score = thresholds_input(source, top.take("thresholds", dict, {}))
    raw = top.take("metrics", list, None)
    if not raw:
        raise InputError(source, "metrics", "needs at least one metric")
    extra = {key: top.data.pop(key) for key in ("app", "revision", "started") if key in top.data}
    top.done(("interval", "deadline", "thresholds", "metrics", "app", "revision", "started"))
    specs, series = [], []
    for i, item in enumerate(raw):
        spec, steps = _metric(source, item, f"metrics[{i}]")
        specs.append(spec)
        series.append(steps)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(source, "metrics", f"metric names must be unique: {names}")
    lengths = {len(s) for s in series}
    if len(lengths) > 1:
        raise InputError(source, "metrics", f"every metric needs a series of the same length; "
                                            f"got {[len(s) for s in series]}")
    return Recorded(interval, deadline, pass_score, marginal_score, tuple(specs),
                    tuple(series), extra)


def _seconds(fields: _Fields, key: str, default: int) -> int:
    value = fields.take(key, (int, float), default)
    if not (0 < value < math.inf) or not float(value).is_integer():
        raise fields.fail(key, f"must be a positive whole number of seconds; got {value!r}")
    return int(value)


def _metric(source: str, data: object, path: str) -> tuple[Spec, tuple[Step, ...]]:
    fields = _Fields(source, data, path)
    name = fields.take("name", str, "")
    if not name:
        raise fields.fail("name", "is required")
    kind = fields.choice("kind", sequential.KINDS, "ratio")
    direction = fields.choice("direction", sequential.DIRECTIONS,
                              "lower" if kind == "histogram" else "higher")
    if kind == "histogram" and direction != "lower":
        raise fields.fail("direction", "a histogram measures latency: lower is better")
    tolerance = fields.take("tolerance", (int, float), None)
    if tolerance is not None and not 0 <= tolerance < math.inf:
        raise fields.fail("tolerance", "must be a number, 0 or more")
    weight = float(fields.take("weight", (int, float), 1.0))
    if not 0 < weight < math.inf:
        raise fields.fail("weight", "must be a positive number")
    objective = fields.take("objective", (int, float), None)
    if kind == "histogram" and (objective is None or not 0 < objective < math.inf):
        raise fields.fail("objective", "a histogram metric needs its latency objective in "
                                       "seconds (a bucket bound, e.g. 0.25)")
    if kind != "histogram" and objective is not None:
        raise fields.fail("objective", "only a histogram metric has an objective")
    critical = fields.take("critical", bool, False)
    raw_series = fields.take("series", list, None)
    if raw_series is None:
        raise fields.fail("series", "is required: one element per look")
    fields.done(("name", "kind", "direction", "tolerance", "critical", "weight", "objective",
                 "series"))
    spec = Spec(name, kind, direction, None if tolerance is None else float(tolerance),
                critical, weight, None if objective is None else float(objective))
    steps = []
    for i, element in enumerate(raw_series):
        where = f"{path}.series[{i}]"
        step = _Fields(source, element, where)
        sides = []
        for variant in ("baseline", "canary"):
            if variant not in step.data:
                raise step.fail(variant, "is required (null means no data)")
            value = step.data.pop(variant)
            sides.append(None if value is None else _side(source, kind, value,
                                                          f"{where}.{variant}"))
        step.done(("baseline", "canary"))
        steps.append(Step(sides[0], sides[1]))
    return spec, tuple(steps)


def _side(source: str, kind: str, data: object, path: str) -> Side:
    if kind == "ratio":
        return counts_input(source, data, path)
    if kind == "histogram":
        return _buckets(source, data, path)
    return samples_input(source, data, path)


def _buckets(source: str, data: object, path: str) -> Buckets:
    if not isinstance(data, dict) or not data:
        raise InputError(source, path, f"must be a mapping of bucket bounds to cumulative "
                                       f"counts, e.g. {{\"0.25\": 97, \"+Inf\": 98}}; got "
                                       f"{_kind(data)}")
    buckets = []
    for key, count in data.items():
        try:
            le = float(key)
        except (TypeError, ValueError):
            raise InputError(source, f"{path}.{key}", "a bucket bound must be a number or "
                                                      "+Inf") from None
        if math.isnan(le) or isinstance(count, bool) or not isinstance(count, int | float) \
                or not (0 <= count < math.inf):
            raise InputError(source, f"{path}.{key}", f"must be a count, 0 or more; got "
                                                      f"{count!r}")
        buckets.append((le, float(count)))
    buckets.sort()
    if buckets[-1][0] != math.inf:
        raise InputError(source, path, "needs the +Inf bucket (the total)")
    for (le, count), (_, before) in zip(buckets[1:], buckets, strict=False):
        if count < before:
            raise InputError(source, f"{path}.{_bound(le)}",
                             "bucket counts are cumulative: never less than a lower bucket's")
    return tuple(buckets)


# --- writing ----------------------------------------------------------------------------------

def _bound(le: float) -> str:
    return "+Inf" if le == math.inf else f"{le:g}"


def side_json(side: Side) -> object:
    if side is None:
        return None
    if isinstance(side, Counts):
        return {"good": side.good, "total": side.total}
    if side and isinstance(side[0], tuple):
        return {_bound(le): round(count) for le, count in side}
    return list(side)


def to_document(recorded: Recorded) -> dict[str, object]:
    """The replay input that reproduces this analysis."""
    return {
        **recorded.extra,
        "interval": recorded.interval, "deadline": recorded.deadline,
        "thresholds": {"pass": recorded.pass_score, "marginal": recorded.marginal_score},
        "metrics": [
            {"name": spec.name, "kind": spec.kind, "direction": spec.direction,
             "tolerance": spec.allowed, "critical": spec.critical, "weight": spec.weight,
             **({"objective": spec.objective} if spec.objective is not None else {}),
             "series": [{"baseline": side_json(step.baseline), "canary": side_json(step.canary)}
                        for step in steps]}
            for spec, steps in zip(recorded.specs, recorded.series, strict=True)
        ],
    }
