"""The sample app really serves good and bad answers and counts exactly those it served.

Each test starts ``sampleapp/app.py`` as its own process on loopback with free ports, talks to it
over HTTP and reads the counter back from its /metrics page, as Prometheus would.
"""

from __future__ import annotations

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
SETTINGS = ("SUCCESS_RATE", "HOST", "PORT", "METRICS_PORT")
REQUESTS = 50
START_TIMEOUT = 30.0


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


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"SUCCESS_RATE": "abc"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": "101"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": "-1"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": "nan"}, "SUCCESS_RATE"),
        ({"SUCCESS_RATE": ""}, "SUCCESS_RATE"),
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
