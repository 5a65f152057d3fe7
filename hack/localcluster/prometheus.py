"""A real Prometheus (Debian's 2.42) on loopback, discovering targets from files.

Debian's build has no Kubernetes service discovery, so whoever knows the pods (the tests, the
local pod runner) writes file_sd target files into `targets/`; Prometheus re-reads them every
second. Same process rules as the control plane: a state folder, a pid file, `stop` leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from localcluster.processes import StartupError, Supervisor, free_port

NAME = "prometheus"


@dataclass(frozen=True)
class Prometheus:
    state: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets(self) -> Path:
        return self.state / "targets"

    def write_targets(self, name: str, groups: list[dict[str, Any]]) -> None:
        """Publish a file_sd target file atomically: [{"targets": [...], "labels": {...}}]."""
        tmp = self.targets / f".{name}.json.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets / f"{name}.json")

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5.0)
        response.raise_for_status()
        body = response.json()
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise StartupError(
            "prometheus is not installed: run hack/setup.sh (apt-get install prometheus)"
        )
    return found


def start(state: Path, scrape_interval: str = "1s") -> Prometheus:
    state = state.resolve()
    sup = Supervisor(state)
    sup.stop_all([NAME])
    shutil.rmtree(state / "data", ignore_errors=True)
    prom = Prometheus(state, free_port())
    prom.targets.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": "pods",
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "file_sd_configs": [
                    {"files": [str(prom.targets / "*.json")], "refresh_interval": "1s"}
                ],
            }
        ],
    }
    (state / "prometheus.yml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    sup.start(NAME, [
        binary(),
        f"--config.file={state / 'prometheus.yml'}",
        f"--storage.tsdb.path={state / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom.port}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
    ])

    def ready() -> bool:
        try:
            return httpx.get(f"{prom.url}/-/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        sup.wait_healthy(NAME, ready, timeout=30)
    except StartupError:
        sup.stop_all([NAME])
        raise
    (state / "port").write_text(str(prom.port))
    print(f"[prometheus] ready in {time.monotonic() - started:.1f}s at {prom.url}")
    return prom


def stop(state: Path) -> list[int]:
    return Supervisor(state.resolve()).stop_all([NAME])


@dataclass
class Slowed:
    url: str
    in_flight: list[int] = field(default_factory=lambda: [0, 0])  # [now, most at once]


@contextlib.contextmanager
def slowed(upstream: str, delay: float) -> Iterator[Slowed]:
    """A loopback proxy in front of a real Prometheus that holds every query for `delay`
    seconds, as a loaded Prometheus does, and counts the queries in flight at once."""
    forward = httpx.Client(base_url=upstream, timeout=30)
    lock = threading.Lock()
    seen = Slowed("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                seen.in_flight[0] += 1
                seen.in_flight[1] = max(seen.in_flight)
            try:
                time.sleep(delay)
                answer = forward.get(self.path)
            finally:
                with lock:
                    seen.in_flight[0] -= 1
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="slowed-prometheus", daemon=True).start()
    seen.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
        forward.close()
