"""The analysis against real Prometheus scraping real sample-app processes under real load.

As in the seed guide: one set of pods with SUCCESS_RATE=10 as baseline, one with 20 as canary,
fortio sending requests to each (bounded), Prometheus scraping them every second with the
`pod` and `namespace` labels the seed's queries use. The canary with the higher success rate
passes; reversed, it fails. Evidence accumulates: two looks, each over its own burst, add up
(also after the record is written and read back, as a restarted controller does), and a slow
canary fails on the latency histogram.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controller.analysis import Looks, analyze, look, recording
from controller.domain.policy import Analysis, Metric, Policy
from controller.domain.replay import resume, to_document
from controller.domain.sequential import Counts, Result, Verdict
from controller.edges.prometheus import Prometheus
from localcluster import cluster as localcluster
from localcluster.processes import free_port
from localcluster.prometheus import Prometheus as PrometheusServer
from localcluster.prometheus import Slowed, slowed

pytestmark = pytest.mark.prometheus

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "demo"
REQUESTS = 1500


def start_app(ip: str, rate: int, log: Path, latency_ms: int = 0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HOST": ip, "PORT": "8080", "METRICS_PORT": "8000",
           "SUCCESS_RATE": str(rate), "LATENCY_MS": str(latency_ms), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "sampleapp" / "app.py")],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://{ip}:8080/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"sample app on {ip} not ready: {log.read_text()}")


@pytest.fixture(scope="module")
def fortio() -> str:
    return str(localcluster.build_binaries() / "fortio")


def load(fortio: str, ips: list[str], requests: int = 0) -> None:
    """A bounded burst of requests to each app, as the seed's fortio load does."""
    # -keepalive=false: with werkzeug's server fortio finishes its calls, then hangs on exit.
    runs = [subprocess.Popen([fortio, "load", "-quiet", "-allow-initial-errors", "-keepalive=false",
                              "-c", "4", "-qps", "0", "-n", str(requests or REQUESTS), f"http://{ip}:8080/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for ip in ips]
    try:
        for run in runs:
            assert run.wait(timeout=120) in (0, 1)  # fortio exits 1 when it saw HTTP errors
    finally:
        for run in runs:
            run.kill()
            run.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"Prometheus did not scrape {what} in {timeout}s"
        time.sleep(0.3)


def scraped(prom: Prometheus, pod: str, at_least: float) -> bool:
    value = prom.scalar(f'sum(requests_total{{namespace="{NAMESPACE}", pod="{pod}"}})')
    return value is not None and value >= at_least


@dataclass
class Variants:
    prom: Prometheus
    started: float
    load: Callable[[int], None]  # a bounded burst of requests to both, scraped when it returns


@pytest.fixture
def variants(prometheus: PrometheusServer, fortio: str, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[Variants]:
    """baseline pod on 127.20.X.1, canary pod on 127.20.X.2 (X drawn per test, so two test
    runs on one machine rarely load each other's apps: 1 in 256); (rate, rate[, canary latency ms])
    from the test's param. Nothing is loaded yet."""
    baseline_rate, canary_rate, *slow = request.param
    block = secrets.randbelow(256)
    ips = {"baseline": f"127.20.{block}.1", "canary": f"127.20.{block}.2"}
    # New pods, new names: series of an earlier test must not mix into this one's window.
    suffix = uuid.uuid4().hex[:5]
    pods = {v: f"sampleapp-{v}-5d8f7-{suffix}" for v in ("baseline", "canary")}
    processes = [start_app(ips["baseline"], baseline_rate, tmp_path / "baseline.log"),
                 start_app(ips["canary"], canary_rate, tmp_path / "canary.log", *slow)]
    client = Prometheus(prometheus.url)
    served = 0

    def burst(requests: int) -> None:
        nonlocal served
        load(fortio, list(ips.values()), requests)
        served += requests
        wait_until(lambda: all(scraped(client, pods[v], served) for v in pods), "the load")
        time.sleep(1.5)  # one more scrape, so that increase() ends on the last value

    started = time.time()
    try:
        prometheus.write_targets("sampleapp", [
            {"targets": [f"{ips[v]}:8000"], "labels": {"namespace": NAMESPACE, "pod": pods[v]}}
            for v in ("baseline", "canary")])
        # The counters must be seen at 0 before the load: increase() needs the rise.
        wait_until(lambda: all(scraped(client, pods[v], 0) for v in pods), "first scrape")
        yield Variants(client, started, burst)
    finally:
        prometheus.write_targets("sampleapp", [])
        client.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


POLICY = Policy(app="sampleapp", namespace=NAMESPACE)
WORKLOADS = [("Deployment", "sampleapp")]
LATENCY = Metric(
    name="latency", kind="histogram", direction="lower", critical=True, objective=0.25,
    query='sum by (le) (increase(request_duration_seconds_bucket{namespace="{{ namespace }}", '
          'pod=~"{{ pod_regex }}"}[{{ window }}]))')
WITH_LATENCY = Policy(app="sampleapp", namespace=NAMESPACE, analysis=Analysis(
    metrics=(*Analysis().metrics, LATENCY)))


@pytest.mark.parametrize("variants", [(10, 20)], indirect=True)
def test_a_canary_with_the_better_success_rate_passes(variants: Variants) -> None:
    variants.load(REQUESTS)
    assessment = analyze(variants.prom, POLICY, WORKLOADS, variants.started, time.time())
    (metric,) = assessment.metrics
    assert assessment.verdict is Verdict.PASS, assessment
    assert metric.result is Result.PASS
    assert metric.baseline is not None
    assert metric.canary is not None
    assert 0.05 < metric.baseline < 0.15
    assert 0.15 < metric.canary < 0.25
    # Counted exactly (the default queries never extrapolate as increase() does).
    assert (metric.n_baseline, metric.n_canary) == (REQUESTS, REQUESTS)
    assert metric.lower is not None
    assert metric.lower > -metric.tolerance


@pytest.mark.parametrize("variants", [(20, 10)], indirect=True)
def test_reversed_the_canary_fails(variants: Variants) -> None:
    variants.load(REQUESTS)
    assessment = analyze(variants.prom, POLICY, WORKLOADS, variants.started, time.time())
    assert assessment.verdict is Verdict.FAIL, assessment
    (metric,) = assessment.metrics
    assert metric.result is Result.LOW
    assert metric.e_value is not None
    assert metric.e_value >= metric.threshold


@pytest.mark.parametrize("variants", [(10, 12)], indirect=True)
def test_evidence_accumulates_across_looks_and_survives_the_record(variants: Variants) -> None:
    """Two looks, each over its own burst: the second judges both bursts together, from the
    evidence a record kept (JSON, read back as a restarted controller reads it)."""
    first_at = time.time()
    variants.load(400)
    recorded = recording(POLICY).add(
        look(variants.prom, POLICY, WORKLOADS, variants.started, time.time()))
    first = recorded.assess().metrics[0]
    kept = json.dumps(to_document(recorded))  # the record, as stored in the cluster

    looked_at = time.time()
    variants.load(400)
    restarted = resume(kept, recording(POLICY))  # a new controller, the same record
    assert restarted.series == recorded.series
    recorded = restarted.add(look(variants.prom, POLICY, WORKLOADS, looked_at, time.time()))
    second = recorded.assess().metrics[0]
    steps = recorded.series[0]
    assert len(steps) == 2
    # Each look counted its own burst, and the evidence is their sum.
    for step in steps:
        for side in (step.baseline, step.canary):
            assert isinstance(side, Counts), steps
            assert side.total == 400, steps
    assert (second.n_baseline, second.n_canary) == (800, 800)
    assert first.lower is not None
    assert second.lower is not None
    assert second.upper is not None
    assert first.upper is not None
    assert second.upper - second.lower < first.upper - first.lower  # narrower with more data
    assert first_at < looked_at


@pytest.mark.parametrize("variants", [(20, 20, 300)], indirect=True)
def test_a_slow_canary_fails_on_the_latency_histogram(variants: Variants) -> None:
    variants.load(200)
    assessment = analyze(variants.prom, WITH_LATENCY, WORKLOADS, variants.started, time.time())
    success, latency = assessment.metrics
    assert assessment.verdict is Verdict.FAIL, assessment
    assert latency.result is Result.LOW  # the share within 250 ms
    assert latency.canary == 0.0
    assert latency.baseline is not None
    assert latency.baseline > 0.9
    assert latency.quantiles is not None
    baseline_p99, canary_p99 = latency.quantiles
    assert baseline_p99 is not None
    assert canary_p99 is not None
    assert canary_p99 > 0.25
    assert success.result is not Result.LOW


def test_unreachable_prometheus_is_inconclusive_never_a_pass() -> None:
    nobody = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=1)
    assessment = analyze(nobody, POLICY, WORKLOADS, time.time() - 60, time.time())
    assert assessment.verdict is Verdict.INCONCLUSIVE
    assert [m.result for m in assessment.metrics] == [Result.NODATA]


@pytest.fixture
def slow_prometheus(prometheus: PrometheusServer) -> Iterator[Slowed]:
    """The real Prometheus behind a loopback proxy that holds every query for a second."""
    with slowed(prometheus.url, 1.0) as slow:
        yield slow


@pytest.mark.parametrize("variants", [(10, 20)], indirect=True)
def test_looks_run_in_the_background_their_queries_side_by_side(variants: Variants,
                                                                 slow_prometheus: Slowed) -> None:
    """A slow Prometheus holds no caller: `take` starts a look and returns at once; the looks
    of several apps query side by side, within the worker limit, and count what a look made
    in the foreground counts."""
    variants.load(300)
    now = time.time()
    expected = look(variants.prom, POLICY, WORKLOADS, variants.started, now)
    slow = Prometheus(slow_prometheus.url)
    ended = []
    looks = Looks(slow, workers=6, notify=lambda: ended.append(1))
    apps = [f"app-{i}" for i in range(4)]
    try:
        for app in apps:  # 4 looks of 4 queries each, every query held for a second
            assert looks.take(app, "k", POLICY, WORKLOADS, variants.started, now, ()) is None
        assert all(looks.running(app) for app in apps)  # nothing waited for them
        looks.wait(apps, timeout=60)
        for app in apps:
            taken = looks.take(app, "k", POLICY, WORKLOADS, variants.started, now, ())
            assert taken == (expected, now)
    finally:
        looks.close()
        slow.close()
    assert len(ended) == 4
    assert 2 <= slow_prometheus.in_flight[1] <= 6  # side by side, never above the limit
