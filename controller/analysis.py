"""One look at a canary: what each variant added since the last look, from Prometheus.

Each metric's templates are filled per variant with `{{ window }}` = the time since the last
look (since the variants became ready, for the first), so the looks' increments add up to the
evidence since then; the judge (`domain/sequential.py`) decides on their sum. Unreachable
Prometheus or an empty result is no data for that look — never a pass. A query Prometheus
refuses is the policy's fault and raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from controller.domain.policy import Metric, Policy
from controller.domain.promql import fill, variables
from controller.domain.replay import Recorded
from controller.domain.sequential import (
    DEFAULT_TOLERANCE,
    Assessment,
    Buckets,
    Counts,
    Side,
    Spec,
    Step,
)
from controller.domain.types import Variant
from controller.edges.prometheus import Prometheus
from controller.errors import TransientError

log = logging.getLogger(__name__)


def recording(policy: Policy, app: str = "", revision: str = "") -> Recorded:
    """An analysis with no look yet, as the policy asks for it."""
    a = policy.analysis
    specs = tuple(Spec(m.name, m.kind, m.direction,
                       DEFAULT_TOLERANCE[m.kind] if m.tolerance is None else m.tolerance,
                       m.critical, m.weight, m.objective) for m in a.metrics)
    extra = {key: value for key, value in (("app", app), ("revision", revision)) if value}
    return Recorded(a.interval, a.deadline, a.pass_score, a.marginal_score, specs,
                    tuple(() for _ in specs), extra)


def _queries(prom: Prometheus, metric: Metric, values: dict[str, str],
             now: float) -> list[Callable[[], Any]]:
    """The queries one variant's side of a metric needs (a ratio: good and total)."""
    if metric.kind == "ratio":
        return [lambda: prom.scalar(fill(metric.good, values), at=now),
                lambda: prom.scalar(fill(metric.total, values), at=now)]
    if metric.kind == "histogram":
        return [lambda: prom.vector(fill(metric.query, values), at=now)]
    return [lambda: prom.scalar(fill(metric.query, values), at=now)]


def _side(metric: Metric, answers: list[Any]) -> Side:
    if metric.kind == "ratio":
        good, total = answers
        if good is None or total is None:
            return None
        # increase() extrapolates per series: round to counts, good never above total.
        counts = max(round(total), 0)
        return Counts(min(max(round(good), 0), counts), counts)
    if metric.kind == "histogram":
        return _buckets(answers[0])
    return None if answers[0] is None else (answers[0],)


def _asked(call: Callable[[], Any]) -> Any:
    """A query's answer, or the TransientError that stands for no data."""
    try:
        return call()
    except TransientError as error:
        return error


def _buckets(result: list[tuple[dict[str, str], float]]) -> Buckets | None:
    """Bucket counts `by (le)`, rounded; None without the +Inf bucket (the total)."""
    buckets: dict[float, float] = {}
    for labels, value in result:
        try:
            le = float(labels.get("le", ""))
        except ValueError:
            continue
        if not math.isnan(le):
            buckets[le] = buckets.get(le, 0.0) + max(round(value), 0)
    if math.inf not in buckets:
        return None
    ordered, highest = [], 0.0
    for le in sorted(buckets):  # extrapolation may break monotony by a request: restore it
        highest = max(highest, buckets[le])
        ordered.append((le, highest))
    return tuple(ordered)


def look(prom: Prometheus, policy: Policy, workloads: Sequence[tuple[str, str]], since: float,
         now: float, namespaces: Sequence[str] = (),
         queries: Executor | None = None) -> tuple[Step, ...]:
    """Each metric's increments of both variants over (since, now]. `{{ namespace }}` is the
    namespace the judged workloads live in (canary.yaml's when not given); for workloads in
    several, an alternation `a|b`, which templates match with `namespace=~`. With `queries`,
    every query of the look runs there at once (a ratio's good and total too)."""
    window = max(1, math.ceil(now - since))
    namespace = "|".join(sorted(set(namespaces))) or policy.namespace
    asked = [(metric, variant, _queries(prom, metric, variables(
                policy.app, namespace, str(variant), workloads, window), now))
             for metric in policy.analysis.metrics
             for variant in (Variant.BASELINE, Variant.CANARY)]
    calls = [call for _, _, queries_of in asked for call in queries_of]
    # Every query of the look at once when a pool is given; a refused query raises.
    answers = iter(list(queries.map(_asked, calls)) if queries else [_asked(c) for c in calls])
    sides: list[Side] = []
    for metric, variant, queries_of in asked:
        mine = [next(answers) for _ in queries_of]
        failed = next((a for a in mine if isinstance(a, TransientError)), None)
        if failed is not None:
            log.warning("metric %s (%s): %s: no data", metric.name, variant, failed)
            sides.append(None)
        else:
            sides.append(_side(metric, mine))
    return tuple(Step(sides[i], sides[i + 1]) for i in range(0, len(sides), 2))


@dataclass(frozen=True)
class _Running:
    key: Hashable
    until: float
    future: Future[tuple[Step, ...]]


class Looks:
    """Analysis looks in the background, so a slow Prometheus holds no reconcile: a look is
    started when an app's analysis is due and taken by a later observation of the app (the
    same reconcile's, when it ends in time). At most `workers` queries run at once, across
    all apps; `notify` is called as each look ends (the loop wakes)."""

    def __init__(self, prometheus: Prometheus, workers: int = 32,
                 notify: Callable[[], None] = lambda: None) -> None:
        self.prometheus, self.notify = prometheus, notify
        self._queries = ThreadPoolExecutor(workers, thread_name_prefix="query")
        # The looks wait on their queries: a pool of their own, or they could take every
        # worker the queries need.
        self._looks = ThreadPoolExecutor(workers, thread_name_prefix="look")
        self._running: dict[str, _Running] = {}

    def take(self, app: str, key: Hashable, policy: Policy,
             workloads: Sequence[tuple[str, str]], since: float, now: float,
             namespaces: Sequence[str]) -> tuple[tuple[Step, ...], float] | None:
        """The steps of the app's look over (since, until] and `until` once it has ended;
        None while it runs (started now if it was not). A look of another `key` (a newer
        canary, a later start) is superseded."""
        found = self._running.get(app)
        if found is not None and found.key == key:
            if not found.future.done():
                return None
            del self._running[app]
            return found.future.result(), found.until  # a query Prometheus refused: raises
        future = self._looks.submit(look, self.prometheus, policy, workloads, since, now,
                                    namespaces, self._queries)
        future.add_done_callback(lambda _: self.notify())
        self._running[app] = _Running(key, now, future)
        return None

    def running(self, app: str) -> bool:
        found = self._running.get(app)
        return found is not None and not found.future.done()

    def wait(self, apps: Sequence[str], timeout: float) -> None:
        futures = [self._running[a].future for a in apps if a in self._running]
        if futures:
            wait(futures, timeout=timeout)

    def close(self, wait: bool = False) -> None:
        """Start no more looks; with `wait`, let those already querying end (their server
        is still up) instead of leaving them to fail."""
        self._looks.shutdown(wait=wait, cancel_futures=True)
        self._queries.shutdown(wait=wait, cancel_futures=True)


def analyze(prom: Prometheus, policy: Policy, workloads: Sequence[tuple[str, str]],
            since: float, now: float) -> Assessment:
    """One look over (since, now] as the whole evidence: `gitops-canary analyze`."""
    return recording(policy).add(look(prom, policy, workloads, since, now)).assess()
