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


def _measure(prom: Prometheus, policy: Policy, metric: Metric, variant: Variant,
             workloads: Sequence[tuple[str, str]], now: float, window: int,
             namespace: str) -> Side:
    values = variables(policy.app, namespace, str(variant), workloads, window)
    try:
        if metric.kind == "ratio":
            good = prom.scalar(fill(metric.good, values), at=now)
            total = prom.scalar(fill(metric.total, values), at=now)
            if good is None or total is None:
                return None
            # increase() extrapolates per series: round to counts, good never above total.
            counts = max(round(total), 0)
            return Counts(min(max(round(good), 0), counts), counts)
        if metric.kind == "histogram":
            return _buckets(prom.vector(fill(metric.query, values), at=now))
        value = prom.scalar(fill(metric.query, values), at=now)
        return None if value is None else (value,)
    except TransientError as error:
        log.warning("metric %s (%s): %s: no data", metric.name, variant, error)
        return None


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
    the measures run there, all at once."""
    window = max(1, math.ceil(now - since))
    namespace = "|".join(sorted(set(namespaces))) or policy.namespace
    measures = [(metric, variant) for metric in policy.analysis.metrics
                for variant in (Variant.BASELINE, Variant.CANARY)]

    def measure(m: tuple[Metric, Variant]) -> Side:
        return _measure(prom, policy, m[0], m[1], workloads, now, window, namespace)

    sides = list(queries.map(measure, measures) if queries else map(measure, measures))
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

    def close(self) -> None:
        self._looks.shutdown(wait=False, cancel_futures=True)
        self._queries.shutdown(wait=False, cancel_futures=True)


def analyze(prom: Prometheus, policy: Policy, workloads: Sequence[tuple[str, str]],
            since: float, now: float) -> Assessment:
    """One look over (since, now] as the whole evidence: `gitops-canary analyze`."""
    return recording(policy).add(look(prom, policy, workloads, since, now)).assess()
