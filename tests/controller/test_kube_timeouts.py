"""Hung servers cost a bounded wait, and a record that does not parse is quarantined.

The hung servers are real loopback sockets: one accepts and never sends a byte (an API server
or a Prometheus frozen mid-outage), one answers API discovery and then nothing else (so that
every verb, not only discovery, meets its timeout). Only ceilings are asserted: a call must
give up within its timeout plus a margin for a loaded machine, never hang. The quarantine runs
against the real cluster.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.analysis import analyze
from controller.domain.machine import Record
from controller.domain.policy import Policy
from controller.domain.sequential import Result as MetricResult
from controller.domain.sequential import Verdict
from controller.domain.types import AppName
from controller.edges.kube import (
    MANAGED_BY,
    QUARANTINE_PREFIX,
    QUARANTINED,
    QUARANTINED_FROM,
    RECORD_PREFIX,
    Kube,
    connect,
)
from controller.edges.prometheus import Prometheus
from controller.errors import TransientError

TIMEOUT = 1.0  # seconds, connect and read, for the clients under test
MARGIN = 4.0  # a loaded machine's slack on top of the timeouts a call may spend
BLOCKED = 60.0  # a call still running after this long has no timeout at all: fail, not hang


class Silent:
    """A loopback TCP server that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                self.held.append(self.listener.accept()[0])
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for sock in self.held:
            sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    try:
        yield server
    finally:
        server.close()


CONFIGMAPS = {"name": "configmaps", "singularName": "configmap", "namespaced": True,
              "kind": "ConfigMap", "verbs": ["create", "delete", "get", "list", "patch"]}
DISCOVERY = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [CONFIGMAPS]},
}


@dataclass
class Stalling:
    port: int
    stalled: list[str]  # "METHOD path" of each request left unanswered


