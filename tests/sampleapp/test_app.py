"""The sample app really serves good and bad answers, counts exactly those it served and times them.

Each test starts ``sampleapp/app.py`` as its own process on loopback with free ports, talks to it
over HTTP and reads the counter and the latency histogram back from its /metrics page, as
Prometheus would. Latency is judged by the histogram the app exports, never by the test's clock.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

APP = Path(__file__).resolve().parents[2] / "sampleapp" / "app.py"
HOST = "127.0.0.1"
SETTINGS = ("SUCCESS_RATE", "LATENCY_MS", "LATENCY_JITTER_MS", "HOST", "PORT", "METRICS_PORT")
REQUESTS = 50
START_TIMEOUT = 30.0
# The histogram's bucket bounds in seconds, as the app documents them (+Inf last).
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, math.inf)
EMPTY = {"good": 0.0, "bad": 0.0}


@dataclass(frozen=True)
class Durations:
    """One ``request_duration_seconds`` series of the metrics page."""

    buckets: dict[float, float]  # upper bound (le, +Inf included) -> cumulative count
    count: float
    sum: float

    def above(self, bound: float) -> float:
        """How many observations were longer than ``bound``, which must be a bucket bound."""
        return self.count - self.buckets[bound]

    def check(self) -> None:
        """The series is a well-formed Prometheus histogram with the app's documented buckets."""
        assert tuple(self.buckets) == BOUNDS
        cumulative = list(self.buckets.values())
        assert cumulative == sorted(cumulative), f"buckets not cumulative: {self.buckets}"
        assert self.buckets[math.inf] == self.count
        assert self.sum >= 0


@dataclass(frozen=True)
class SampleApp:
    url: str
    metrics_url: str
    log: Path

    def counts(self) -> dict[str, float]:
        """``requests_total`` per ``custom_status``, parsed from the metrics page."""
        text = httpx.get(self.metrics_url, timeout=5).raise_for_status().text
        return {
            sample.labels["custom_status"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "requests_total"
        }

    def durations(self) -> dict[str, Durations]:
        """``request_duration_seconds`` per ``custom_status``, parsed from the metrics page."""
        text = httpx.get(self.metrics_url, timeout=5).raise_for_status().text
        buckets: dict[str, dict[float, float]] = {}
        counts: dict[str, float] = {}
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "request_duration_seconds":
                continue
            assert family.type == "histogram"
            for sample in family.samples:
                status = sample.labels["custom_status"]
                if sample.name == "request_duration_seconds_bucket":
                    buckets.setdefault(status, {})[float(sample.labels["le"])] = sample.value
                elif sample.name == "request_duration_seconds_count":
                    counts[status] = sample.value
                elif sample.name == "request_duration_seconds_sum":
                    sums[status] = sample.value
        assert buckets.keys() == counts.keys() == sums.keys()
        series = {
            status: Durations(dict(sorted(buckets[status].items())), counts[status], sums[status])
            for status in counts
        }
        for durations in series.values():
            durations.check()
        return series


def free_ports(count: int) -> list[int]:
    """Ports free on loopback; the sockets stay open together so the ports differ."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def app_env(**settings: str) -> dict[str, str]:
    """The test's environment without inherited app settings, plus the given ones."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def wait_ready(process: subprocess.Popen[bytes], app: SampleApp) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"sampleapp exited with {process.returncode}:\n{app.log.read_text()}")
        try:
            if httpx.get(f"{app.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"sampleapp not ready after {START_TIMEOUT}s:\n{app.log.read_text()}")


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., SampleApp]]:
    """Starts sampleapp processes with the given settings; stops every one afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(**settings: str) -> SampleApp:
        port, metrics_port = free_ports(2)
        log = tmp_path / f"sampleapp-{len(processes)}.log"
        app = SampleApp(f"http://{HOST}:{port}", f"http://{HOST}:{metrics_port}/metrics", log)
        env = app_env(HOST=HOST, PORT=str(port), METRICS_PORT=str(metrics_port), **settings)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(APP)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        processes.append(process)
        wait_ready(process, app)
        return app

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.parametrize(
    ("success_rate", "status", "code", "body"),
    [
        ("100", "good", 200, "Hello World!\n"),
        ("0", "bad", 500, "Internal Server Error\n"),
    ],
)
def test_counts_exactly_the_answers_it_gave(
    start_app: Callable[..., SampleApp], success_rate: str, status: str, code: int, body: str
) -> None:
    app = start_app(SUCCESS_RATE=success_rate)
    # Both series are there from the start, at zero (readiness polls did not count).
    assert app.counts() == {"good": 0.0, "bad": 0.0}

    with httpx.Client(base_url=app.url, timeout=5) as http:
        answers = [http.get("/") for _ in range(REQUESTS)]
        health = [http.get("/healthz") for _ in range(5)]

    assert {(answer.status_code, answer.text) for answer in answers} == {(code, body)}
    assert {(answer.status_code, answer.text) for answer in health} == {(200, "ok")}
    expected = {"good": 0.0, "bad": 0.0}
    expected[status] = float(REQUESTS)
    assert app.counts() == expected


def test_default_success_rate_mixes_good_and_bad(start_app: Callable[..., SampleApp]) -> None:
    app = start_app()  # SUCCESS_RATE unset: 50%
    total = 200
    with httpx.Client(base_url=app.url, timeout=5) as http:
        codes = [http.get("/").status_code for _ in range(total)]

    counts = app.counts()
    assert counts == {"good": float(codes.count(200)), "bad": float(codes.count(500))}
    assert counts["good"] + counts["bad"] == total
    # Binomial(200, 0.5) has a standard deviation of about 7: 60 away is beyond chance.
    assert 40 <= counts["good"] <= 160


def assert_all_zero(app: SampleApp) -> None:
    """Both statuses' series are there from the start, at zero."""
    assert app.counts() == EMPTY
    durations = app.durations()
    assert durations.keys() == EMPTY.keys()
    for series in durations.values():
        assert series == Durations(dict.fromkeys(BOUNDS, 0.0), 0.0, 0.0)


