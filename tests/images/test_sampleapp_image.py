"""The sample app's image (sampleapp/Dockerfile) runs the app as uid 10001 and serves what the
canaries measure: a real Prometheus scrapes requests_total and the latency histogram from the
container, and counts exactly the requests this test made."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from localcluster import prometheus as localprometheus
from tests.images.conftest import Compose, SampleAppPorts
from tests.waiting import eventually

pytestmark = pytest.mark.prometheus

TARGET = "images-sampleapp"  # the file_sd target file, and the pod label on its series
REQUESTS = 60


def series(prom: localprometheus.Prometheus, promql: str) -> dict[str, float]:
    """{custom_status or le: value} of an instant query."""
    return {sample["metric"].get("custom_status") or sample["metric"].get("le", ""):
            float(sample["value"][1]) for sample in prom.query(promql)}


def test_the_container_serves_requests_total_and_the_latency_histogram_to_prometheus(
        sampleapp_container: SampleAppPorts, prometheus: localprometheus.Prometheus,
        compose: Compose) -> None:
    ports = sampleapp_container
    assert compose.run("exec", "-T", "sampleapp", "id", "-u").stdout.strip() == "10001"

    answered: Counter[str] = Counter()
    with httpx.Client(base_url=f"http://127.0.0.1:{ports.app}", timeout=10.0) as app:
        assert app.get("/healthz").text.strip() == "ok"
        for _ in range(REQUESTS):
            answer = app.get("/")
            answered["good" if answer.status_code == 200 else "bad"] += 1
    assert 0 < answered["good"] < REQUESTS  # SUCCESS_RATE=80 in compose.yaml

    prometheus.write_targets(TARGET, [{"targets": [f"127.0.0.1:{ports.metrics}"],
                                       "labels": {"pod": TARGET}}])
    try:
        selector = f'{{pod="{TARGET}"}}'
        counted = eventually(
            lambda: (found := series(prometheus, f"requests_total{selector}"))
            and found == answered and found, "Prometheus to scrape the counts of the requests",
            timeout=30)
        assert counted == {"good": answered["good"], "bad": answered["bad"]}

        # The histogram: every request slept LATENCY_MS=20 ms, so none is in the 10 ms bucket,
        # all are in +Inf, and the sum is at least 20 ms each.
        buckets = series(prometheus, f"sum by (le) (request_duration_seconds_bucket{selector})")
        assert buckets["0.01"] == 0
        assert buckets["+Inf"] == REQUESTS
        by_bound = [buckets[le] for le in sorted(buckets, key=float)]
        assert by_bound == sorted(by_bound)  # cumulative
        count = series(prometheus, f"request_duration_seconds_count{selector}")
        assert count == counted
        total = sum(series(prometheus, f"request_duration_seconds_sum{selector}").values())
        assert total >= REQUESTS * 0.020
        assert series(prometheus, f"up{selector}") == {"": 1.0}
    finally:
        (prometheus.targets / f"{TARGET}.json").unlink(missing_ok=True)
