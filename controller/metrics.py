"""The controller's HTTP face: /metrics, /healthz, /readyz, and the push webhook receiver.

Every reconcile's Result is turned into gauges and counters here, in one place: phases per app,
the last analysis (verdict, score, per-metric baseline and canary values) and transition
counters that the Grafana dashboard draws as annotations (canary start, verdict, promote,
reject).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller import __version__
from controller.domain.types import Phase, StatusState
from controller.domain.webhooks import Hook, classify
from controller.edges.watch import Informer
from controller.reconcile import Result

log = logging.getLogger(__name__)

EVENTS = {  # (state, first word of the description) -> transition, for the dashboard
    (StatusState.PENDING, "canary"): "canary_started",
    (StatusState.SUCCESS, "promoted"): "promoted",
    (StatusState.FAILURE, "rejected"): "rejected",
}


class _Watches(Collector):
    """The watched copy, read when scraped: is each informer trusted (listed and following),
    how often it had to list, how many events it received."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["kind", "namespace"]
        synced = GaugeMetricFamily("gitops_canary_watch_synced", "1 while an informer's copy "
                                   "is trusted (listed, watch following); 0 before, after a "
                                   "failure until listed again, or refused", labels=labels)
        lists = CounterMetricFamily("gitops_canary_watch_lists", "Lists of an informer: one, "
                                    "and one per gap in its watch", labels=labels)
        events = CounterMetricFamily("gitops_canary_watch_events", "Watch events received",
                                     labels=labels)
        for informer in self.metrics.watches():
            names = [informer.kind, informer.namespace or ""]
            synced.add_metric(names, 1.0 if informer.synced else 0.0)
            lists.add_metric(names, informer.lists)
            events.add_metric(names, informer.events)
        yield from (synced, lists, events)


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
        self.e_value = Gauge("gitops_canary_metric_e_value",
                             "Evidence that the canary is worse (e-value of the last look; the "
                             "metric fails at 1/alpha, 100 by default)", ["app", "metric"],
                             registry=r)
        self.webhooks = Counter("gitops_canary_webhooks", "Webhook requests by verdict",
                                ["forge", "verdict"], registry=r)
        self.transitions = Counter("gitops_canary_transitions",
                                   "Canary events: canary_started, verdict, promoted, rejected",
                                   ["app", "event"], registry=r)
        self.drift = Counter("gitops_canary_drift",
                             "Objects found differing from git: corrected, or only reported "
                             "(drift: report; counted once per drift)", ["app", "outcome"],
                             registry=r)
        self.watches: Callable[[], list[Informer]] = list  # `Kube.watches`, when watching
        r.register(_Watches(self))
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
            if outcome.drift:
                self.drift.labels(app, "corrected" if outcome.drift_corrected else "reported") \
                    .inc(len(outcome.drift))
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
            if metric.get("e_value") is not None:
                self.e_value.labels(app, metric["name"]).set(float(metric["e_value"]))

    def alive(self, interval: float) -> bool:
        """Alive while loop iterations keep finishing: a loop stuck (a hung fetch, say) is not,
        and a restart is the cure the liveness probe can give.

        An iteration ends at most `interval` after the last one plus one reconcile, and every
        call a reconcile makes has its own deadline, far below a minute: three intervals (at
        least 60 s, so that a short --interval does not turn one slow reconcile into a restart)
        is a loop that no longer turns. The first iteration clones the repository, which can
        take minutes for a large one: until it ends, the allowance is ten intervals (at least
        300 s)."""
        if self.last_finished is None:
            return time.monotonic() - self.started < max(10 * interval, 300)
        return time.monotonic() - self.last_finished < max(3 * interval, 60)

    def ready(self, interval: float) -> bool:
        """Ready while the last finished reconcile succeeded: one that could not reach git or
        the cluster (`Result.error`) makes it unready at once, the next success ready again.
        How recently does not matter here, `alive` watches that.

        `observe` stamps `last_finished`, then `last_success` when there was no error: a
        success is the last thing that happened when it is no older than the last finish.
        A standby (run.py) clears `last_success`: it never counts as ready."""
        del interval  # readiness follows outcomes, not time
        return self.last_success is not None and \
            (self.last_finished is None or self.last_success >= self.last_finished)


MAX_WEBHOOK_BODY = 1024 * 1024  # push events are typically tens of KiB
REQUEST_TIMEOUT = 10.0  # seconds a client may stay silent, at any point of its request
MAX_CONNECTIONS = 64


