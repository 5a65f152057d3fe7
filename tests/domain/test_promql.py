"""Metric templates filled per variant, as the seed's dashboard queries select pods."""

from __future__ import annotations

import re

import pytest

from controller.domain.policy import DEFAULT_GOOD, DEFAULT_TOTAL
from controller.domain.promql import fill, pod_regex, variables


def test_the_default_metric_is_the_seeds_success_rate_per_variant() -> None:
    values = variables("sampleapp", "demo", "canary", [("Deployment", "sampleapp")], 120)
    pods = "sampleapp-canary-[a-z0-9]{1,10}-[a-z0-9]{5}"
    good = f'requests_total{{namespace="demo", pod=~"{pods}", custom_status="good"}}'
    total = f'requests_total{{namespace="demo", pod=~"{pods}"}}'
    # Exact counts: each series' rise over the window, or all of a series born within it.
    assert fill(DEFAULT_GOOD, values) == (
        f"sum(clamp_min({good} - {good} offset 120s, 0) or ({good} unless {good} offset 120s))")
    assert fill(DEFAULT_TOTAL, values) == (
        f"sum(clamp_min({total} - {total} offset 120s, 0) or "
        f"({total} unless {total} offset 120s))")


def test_pod_regex_covers_every_workload_of_the_app() -> None:
    assert pod_regex([("Deployment", "web")], "baseline") == \
        "web-baseline-[a-z0-9]{1,10}-[a-z0-9]{5}"
    assert pod_regex([("StatefulSet", "worker"), ("Pod", "web.v1")], "canary") == \
        "(web[.]v1-canary|worker-canary-[0-9]+)"


@pytest.mark.parametrize(("kind", "pod", "matches"), [
    ("Deployment", "sampleapp-canary-7d9f8b6c4-abcde", True),
    ("Deployment", "sampleapp-canary-x-7d9f8b6c4-abcde", False),  # another workload's pod
    ("Deployment", "sampleapp-canary", False),
    ("StatefulSet", "sampleapp-canary-0", True),
    ("StatefulSet", "sampleapp-canary-x-0", False),
    ("DaemonSet", "sampleapp-canary-q2w3e", True),
    ("DaemonSet", "sampleapp-canary-x-q2w3e", False),
    ("Pod", "sampleapp-canary", True),
    ("Pod", "sampleapp-canary-1", False),
])
def test_pod_regex_is_anchored_to_the_variant_s_own_pods(kind: str, pod: str,
                                                          matches: bool) -> None:
    # PromQL's =~ matches the whole label value, as re.fullmatch does.
    assert bool(re.fullmatch(pod_regex([(kind, "sampleapp")], "canary"), pod)) is matches


def test_every_variable_is_filled_and_spacing_is_free() -> None:
    values = variables("a", "ns", "baseline", [("Deployment", "a")], 60)
    assert fill("{{app}}/{{ namespace }}/{{  variant }}/{{ window }}", values) == \
        "a/ns/baseline/60s"
