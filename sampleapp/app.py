"""The seed's sample app: a web server whose success rate is a setting, instrumented for canaries.

It exists so a canary has something real to measure. ``GET /`` answers "good" (HTTP 200) with
probability SUCCESS_RATE percent and "bad" (HTTP 500) otherwise, and counts each answer in the
Prometheus counter ``requests_total{custom_status="good"|"bad"}``. Deploy one version with
SUCCESS_RATE=10 and the next with SUCCESS_RATE=20 and the controller's analysis of baseline
against canary has a real difference to find, as in the seed's guide.

Settings (environment variables):
    SUCCESS_RATE  percent of good answers, a number from 0 to 100 (default 50)
    HOST          address both servers bind (default 0.0.0.0; a pod IP on the local cluster)
    PORT          the app's port (default 8080)
    METRICS_PORT  the port of /metrics (default 8000)

``GET /healthz`` answers 200 "ok" for readiness probes and is not counted. The app is served by
werkzeug's threaded server: enough for a demo and load tests, with no extra WSGI dependency.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask
from prometheus_client import Counter, start_http_server

REQUESTS = Counter("requests", "Number of requests served, by custom_status", ["custom_status"])
STATUSES = ("good", "bad")


class ConfigError(ValueError):
    """A setting from the environment is invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    success_rate: float
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
            host=host,
            port=_port(env, "PORT", default=8080),
            metrics_port=_port(env, "METRICS_PORT", default=8000),
        )


def _percent(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= 100):
        raise ConfigError(f"{name} must be a number from 0 to 100 (a percentage), got {raw!r}")
    return value


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


def create_app(success_rate: float) -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> tuple[str, int]:
        # Not for security: a fair coin, weighted by the success rate.
        if random.random() * 100 < success_rate:  # noqa: S311
            REQUESTS.labels(custom_status="good").inc()
            return "Hello World!\n", 200
        REQUESTS.labels(custom_status="bad").inc()
        return "Internal Server Error\n", 500

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
    # bad answer and a variant that never fails still reports its zero.
    for status in STATUSES:
        REQUESTS.labels(custom_status=status)
    start_http_server(settings.metrics_port, addr=settings.host)
    create_app(settings.success_rate).run(settings.host, settings.port, threaded=True)


if __name__ == "__main__":
    main()
