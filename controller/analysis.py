"""One analysis of a canary: fill the metric templates per variant, query Prometheus, judge.

Unreachable Prometheus or an empty result is no data for that metric, so the judgement is
inconclusive — never a pass. A query Prometheus refuses is the policy's fault and raises.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from controller.domain.judge import Counts, Judgement, MetricInput, judge
from controller.domain.policy import Metric, Policy
from controller.domain.promql import fill, variables
from controller.domain.types import Variant
from controller.edges.prometheus import Prometheus
from controller.errors import TransientError

log = logging.getLogger(__name__)

SAMPLES_PER_WINDOW = 20


def _measure(prom: Prometheus, policy: Policy, metric: Metric, variant: Variant,
             workloads: Sequence[tuple[str, str]], now: float,
             window: int) -> Counts | tuple[float, ...] | None:
    values = variables(policy.app, policy.namespace, str(variant), workloads, window)
    try:
        if metric.kind == "ratio":
            good = prom.scalar(fill(metric.good, values), at=now)
            total = prom.scalar(fill(metric.total, values), at=now)
            if good is None or total is None:
                return None
            # increase() extrapolates per series: round to counts, good never above total.
            counts = round(total)
            return Counts(min(max(round(good), 0), counts), counts)
        step = max(1.0, window / SAMPLES_PER_WINDOW)
        return tuple(prom.series(fill(metric.query, values), now - window, now, step))
    except TransientError as error:
        log.warning("metric %s (%s): %s: no data", metric.name, variant, error)
        return None


def analyze(prom: Prometheus, policy: Policy, workloads: Sequence[tuple[str, str]], now: float,
            since: float | None = None) -> Judgement:
    """Judge the variants over the policy's window, cut at `since` (when they became ready):
    series of pods from before (a replaced canary's) must not count."""
    window = policy.analysis.window
    if since is not None:
        window = max(1, min(window, math.ceil(now - since)))
    inputs = [
        MetricInput(
            name=metric.name, kind=metric.kind, direction=metric.direction,
            baseline=_measure(prom, policy, metric, Variant.BASELINE, workloads, now, window),
            canary=_measure(prom, policy, metric, Variant.CANARY, workloads, now, window),
            critical=metric.critical, weight=metric.weight, tolerance=metric.tolerance)
        for metric in policy.analysis.metrics
    ]
    return judge(inputs, policy.analysis.pass_score, policy.analysis.marginal_score)