def test_histogram_times_every_answer_and_only_those(start_app: Callable[..., SampleApp]) -> None:
    app = start_app()  # default settings: SUCCESS_RATE 50, no added latency
    # Readiness polls of /healthz were neither counted nor timed.
    assert_all_zero(app)

    with httpx.Client(base_url=app.url, timeout=5) as http:
        codes = [http.get("/").status_code for _ in range(REQUESTS)]
        health = [http.get("/healthz").status_code for _ in range(5)]

    assert set(codes) <= {200, 500}
    assert health == [200] * 5
    counts = app.counts()
    durations = app.durations()  # each series checked: documented bounds, cumulative, +Inf=count
    assert {status: series.count for status, series in durations.items()} == counts
    assert sum(series.count for series in durations.values()) == REQUESTS
    for series in durations.values():
        # Without LATENCY_MS an answer takes no sleep: every one lands at or below 50 ms.
        assert series.above(0.05) == 0


@pytest.mark.parametrize(
    ("success_rate", "status", "code"), [("100", "good", 200), ("0", "bad", 500)]
)
def test_latency_setting_slows_every_answer(
    start_app: Callable[..., SampleApp], success_rate: str, status: str, code: int
) -> None:
    app = start_app(SUCCESS_RATE=success_rate, LATENCY_MS="300")
    assert_all_zero(app)  # readiness polls were not slowed: /healthz answered them
    slow = 5

    with httpx.Client(base_url=app.url, timeout=30) as http:
        codes = [http.get("/").status_code for _ in range(slow)]

    assert codes == [code] * slow  # the success rate plays as before
    durations = app.durations()
    other = "bad" if status == "good" else "good"
    assert durations[other].count == 0
    series = durations[status]
    assert series.count == slow
    # 300 ms each: none at or below 0.25 s, all of them above.
    assert series.buckets[0.25] == 0
    assert series.above(0.25) == slow


def test_latency_jitter_adds_a_random_delay(start_app: Callable[..., SampleApp]) -> None:
    app = start_app(SUCCESS_RATE="100", LATENCY_JITTER_MS="200")
    total = 20

    with httpx.Client(base_url=app.url, timeout=30) as http:
        codes = [http.get("/").status_code for _ in range(total)]

    assert codes == [200] * total
    series = app.durations()["good"]
    assert series.count == total
    # Each delay is uniform in [0, 200] ms, so at or below 50 ms with probability 1/4: all 20 at
    # or below would happen about once in 10^12 runs. Without the jitter none is above.
    assert series.above(0.05) > 0


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"SUCCESS_RATE": "abc"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": "101"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": "-1"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": "nan"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": ""}, "SUCCESS_RATE"),
        ({"LATENCY_MS": "-1"}, "LATENCY_MS"),
        ({"LATENCY_MS": "abc"}, "LATENCY_MS"),
        ({"LATENCY_MS": "nan"}, "LATENCY_MS"),
        ({"LATENCY_MS": "inf"}, "LATENCY_MS"),
        ({"LATENCY_MS": "60001"}, "LATENCY_MS"),
        ({"LATENCY_MS": ""}, "LATENCY_MS"),
        ({"LATENCY_JITTER_MS": "-0.5"}, "LATENCY_JITTER_MS"),
        ({"LATENCY_JITTER_MS": "nan"}, "LATENCY_JITTER_MS"),
        ({"LATENCY_JITTER_MS": "1e9"}, "LATENCY_JITTER_MS"),
        ({"PORT": "http"}, "PORT"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT"),
    ],
)
def test_invalid_setting_stops_the_app_with_its_name(settings: dict[str, str], named: str) -> None:
    port, metrics_port = free_ports(2)
    env = app_env(HOST=HOST, PORT=str(port), METRICS_PORT=str(metrics_port))
    env.update(settings)
    result = subprocess.run(
        [sys.executable, str(APP)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert f"sampleapp: {named} must be" in result.stderr
    assert "Traceback" not in result.stderr
