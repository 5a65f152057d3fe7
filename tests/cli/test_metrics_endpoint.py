"""The controller's /metrics, /healthz and /readyz, served for real on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from controller.domain.judge import Counts, MetricInput, judge, to_json
from controller.domain.machine import Record, StatusNote
from controller.domain.types import AppName, Phase, Sha, StatusState
from controller.metrics import Metrics, serve
from controller.reconcile import Outcome, Result
from localcluster.processes import free_port


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics()
    port = free_port()
    server = serve(metrics, f"127.0.0.1:{port}", interval=30)
    try:
        yield metrics, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_health_readiness_and_metrics(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 503  # no reconcile yet

    judgement = judge([MetricInput("success-rate", "ratio", "higher", Counts(100, 1000),
                                   Counts(200, 1000))])
    record = Record(AppName("sampleapp"), Phase.AWAITING, canary_revision=Sha("a" * 40),
                    analysis=json.dumps(to_json(judgement)),
                    last_status=StatusNote(Sha("a" * 40), StatusState.SUCCESS, "awaiting"))
    metrics.observe(Result(Sha("b" * 40), (Outcome("sampleapp", record),)), 0.02)

    assert httpx.get(f"{url}/readyz").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    assert 'gitops_canary_app_phase{app="sampleapp",phase="AwaitingPromotion"} 1.0' in text
    assert 'gitops_canary_app_phase{app="sampleapp",phase="Analyzing"} 0.0' in text
    assert 'gitops_canary_analysis_score{app="sampleapp"} 100.0' in text
    assert 'gitops_canary_analysis_verdict{app="sampleapp",verdict="pass"} 1.0' in text
    assert ('gitops_canary_metric_value{app="sampleapp",metric="success-rate",'
            'variant="canary"} 0.2') in text
    assert 'gitops_canary_reconciles_total{result="ok"} 1.0' in text
    assert 'gitops_canary_transitions_total{app="sampleapp",event="verdict"} 1.0' in text
    assert httpx.get(f"{url}/nope").status_code == 404


def test_a_failed_reconcile_is_counted_and_not_ready(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    metrics.observe(Result(None, error="git fetch: unreachable"), 0.5)
    assert httpx.get(f"{url}/readyz").status_code == 503
    assert 'gitops_canary_reconciles_total{result="error"} 1.0' in httpx.get(f"{url}/metrics").text


def test_readiness_follows_the_last_reconcile(served: tuple[Metrics, str]) -> None:
    """Unready as soon as a reconcile cannot reach git or the cluster, ready again after the
    next success, however recent the success before."""
    metrics, url = served
    ok = Result(Sha("b" * 40), ())
    metrics.observe(ok, 0.1)
    assert httpx.get(f"{url}/readyz").status_code == 200
    metrics.observe(Result(None, error="reading app records: Kubernetes API unreachable"), 30.0)
    failed = httpx.get(f"{url}/readyz")
    assert (failed.status_code, failed.text) == (503, "not ready: the last reconcile failed\n")
    assert httpx.get(f"{url}/healthz").status_code == 200  # failing is not being stuck
    metrics.observe(ok, 0.1)
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_liveness_fails_when_the_loop_stops_turning(served: tuple[Metrics, str]) -> None:
    metrics, url = served  # interval 30 s: stuck after 90 s without a finished iteration
    metrics.started = time.monotonic() - 299  # the first iteration (a clone) gets 300 s
    assert httpx.get(f"{url}/healthz").status_code == 200
    metrics.started = time.monotonic() - 301
    stuck = httpx.get(f"{url}/healthz")
    assert stuck.status_code == 503, stuck.text
    metrics.observe(Result(Sha("b" * 40), ()), 0.1)
    assert httpx.get(f"{url}/healthz").status_code == 200
    metrics.last_finished = time.monotonic() - 89
    assert httpx.get(f"{url}/healthz").status_code == 200
    metrics.last_finished = time.monotonic() - 91
    assert httpx.get(f"{url}/healthz").status_code == 503
    assert httpx.get(f"{url}/readyz").status_code == 200  # readiness is about outcomes
    # A short interval still allows a minute.
    metrics.last_finished = time.monotonic() - 59
    assert metrics.alive(interval=2)
    metrics.last_finished = time.monotonic() - 61
    assert not metrics.alive(interval=2)


def test_the_webhook_receiver_wakes_on_genuine_pushes_only(
        caplog: pytest.LogCaptureFixture) -> None:
    secret, body = "hook-secret", b'{"ref": "refs/heads/main"}'
    woken = threading.Event()
    metrics, port = Metrics(), free_port()
    server = serve(metrics, f"127.0.0.1:{port}", 30, on_push=woken.set, webhook_secret=secret)
    url = f"http://127.0.0.1:{port}/webhook"
    try:
        forged = httpx.post(url, content=body, headers={
            "X-Gitea-Event": "push", "X-Gitea-Signature": "0" * 64})
        assert forged.status_code == 401
        assert not woken.is_set()
        assert secret not in caplog.text
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        genuine = httpx.post(url, content=body, headers={
            "X-Gitea-Event": "push", "X-Gitea-Signature": signature})
        assert genuine.status_code == 202
        assert woken.is_set()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'gitops_canary_webhooks_total{forge="gitea",verdict="forged"} 1.0' in text
        assert 'gitops_canary_webhooks_total{forge="gitea",verdict="accepted"} 1.0' in text
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_secret_webhooks_are_refused() -> None:
    port = free_port()
    server = serve(Metrics(), f"127.0.0.1:{port}", 30, on_push=lambda: None)
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/webhook", content=b"{}",
                              headers={"X-Gitea-Event": "push", "X-Gitea-Signature": "x"})
        assert response.status_code == 403
    finally:
        server.shutdown()
        server.server_close()