def _body_length(headers: Message) -> tuple[int, bytes] | int:
    """The declared length of a webhook body, or the status that refuses the request unread.

    Chunked or otherwise transfer-encoded bodies have no length to check before reading, and
    `rfile.read` of a negative length reads to the end of the stream: only one plain, decimal,
    small Content-Length is taken."""
    if headers.get("Transfer-Encoding") is not None:
        return 411, b"a Content-Length is required, chunked bodies are not taken\n"
    declared = headers.get_all("Content-Length") or []
    if not declared:
        return 411, b"a Content-Length is required\n"
    value = str(declared[0]).strip()
    if len(declared) > 1 or not (value.isascii() and value.isdigit()):
        return 400, b"bad Content-Length\n"
    if len(value) > 16 or int(value) > MAX_WEBHOOK_BODY:
        return 413, b"too large\n"
    return int(value)


class _Server(ThreadingHTTPServer):
    """At most `max_connections` requests in flight, one thread each. Every thread holds a slot
    from its start to its socket's close; a connection beyond the cap is answered 503 and closed
    by the accepting thread itself, so a flood of idle sockets costs neither threads nor memory.
    """

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._full = False  # only the accepting thread reads and writes it
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            if not self._full:  # once per flood, not once per connection
                log.warning("%d connections open: refusing more (first from %s)",
                            self.max_connections, client_address[0])
            self._full = True
            _turn_away(request)
            self.shutdown_request(request)
            return
        self._full = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started, so none will release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, not the default traceback on stderr: a reset or a stalled client is
        routine for a port on the network, and a traceback could quote what the client sent."""
        kind = type(sys.exc_info()[1]).__name__
        log.warning("connection from %s failed: %s", client_address[0], kind)


def _turn_away(request: socket.socket) -> None:
    """A best-effort 503 on a connection beyond the cap: never blocks the accepting thread."""
    try:
        request.setblocking(False)
        request.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")
    except OSError:
        pass


def serve(metrics: Metrics, address: str, interval: float,
          on_push: Callable[[], bool | None] | None = None,
          webhook_secret: str | None = None, *,
          timeout: float = REQUEST_TIMEOUT,
          max_connections: int = MAX_CONNECTIONS) -> ThreadingHTTPServer:
    """Serve in a thread. POST /webhook wakes the loop (`on_push`) for a genuine push;
    `on_push` returning False (a standby) refuses it with 503.

    The port is open to whoever can reach it: a client silent for `timeout` seconds is
    dropped, at most `max_connections` are handled at once, and a webhook body is read only
    once its length is known to be at most MAX_WEBHOOK_BODY. Port 0 picks a free port
    (`server.server_address` tells which)."""
    host, _, port = address.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path != "/webhook" or on_push is None:
                self._refuse(404, b"not found\n")
                return
            if not webhook_secret:
                self._refuse(403, b"webhooks need --webhook-secret-file\n")
                return
            length = _body_length(self.headers)
            if isinstance(length, tuple):
                log.warning("webhook from %s refused unread: %d %s", self.client_address[0],
                            length[0], length[1].decode().strip())
                self._refuse(*length)
                return
            body = self.rfile.read(length)
            if len(body) < length:
                self.close_connection = True  # the client hung up mid-body
                return
            forge, verdict = classify(dict(self.headers.items()), body, webhook_secret)
            metrics.webhooks.labels(forge, str(verdict)).inc()
            if verdict in (Hook.UNSIGNED, Hook.FORGED):
                log.warning("webhook from %s refused: %s (%s)", self.client_address[0],
                            verdict, forge)
                self._send(401, f"{verdict}\n".encode())
                return
            if verdict is Hook.ACCEPTED:
                if on_push() is False:
                    # A standby: only the leader reconciles. 503 tells the forge (and whoever
                    # reads its delivery log) that this push woke nobody here.
                    self._refuse(503, b"standby: not the leader\n")
                    return
                log.info("push webhook from %s: reconciling now", forge)
            self._send(202 if verdict is Hook.ACCEPTED else 200, f"{verdict}\n".encode())

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = metrics.alive(interval)
                self._send(200 if ok else 503,
                           b"ok\n" if ok else b"stuck: no loop iteration finished lately\n")
            elif self.path == "/readyz":
                if metrics.ready(interval):
                    self._send(200, b"ok\n")
                elif metrics.last_success is None:
                    self._send(503, b"not ready: no reconcile succeeded yet\n")
                else:
                    self._send(503, b"not ready: the last reconcile failed\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self, code: int, body: bytes) -> None:
            """Answer without reading the body, then close: left unread on a kept-alive
            connection, the body would be parsed as the next request."""
            self.close_connection = True
            self._send(code, body)

        def log_message(self, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the controller's own log

    Handler.timeout = timeout  # StreamRequestHandler.setup puts it on every socket
    server = _Server((host or "127.0.0.1", int(port)), Handler, max_connections)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