@pytest.fixture
def stalling() -> Iterator[Stalling]:
    """An HTTP API server that answers discovery and leaves every other request unanswered."""
    release = threading.Event()
    stalled: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in DISCOVERY:
                body = json.dumps(DISCOVERY[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.stall()

        def stall(self) -> None:
            stalled.append(f"{self.command} {self.path}")
            release.wait()
            self.close_connection = True

        do_PATCH = do_POST = do_DELETE = do_PUT = stall

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Stalling(server.server_address[1], stalled)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def api_for(server: str, tmp_path: Path) -> client.ApiClient:
    """An API client for `server` built the way the controller builds its own (`connect`)."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "hung",
        "clusters": [{"name": "hung", "cluster": {"server": server,
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "hung", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "hung", "context": {"cluster": "hung", "user": "hung"}}],
    }))
    return connect(str(path))


def gives_up(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run `call` in a thread: the error it ended with and the seconds it took. A call that
    never ends fails the test after BLOCKED seconds instead of hanging it."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            call()
        except BaseException as error:  # handed to the test
            outcome["error"] = error
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BLOCKED)
    if thread.is_alive():
        pytest.fail(f"still blocked after {BLOCKED:.0f}s: the call has no timeout")
    return outcome.get("error"), outcome["elapsed"]


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_silent_api_server_is_a_transient_error_within_the_timeout(
        silent: Silent, tmp_path: Path, scheme: str) -> None:
    """https: the TLS handshake never completes; http: the request is sent, no answer comes.
    Either way API discovery, the first thing any call does, gives up in time."""
    api = api_for(f"{scheme}://127.0.0.1:{silent.port}", tmp_path)
    try:
        kube = Kube(api, timeout=(TIMEOUT, TIMEOUT))
        error, elapsed = gives_up(lambda: kube.get(("ConfigMap", "default", "anything")))
    finally:
        api.close()
    assert isinstance(error, TransientError), error
    assert "unreachable" in str(error) or "API discovery" in str(error), error
    assert elapsed < TIMEOUT + MARGIN, elapsed
    assert len(silent.held) == 1  # asked once: no retry doubles the wait


RECORD = Record(AppName("web"))
CALLS: dict[str, Callable[[Kube], Any]] = {
    "get": lambda kube: kube.get(("ConfigMap", "default", "web")),
    "list records": lambda kube: kube.records(),
    "apply": lambda kube: kube.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "web", "namespace": "apps"}}]),
    "save record": lambda kube: kube.save_record(RECORD),
    "delete": lambda kube: kube.delete(("ConfigMap", "apps", "web")),
}


@pytest.mark.parametrize("verb", sorted(CALLS))
def test_every_verb_gives_up_on_a_server_that_stops_answering(
        stalling: Stalling, tmp_path: Path, verb: str) -> None:
    api = api_for(f"http://127.0.0.1:{stalling.port}", tmp_path)
    try:
        kube = Kube(api, state_namespace="state", timeout=(TIMEOUT, TIMEOUT))
        error, elapsed = gives_up(lambda: CALLS[verb](kube))
    finally:
        api.close()
    assert isinstance(error, TransientError), error
    assert "unreachable" in str(error), error
    assert elapsed < TIMEOUT + MARGIN, elapsed
    assert len(stalling.stalled) == 1, stalling.stalled  # asked once, not retried


POLICY = Policy(app="sampleapp", namespace="demo")


def test_a_silent_prometheus_is_no_data_within_the_timeout(silent: Silent) -> None:
    prometheus = Prometheus(f"http://127.0.0.1:{silent.port}", timeout=TIMEOUT)
    try:
        error, elapsed = gives_up(lambda: prometheus.scalar("up"))
        assert isinstance(error, TransientError), error
        assert elapsed < TIMEOUT + MARGIN, elapsed

        judged: list[Any] = []
        error, elapsed = gives_up(lambda: judged.append(
            analyze(prometheus, POLICY, [("Deployment", "sampleapp")], time.time() - 60,
                    time.time())))
    finally:
        prometheus.close()
    assert error is None, error
    (judgement,) = judged
    assert judgement.verdict is Verdict.INCONCLUSIVE
    assert [m.result for m in judgement.metrics] == [MetricResult.NODATA]
    # One query per variant, each given up after its timeout.
    assert elapsed < 2 * TIMEOUT + MARGIN, elapsed


# --- quarantine, against the real cluster ----------------------------------------------------

BAD = json.dumps({"app": "web", "phase": "Promotin"})  # a hand edit with a typo


def write_record(api: client.ApiClient, namespace: str, app: str, text: str) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(namespace, {
        "metadata": {"name": f"{RECORD_PREFIX}{app}", "labels": dict(MANAGED_BY)},
        "data": {"record": text}})


def quarantined(api: client.ApiClient, namespace: str) -> list[client.V1ConfigMap]:
    selector = ",".join(f"{k}={v}" for k, v in QUARANTINED.items())
    return list(client.CoreV1Api(api).list_namespaced_config_map(
        namespace, label_selector=selector).items)


def names(api: client.ApiClient, namespace: str) -> set[str]:
    return {str(cm.metadata.name)
            for cm in client.CoreV1Api(api).list_namespaced_config_map(namespace).items}


@pytest.mark.cluster
def test_a_record_that_does_not_parse_is_quarantined_and_the_others_go_on(
        api_client: client.ApiClient, state_namespace: str,
        caplog: pytest.LogCaptureFixture) -> None:
    kube = Kube(api_client, state_namespace=state_namespace)
    kube.save_record(Record(AppName("shop")))
    write_record(api_client, state_namespace, "web", BAD)

    records = kube.records()

    assert set(records) == {AppName("shop")}
    (copy,) = quarantined(api_client, state_namespace)
    assert re.fullmatch(rf"{re.escape(QUARANTINE_PREFIX)}web\.\d{{10}}", copy.metadata.name)
    assert copy.data == {"record": BAD}
    assert copy.metadata.annotations[QUARANTINED_FROM] == f"{state_namespace}/{RECORD_PREFIX}web"
    assert not set(MANAGED_BY) & set(copy.metadata.labels)  # never listed as a record
    assert f"{RECORD_PREFIX}web" not in names(api_client, state_namespace)
    assert f"{RECORD_PREFIX}shop" in names(api_client, state_namespace)
    assert any(r.levelname == "ERROR" and "app web" in r.getMessage()
               and copy.metadata.name in r.getMessage() for r in caplog.records), caplog.text

    # The app is new again: its next record is saved and read as any other.
    kube.save_record(Record(AppName("web")))
    assert set(kube.records()) == {AppName("shop"), AppName("web")}
    assert len(quarantined(api_client, state_namespace)) == 1


@pytest.mark.cluster
def test_a_copy_left_by_an_interrupted_quarantine_is_reused(
        api_client: client.ApiClient, state_namespace: str) -> None:
    """Killed between the copy and the delete: the next listing finds its own copy and only
    deletes the original. A copy of other data (an earlier, different bad record) is no
    reason not to keep this one."""
    core = client.CoreV1Api(api_client)
    source = f"{state_namespace}/{RECORD_PREFIX}web"
    for name, text in ((f"{QUARANTINE_PREFIX}web.1000000000", BAD),
                       (f"{QUARANTINE_PREFIX}web.900000000", "{}")):
        core.create_namespaced_config_map(state_namespace, {
            "metadata": {"name": name, "labels": dict(QUARANTINED),
                         "annotations": {QUARANTINED_FROM: source}},
            "data": {"record": text}})
    write_record(api_client, state_namespace, "web", BAD)

    assert Kube(api_client, state_namespace=state_namespace).records() == {}

    assert names(api_client, state_namespace) >= {f"{QUARANTINE_PREFIX}web.1000000000",
                                                  f"{QUARANTINE_PREFIX}web.900000000"}
    assert len(quarantined(api_client, state_namespace)) == 2
    assert f"{RECORD_PREFIX}web" not in names(api_client, state_namespace)


@pytest.mark.cluster
def test_a_read_only_caller_leaves_a_bad_record_in_place(
        api_client: client.ApiClient, state_namespace: str) -> None:
    write_record(api_client, state_namespace, "web", BAD)
    assert Kube(api_client, state_namespace=state_namespace).records(quarantine=False) == {}
    assert f"{RECORD_PREFIX}web" in names(api_client, state_namespace)
    assert quarantined(api_client, state_namespace) == []
