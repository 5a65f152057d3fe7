"""The seed's sample app: a web server with settable success rate and latency, for canaries.

It exists so a canary has something real to measure. ``GET /`` answers "good" (HTTP 200) with
probability SUCCESS_RATE percent and "bad" (HTTP 500) otherwise, and counts each answer in the
Prometheus counter ``requests_total{custom_status="good"|"bad"}``. Deploy one version with
SUCCESS_RATE=10 and the next with SUCCESS_RATE=20 and the controller's analysis of baseline
against canary has a real difference to find, as in the seed's guide.

Latency is a setting too: every ``GET /`` first sleeps LATENCY_MS milliseconds plus a uniformly
random extra in [0, LATENCY_JITTER_MS], then answers. Its duration, measured in the handler from
the start of the request to its answer (sleep included), is observed in the Prometheus histogram
``request_duration_seconds{custom_status="good"|"bad"}``, exported as ``..._bucket{le=...}``,
``..._sum`` and ``..._count``. Its buckets are fixed, in seconds::

    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, +Inf

Deploy one version with LATENCY_MS=0 and the next with LATENCY_MS=300 and a latency metric (say
the share of requests slower than 0.25 s, or a quantile) has a real difference to find.

Settings (environment variables):
    SUCCESS_RATE       percent of good answers, a number from 0 to 100 (default 50)
    LATENCY_MS         milliseconds each ``GET /`` sleeps before answering, 0 to 60000 (default 0)
    LATENCY_JITTER_MS  at most this many more, uniformly random, 0 to 60000 (default 0)
    HOST               address both servers bind (default 0.0.0.0; a pod IP on the local cluster)
    PORT               the app's port (default 8080)
    METRICS_PORT       the port of /metrics (default 8000)

With both latency settings at 0 (their default) ``GET /`` does not sleep at all and answers as
before they existed. ``GET /healthz`` answers 200 "ok" for readiness probes at once, and is neither
counted nor timed. The app is served by werkzeug's threaded server: enough for a demo and load
tests, with no extra WSGI dependency; requests sleep in their own threads, side by side.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask
from prometheus_client import Counter, Histogram, start_http_server

REQUESTS = Counter("requests", "Number of requests served, by custom_status", ["custom_status"])
# Seconds; prometheus_client appends the +Inf bucket. The bounds around the latencies a demo sets
# (0.05, 0.1, 0.25, 0.5) are there so a threshold on one of them separates slow from fast.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "Duration of GET / from request to answer in seconds, by custom_status",
    ["custom_status"],
    buckets=DURATION_BUCKETS,
)
STATUSES = ("good", "bad")
MAX_LATENCY_MS = 60_000.0


class ConfigError(ValueError):
    """A setting from the environment is invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    success_rate: float
    latency_ms: float
    latency_jitter_ms: float
    host: str
    port: int
    metrics_port: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        host = env.get("HOST", "0.0.0.0")  # noqa: S104 - a container listens on its pod IP
        if not host:
            raise ConfigError("HOST must not be empty")
        return cls(
            success_rate=_percent(env, "SUCCESS_RATE", default=50.0),
            latency_ms=_milliseconds(env, "LATENCY_MS", default=0.0),
            latency_jitter_ms=_milliseconds(env, "LATENCY_JITTER_MS", default=0.0),
            host=host,
            port=_port(env, "PORT", default=8080),
            metrics_port=_port(env, "METRICS_PORT", default=8000),
        )


def _number(env: Mapping[str, str], name: str, default: float, top: float, what: str) -> float:
    """A finite number from 0 to `top`, or a ConfigError naming the variable and `what`."""
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= top):
        raise ConfigError(f"{name} must be {what}, got {raw!r}")
    return value


def _percent(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, 100, "a number from 0 to 100 (a percentage)")


def _milliseconds(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, MAX_LATENCY_MS,
                   f"a number of milliseconds from 0 to {MAX_LATENCY_MS:.0f}")


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number from 1 to 65535, got {raw!r}")
    return value


def create_app(
    success_rate: float, latency_ms: float = 0.0, latency_jitter_ms: float = 0.0
) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> tuple[str, int]:
        started = time.perf_counter()
        delay_ms = latency_ms
        if latency_jitter_ms > 0:
            delay_ms += random.uniform(0, latency_jitter_ms)  # noqa: S311 - not for security
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)
        # Not for security: a fair coin, weighted by the success rate.
        if random.random() * 100 < success_rate:  # noqa: S311
            status, answer = "good", ("Hello World!\n", 200)
        else:
            status, answer = "bad", ("Internal Server Error\n", 500)
        REQUESTS.labels(custom_status=status).inc()
        REQUEST_DURATION.labels(custom_status=status).observe(time.perf_counter() - started)
        return answer

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok", 200

    return app


def main() -> None:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        sys.exit(f"sampleapp: {error}")
    # Both series exist from the start (at 0), so a success ratio is defined before the first
    # bad answer and a variant that never fails still reports its zero; likewise every bucket,
    # _sum and _count of the histogram.
    for status in STATUSES:
        REQUESTS.labels(custom_status=status)
        REQUEST_DURATION.labels(custom_status=status)
    start_http_server(settings.metrics_port, addr=settings.host)
    app = create_app(settings.success_rate, settings.latency_ms, settings.latency_jitter_ms)
    app.run(settings.host, settings.port, threaded=True)


if __name__ == "__main__":
    main()
