"""The Prometheus fixture is a real Prometheus: it discovers file_sd targets and scrapes them."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from localcluster.processes import free_port
from localcluster.prometheus import Prometheus

pytestmark = pytest.mark.prometheus


def test_prometheus_scrapes_a_target_published_through_file_discovery(
    prometheus: Prometheus,
) -> None:
    registry = CollectorRegistry()
    requests = Counter("requests", "Requests served", ["custom_status"], registry=registry)
    requests.labels(custom_status="good").inc(7)
    requests.labels(custom_status="bad").inc(3)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prometheus.write_targets("fixture-check", [
            {"targets": [f"127.0.0.1:{port}"],
             "labels": {"namespace": "demo", "pod": "sampleapp-abc12"}},
        ])
        query = 'requests_total{pod="sampleapp-abc12", namespace="demo", custom_status="good"}'
        deadline = time.monotonic() + 30
        result = prometheus.query(query)
        while not result and time.monotonic() < deadline:
            time.sleep(0.5)
            result = prometheus.query(query)
        assert result, f"no sample for {query} within 30s"
        assert float(result[0]["value"][1]) == 7.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
