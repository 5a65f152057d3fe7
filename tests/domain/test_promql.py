"""Metric templates filled per variant, as the seed's dashboard queries select pods."""

from __future__ import annotations

from controller.domain.policy import DEFAULT_GOOD, DEFAULT_TOTAL
from controller.domain.promql import fill, pod_regex, variables


def test_the_default_metric_is_the_seeds_success_rate_per_variant() -> None:
    values = variables("sampleapp", "demo", "canary", ["sampleapp"], 120)
    assert fill(DEFAULT_GOOD, values) == (
        'sum(increase(requests_total{namespace="demo", pod=~"sampleapp-canary-.*", '
        'custom_status="good"}[120s]))')
    assert fill(DEFAULT_TOTAL, values) == (
        'sum(increase(requests_total{namespace="demo", pod=~"sampleapp-canary-.*"}[120s]))')


def test_pod_regex_covers_every_workload_of_the_app() -> None:
    assert pod_regex(["web"], "baseline") == "web-baseline-.*"
    assert pod_regex(["worker", "web"], "canary") == "(web|worker)-canary-.*"


def test_every_variable_is_filled_and_spacing_is_free() -> None:
    values = variables("a", "ns", "baseline", ["a"], 60)
    assert fill("{{app}}/{{ namespace }}/{{  variant }}/{{ window }}", values) == \
        "a/ns/baseline/60s"
