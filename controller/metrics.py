"""The controller's HTTP face: /metrics, /healthz, /readyz, and the push webhook receiver.

Every reconcile's Result is turned into gauges and counters here, in one place: phases per app,
the last analysis (verdict, score, per-metric baseline and canary values) and transition
counters that the Grafana dashboard draws as annotations (canary start, verdict, promote,
reject).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from controller import __version__
from controller.domain.types import Phase, StatusState
from controller.domain.webhooks import Hook, classify
from controller.reconcile import Result

log = logging.getLogger(__name__)

EVENTS = {  # (state, first word of the description) -> transition, for the dashboard
    (StatusState.PENDING, "canary"): "canary_started",
    (StatusState.SUCCESS, "promoted"): "promoted",
    (StatusState.FAILURE, "rejected"): "rejected",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("gitops_canary_build_info", "Version of the controller", ["version"],
              registry=r).labels(__version__).set(1)
        self.reconciles = Counter("gitops_canary_reconciles", "Reconciles of the repository",
                                  ["result"], registry=r)
        self.duration = Histogram("gitops_canary_reconcile_duration_seconds",
                                  "Wall time of one reconcile of every app", registry=r,
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.phase = Gauge("gitops_canary_app_phase", "1 for the phase each app is in",
                           ["app", "phase"], registry=r)
        self.score = Gauge("gitops_canary_analysis_score", "Score of the last analysis (0-100)",
                           ["app"], registry=r)
        self.verdict = Gauge("gitops_canary_analysis_verdict", "1 for the last verdict",
                             ["app", "verdict"], registry=r)
        self.value = Gauge("gitops_canary_metric_value", "Last analysed value of a metric",
                           ["app", "metric", "variant"], registry=r)
        self.p_value = Gauge("gitops_canary_metric_p_value", "p-value of the last comparison",
                             ["app", "metric"], registry=r)
        self.webhooks = Counter("gitops_canary_webhooks", "Webhook requests by verdict",
                                ["forge", "verdict"], registry=r)
        self.transitions = Counter("gitops_canary_transitions",
                                   "Canary events: canary_started, verdict, promoted, rejected",
                                   ["app", "event"], registry=r)
        self._seen_status: dict[str, Any] = {}
        self._seen_analysis: dict[str, str | None] = {}
        self.last_success: float | None = None
        self.started = time.monotonic()
        self.last_finished: float | None = None

    def observe(self, result: Result, seconds: float) -> None:
        self.duration.observe(seconds)
        self.reconciles.labels("error" if result.error else "ok").inc()
        self.last_finished = time.monotonic()
        if result.error is None:
            self.last_success = time.monotonic()
        for outcome in result.outcomes:
            app, record = outcome.app, outcome.record
            if app not in self._seen_analysis:
                # Every series exists from the start at 0, so the first transition is a change.
                for name in ("canary_started", "verdict", "promoted", "rejected"):
                    self.transitions.labels(app, name)
                self._seen_analysis[app] = None
            for phase in Phase:
                self.phase.labels(app, str(phase)).set(1 if record.phase is phase else 0)
            status = record.last_status
            if status is not None and self._seen_status.get(app) != status:
                self._seen_status[app] = status
                first = status.description.split(":")[0].split(" ")[0]
                event = EVENTS.get((status.state, first))
                if event:
                    self.transitions.labels(app, event).inc()
            if record.analysis != self._seen_analysis.get(app):
                self._seen_analysis[app] = record.analysis
                if record.analysis:
                    self._analysis(app, json.loads(record.analysis))

    def _analysis(self, app: str, judgement: dict[str, Any]) -> None:
        self.transitions.labels(app, "verdict").inc()
        self.score.labels(app).set(float(judgement["score"]))
        for verdict in ("pass", "marginal", "fail", "inconclusive"):
            self.verdict.labels(app, verdict).set(1 if judgement["verdict"] == verdict else 0)
        for metric in judgement["metrics"]:
            for variant in ("baseline", "canary"):
                if metric.get(variant) is not None:
                    self.value.labels(app, metric["name"], variant).set(float(metric[variant]))
            if metric.get("p_value") is not None:
                self.p_value.labels(app, metric["name"]).set(float(metric["p_value"]))

    def alive(self, interval: float) -> bool:
        """Alive while reconciles keep finishing: a loop stuck (a hung fetch, say) is not."""
        last = self.last_finished or self.started
        return time.monotonic() - last < max(10 * interval, 300)

    def ready(self, interval: float) -> bool:
        """Ready once a reconcile succeeded recently (git and the cluster answered)."""
        return self.last_success is not None and \
            time.monotonic() - self.last_success < max(3 * interval, 60)


MAX_WEBHOOK_BODY = 5 * 1024 * 1024


def serve(metrics: Metrics, address: str, interval: float,
          on_push: Callable[[], None] | None = None,
          webhook_secret: str | None = None) -> ThreadingHTTPServer:
    """Serve in a thread. POST /webhook wakes the loop (`on_push`) for a genuine push."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/webhook" or on_push is None:
                self._send(404, b"not found\n")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not webhook_secret or length > MAX_WEBHOOK_BODY:
                self._send(403 if not webhook_secret else 413,
                           b"webhooks need --webhook-secret-file\n" if not webhook_secret
                           else b"too large\n")
                return
            body = self.rfile.read(length)
            forge, verdict = classify(dict(self.headers.items()), body, webhook_secret)
            metrics.webhooks.labels(forge, str(verdict)).inc()
            if verdict in (Hook.UNSIGNED, Hook.FORGED):
                log.warning("webhook from %s refused: %s (%s)", self.client_address[0],
                            verdict, forge)
                self._send(401, f"{verdict}\n".encode())
                return
            if verdict is Hook.ACCEPTED:
                log.info("push webhook from %s: reconciling now", forge)
                on_push()
            self._send(202 if verdict is Hook.ACCEPTED else 200, f"{verdict}\n".encode())

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = metrics.alive(interval)
                self._send(200 if ok else 503, b"ok\n" if ok else b"no reconcile finished\n")
            elif self.path == "/readyz":
                ok = metrics.ready(interval)
                self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the controller's own log

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
