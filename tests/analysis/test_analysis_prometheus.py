"""The analysis against real Prometheus scraping real sample-app processes under real load.

As in the seed guide: one set of pods with SUCCESS_RATE=10 as baseline, one with 20 as canary,
fortio sending requests to each (bounded), Prometheus scraping them every second with the
`pod` and `namespace` labels the seed's queries use. The canary with the higher success rate
passes; reversed, it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from controller.analysis import analyze
from controller.domain.judge import Result, Verdict
from controller.domain.policy import Analysis, Policy
from controller.edges.prometheus import Prometheus
from localcluster import cluster as localcluster
from localcluster.processes import free_port
from localcluster.prometheus import Prometheus as PrometheusServer

pytestmark = pytest.mark.prometheus

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "demo"
REQUESTS = 1500


def start_app(ip: str, rate: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HOST": ip, "PORT": "8080", "METRICS_PORT": "8000",
           "SUCCESS_RATE": str(rate), "PYTHONUNBUFFERED": "1"}
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


def load(fortio: str, ips: list[str]) -> None:
    """A bounded burst of requests to each app, as the seed's fortio load does."""
    # -keepalive=false: with werkzeug's server fortio finishes its calls, then hangs on exit.
    runs = [subprocess.Popen([fortio, "load", "-quiet", "-allow-initial-errors", "-keepalive=false",
                              "-c", "4", "-qps", "0", "-n", str(REQUESTS), f"http://{ip}:8080/"],
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


@pytest.fixture
def variants(prometheus: PrometheusServer, fortio: str, tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[tuple[Prometheus, float]]:
    """baseline pod on 127.20.0.1, canary pod on 127.20.0.2, rates from the test's param."""
    baseline_rate, canary_rate = request.param
    ips = {"baseline": "127.20.0.1", "canary": "127.20.0.2"}
    # New pods, new names: series of an earlier test must not mix into this one's window.
    suffix = uuid.uuid4().hex[:5]
    pods = {v: f"sampleapp-{v}-5d8f7-{suffix}" for v in ("baseline", "canary")}
    processes = [start_app(ips["baseline"], baseline_rate, tmp_path / "baseline.log"),
                 start_app(ips["canary"], canary_rate, tmp_path / "canary.log")]
    client = Prometheus(prometheus.url)
    started = time.time()
    try:
        prometheus.write_targets("sampleapp", [
            {"targets": [f"{ips[v]}:8000"], "labels": {"namespace": NAMESPACE, "pod": pods[v]}}
            for v in ("baseline", "canary")])
        # The counters must be seen at 0 before the load: increase() needs the rise.
        wait_until(lambda: all(scraped(client, pods[v], 0) for v in pods), "first scrape")
        load(fortio, list(ips.values()))
        wait_until(lambda: all(scraped(client, pods[v], REQUESTS) for v in pods), "the load")
        yield client, started
    finally:
        prometheus.write_targets("sampleapp", [])
        client.close()
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


POLICY = Policy(app="sampleapp", namespace=NAMESPACE, analysis=Analysis(window=120))
WORKLOADS = [("Deployment", "sampleapp")]


@pytest.mark.parametrize("variants", [(10, 20)], indirect=True)
def test_a_canary_with_the_better_success_rate_passes(
        variants: tuple[Prometheus, float]) -> None:
    judgement = analyze(variants[0], POLICY, WORKLOADS, time.time(), since=variants[1])
    (metric,) = judgement.metrics
    assert judgement.verdict is Verdict.PASS, judgement
    assert metric.result is Result.HIGH
    assert metric.baseline is not None
    assert metric.canary is not None
    assert 0.05 < metric.baseline < 0.15
    assert 0.15 < metric.canary < 0.25
    assert metric.p_value is not None
    assert metric.p_value < 0.001


@pytest.mark.parametrize("variants", [(20, 10)], indirect=True)
def test_reversed_the_canary_fails(variants: tuple[Prometheus, float]) -> None:
    judgement = analyze(variants[0], POLICY, WORKLOADS, time.time(), since=variants[1])
    assert judgement.verdict is Verdict.FAIL, judgement
    assert judgement.metrics[0].result is Result.LOW


def test_unreachable_prometheus_is_inconclusive_never_a_pass() -> None:
    nobody = Prometheus(f"http://127.0.0.1:{free_port()}", timeout=1)
    judgement = analyze(nobody, POLICY, WORKLOADS, time.time())
    assert judgement.verdict is Verdict.INCONCLUSIVE
    assert [m.result for m in judgement.metrics] == [Result.NODATA]
