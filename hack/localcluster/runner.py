"""A stand-in for the kubelet and kube-proxy of the local cluster: real processes behind pods.

kwok marks pods Running and Ready with a loopback IP (127.N.x.y) but runs nothing. `PodRunner`
fills that gap for the tests and the demo: it polls the pods that match a label selector and,
for each pod that is Ready, has an IP and is not being deleted, runs the sample app as a real
process listening on the pod's IP with the pod's container environment. It stops the process
when the pod goes away, stops being Ready or changes IP, and restarts a process that exits on its
own after a back-off (1 s, 2 s, 4 s, ... at most 30 s; reset after 60 s of running), as a
kubelet's CrashLoopBackOff would. It also publishes the running pods as Prometheus file_sd
targets, so the seed's queries (`requests_total{pod=~"sampleapp-canary-.*"}`) find them.

`Load` plays the client and kube-proxy: it sends HTTP GETs at a fixed rate, each one to a
uniformly random ready endpoint of a Service's EndpointSlices (as kube-proxy's iptables mode
picks per connection), and counts the answers per endpoint and status.

Not part of the product. Loopback only: the runner refuses pod IPs and `Load` refuses endpoint
IPs outside 127.0.0.0/8, so nothing here ever sends a packet off this machine.

What the runner does differently from a kubelet (on purpose, it is a test harness):
  * It runs one program (the sample app, `app`) for the first container of each pod, whatever
    the image; other containers, probes, resources and volumes are ignored. It never changes a
    pod's status (kwok owns it): a crashed process leaves its pod Ready.
  * HOST, PORT and METRICS_PORT are set by the runner (pod IP; container port named `http`, else
    8080; container port named `metrics`, else the `prometheus.io/port` annotation, else 8000) and
    win over the pod's own env. The rest of the environment is the container's `env` (literal
    values, `$(VAR)` references, `valueFrom` ConfigMap/Secret keys and simple `fieldRef`s) and
    `envFrom` (ConfigMaps and Secrets, with `prefix`), resolved at each (re)start. A missing
    ConfigMap that is not optional fails the start, which is retried with back-off.
  * Only pods annotated `prometheus.io/scrape: "true"` become scrape targets (the convention of
    the usual Kubernetes scrape config, and what manifests/deployment.yml says); pass
    `scrape_all=True` to publish every running pod.

Run it on its own (until SIGTERM or SIGINT, then it stops every process it started):

    PYTHONPATH=hack python -m localcluster.runner --kubeconfig .localcluster/default/kubeconfig \
        --namespace demo --state .localcluster/default/runner [--prometheus-state DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ipaddress
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from localcluster.prometheus import Prometheus

REPO = Path(__file__).resolve().parents[2]
DEFAULT_APP = REPO / "sampleapp" / "app.py"
DEFAULT_SELECTOR = "app=sampleapp"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
VERSION_LABEL = "gitops-canary/version"
SCRAPE_ANNOTATION = "prometheus.io/scrape"
PORT_ANNOTATION = "prometheus.io/port"
TARGETS_NAME = "pods"
# Every process the runner starts carries this variable (the state folder) so a later runner on
# the same state can find and end processes that a crashed runner left behind.
MARKER = "LOCALCLUSTER_POD_RUNNER"
# Settings the runner owns: never inherited from the runner's own environment.
OWNED = ("HOST", "PORT", "METRICS_PORT")

API_TIMEOUT = 5.0
STOP_GRACE = 5.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0

log = logging.getLogger("localcluster.runner")


class LoopbackOnlyError(ValueError):
    """An address outside 127.0.0.0/8: this harness never sends traffic off the machine."""


def check_loopback(ip: str) -> str:
    """Return `ip` if it is an IPv4 loopback address (127.0.0.0/8); raise otherwise."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError as error:
        raise LoopbackOnlyError(f"not an IP address: {ip!r}") from error
    if address not in LOOPBACK:
        raise LoopbackOnlyError(f"{ip} is outside {LOOPBACK}: refusing to send traffic there")
    return str(address)


def _api_client(api: client.ApiClient | str | Path) -> tuple[client.ApiClient, bool]:
    """The ApiClient to use and whether we created it (and so must close it)."""
    if isinstance(api, client.ApiClient):
        return api, False
    created: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(api)
    )
    return created, True


# --------------------------------------------------------------------------------------------
# Pods: what to run


@dataclass(frozen=True)
class PodSpec:
    """What the runner runs for one pod; a change of `identity` restarts the process."""

    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    metrics_port: int
    scrape: bool
    labels: Mapping[str, str]
    pod: client.V1Pod = field(compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> tuple[str, str, int, int]:
        return (self.uid, self.ip, self.port, self.metrics_port)


def _ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _container_port(container: client.V1Container, name: str) -> int | None:
    for port in container.ports or []:
        if port.name == name:
            return int(port.container_port)
    return None


def pod_spec(pod: client.V1Pod) -> PodSpec | None:
    """The process to run for `pod`, or None when the pod should have none (yet, or any more)."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    if meta is None or spec is None or status is None or not meta.name or not meta.namespace:
        return None
    if meta.deletion_timestamp is not None or not status.pod_ip or not _ready(pod):
        return None
    if not spec.containers:
        return None
    container = spec.containers[0]
    annotations = meta.annotations or {}
    metrics_port = _container_port(container, "metrics")
    if metrics_port is None:
        try:
            metrics_port = int(annotations.get(PORT_ANNOTATION, "8000"))
        except ValueError:
            metrics_port = 8000
    return PodSpec(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid or "",
        ip=status.pod_ip,
        port=_container_port(container, "http") or 8080,
        metrics_port=metrics_port,
        scrape=annotations.get(SCRAPE_ANNOTATION) == "true",
        labels=dict(meta.labels or {}),
        pod=pod,
    )


class EnvError(RuntimeError):
    """The pod's environment cannot be built yet (a missing ConfigMap, Secret or key)."""


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes a $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, value)


class _Objects:
    """ConfigMaps and Secrets read while building one environment (each read once)."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, str] | None:
        if (kind, name) not in self.cache:
            self.cache[(kind, name)] = self._read(kind, name)
        return self.cache[(kind, name)]

    def _read(self, kind: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "ConfigMap":
                cm = self.core.read_namespaced_config_map(
                    name, self.namespace, _request_timeout=API_TIMEOUT)
                return dict(cm.data or {})
            secret = self.core.read_namespaced_secret(
                name, self.namespace, _request_timeout=API_TIMEOUT)
            return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        except ApiException as error:
            if error.status == 404:
                return None
            raise


def _field(pod: client.V1Pod, path: str) -> str:
    meta, spec, status = pod.metadata, pod.spec, pod.status
    simple = {
        "metadata.name": meta.name if meta else None,
        "metadata.namespace": meta.namespace if meta else None,
        "metadata.uid": meta.uid if meta else None,
        "spec.nodeName": spec.node_name if spec else None,
        "spec.serviceAccountName": spec.service_account_name if spec else None,
        "status.podIP": status.pod_ip if status else None,
        "status.hostIP": status.host_ip if status else None,
    }
    if path in simple:
        return simple[path] or ""
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if found and meta is not None:
        values = (meta.labels if found.group(1) == "labels" else meta.annotations) or {}
        return values.get(found.group(2), "")
    raise EnvError(f"fieldRef {path!r} is not supported by the local pod runner")


def container_env(core: client.CoreV1Api, pod: client.V1Pod,
                  secret_names: set[str] | None = None) -> dict[str, str]:
    """The first container's environment as a kubelet would build it: envFrom, then env.

    The names of variables whose value comes from a Secret are added to `secret_names`.
    """
    secrets = secret_names if secret_names is not None else set()
    assert pod.metadata is not None
    assert pod.spec is not None
    namespace = pod.metadata.namespace or "default"
    container = pod.spec.containers[0]
    objects = _Objects(core, namespace)
    env: dict[str, str] = {}
    for source in container.env_from or []:
        for kind, ref in (("ConfigMap", source.config_map_ref), ("Secret", source.secret_ref)):
            if ref is None:
                continue
            data = objects.data(kind, ref.name or "")
            if data is None:
                if ref.optional:
                    continue
                raise EnvError(f"{kind} {namespace}/{ref.name} (envFrom) not found")
            for key, value in data.items():
                env[f"{source.prefix or ''}{key}"] = value
                if kind == "Secret":
                    secrets.add(f"{source.prefix or ''}{key}")
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = _expand(var.value or "", env)
            continue
        value_from = var.value_from
        if value_from.field_ref is not None:
            env[var.name] = _field(pod, value_from.field_ref.field_path)
            continue
        key_ref: client.V1ConfigMapKeySelector | client.V1SecretKeySelector | None
        kind, key_ref = "ConfigMap", value_from.config_map_key_ref
        if key_ref is None:
            kind, key_ref = "Secret", value_from.secret_key_ref
        if key_ref is None:
            raise EnvError(f"env {var.name}: only configMapKeyRef, secretKeyRef and fieldRef "
                           "are supported by the local pod runner")
        data = objects.data(kind, key_ref.name or "")
        if data is None or key_ref.key not in data:
            if key_ref.optional:
                continue
            raise EnvError(f"env {var.name}: {kind} {namespace}/{key_ref.name} "
                           f"key {key_ref.key!r} not found")
        env[var.name] = data[key_ref.key]
        if kind == "Secret":
            secrets.add(var.name)
    return env


# --------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class ProcessStatus:
    """One pod's process as `PodRunner.status()` reports it."""

    ip: str
    pid: int | None  # None while waiting out a back-off
    restarts: int
    log: Path


@dataclass
class _Process:
    spec: PodSpec
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    failures: int = 0  # consecutive; drives the back-off
    next_start: float = 0.0


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process's group (it leads its own session); fall back to the process."""
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)


def stop_processes(popens: Iterable[subprocess.Popen[bytes]], grace: float = STOP_GRACE) -> None:
    """SIGTERM all, wait up to `grace` seconds in all, SIGKILL the rest, and reap them all."""
    popens = list(popens)
    for popen in popens:
        _signal_group(popen, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for popen in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for popen in popens:
        if popen.poll() is None:
            _signal_group(popen, signal.SIGKILL)
            popen.wait(timeout=grace)


def leftovers(state: Path) -> list[int]:
    """Pids of live processes started by a runner on `state` (found by their environment)."""
    needle = f"{MARKER}={Path(state).resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle in environ and stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


def sweep(state: Path, grace: float = STOP_GRACE) -> list[int]:
    """End the processes a previous runner on `state` left behind; return those still alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = leftovers(state)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and leftovers(state) and time.monotonic() < deadline:
            time.sleep(0.05)
    return leftovers(state)


class PodRunner:
    """Run a real sample-app process for every Ready pod matching `selector` in `namespaces`.

    `api` is an ApiClient (shared, not closed here) or a kubeconfig path. `namespaces=None`
    watches every namespace. Logs go to `<state>/pods/<namespace>_<pod>.log` (the process's
    output and the runner's own lines about it, prefixed `[runner ...]`).
    """

    def __init__(
        self,
        api: client.ApiClient | str | Path,
        state: Path,
        namespaces: Sequence[str] | None,
        *,
        selector: str = DEFAULT_SELECTOR,
        app: Path = DEFAULT_APP,
        prometheus: Prometheus | None = None,
        scrape_all: bool = False,
        targets_name: str = TARGETS_NAME,
        python: str = sys.executable,
        poll_interval: float = 0.5,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.state = Path(state).resolve()
        self.logs = self.state / "pods"
        self.namespaces = list(namespaces) if namespaces is not None else None
        self.selector = selector
        self.app = Path(app).resolve()
        self.prometheus = prometheus
        self.scrape_all = scrape_all
        self.targets_name = targets_name
        self.python = python
        self.poll_interval = poll_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stop_grace = stop_grace
        self._api_arg = api
        self._api: client.ApiClient | None = None
        self._owns_api = False
        self._core: client.CoreV1Api | None = None
        self._lock = threading.Lock()
        self._processes: dict[str, _Process] = {}
        # Processes terminated but maybe not gone yet: (process, pod IP, when to SIGKILL).
        self._stopping: list[tuple[subprocess.Popen[bytes], str, float]] = []
        self._targets: list[dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._polls = 0
        self._last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("PodRunner already started")
        if not self.app.is_file():
            raise FileNotFoundError(f"the app to run does not exist: {self.app}")
        self.logs.mkdir(parents=True, exist_ok=True)
        left = sweep(self.state, self.stop_grace)
        if left:
            raise RuntimeError(f"processes of an earlier runner on {self.state} survive: {left}")
        self._api, self._owns_api = _api_client(self._api_arg)
        self._core = client.CoreV1Api(self._api)
        self._publish([])
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self._thread.start()
        log.info("pod runner started: %s in %s, logs in %s", self.selector,
                 self.namespaces or "all namespaces", self.logs)
        return self

    def stop(self) -> None:
        """Stop polling and every process (SIGTERM, SIGKILL after the grace); nothing is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=API_TIMEOUT * 3 + 5)
            if self._thread.is_alive():
                log.warning("the pod runner's thread did not end in time")
            self._thread = None
        with self._lock:
            processes, self._processes = list(self._processes.values()), {}
            stopping, self._stopping = [p for p, _, _ in self._stopping], []
        for process in processes:
            if process.popen is not None:
                self._note(process, "runner stopping: terminating the process")
        stop_processes([p.popen for p in processes if p.popen] + stopping, self.stop_grace)
        with contextlib.suppress(OSError):
            self._publish([])
        if self._owns_api and self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]
        self._api = self._core = None
        left = sweep(self.state, self.stop_grace)
        if left:
            raise RuntimeError(f"pod processes still running after stop: {left}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what is running ---------------------------------------------------------------------

    def running(self) -> dict[str, str]:
        """Pod key ("namespace/name") → pod IP, for every pod whose process is alive now."""
        with self._lock:
            return {key: p.spec.ip for key, p in self._processes.items()
                    if p.popen is not None and p.popen.poll() is None}

    def status(self) -> dict[str, ProcessStatus]:
        """Every pod the runner is responsible for, running or backing off."""
        with self._lock:
            return {
                key: ProcessStatus(
                    ip=p.spec.ip,
                    pid=p.popen.pid if p.popen is not None and p.popen.poll() is None else None,
                    restarts=p.restarts,
                    log=p.log,
                )
                for key, p in self._processes.items()
            }

    def log_path(self, namespace: str, pod: str) -> Path:
        return self.logs / f"{namespace}_{pod}.log"

    @property
    def polls(self) -> int:
        """Completed polls (a test can wait for one more to be sure a change was seen)."""
        return self._polls

    @property
    def last_error(self) -> str | None:
        """The last error of a poll (the API unreachable...), None after a good poll."""
        return self._last_error

    def wait_serving(self, count: int, timeout: float = 30.0) -> dict[str, str]:
        """Wait until `count` processes run and accept TCP on their HTTP port; return them."""
        deadline = time.monotonic() + timeout
        while True:
            running = self.running()
            with self._lock:
                ports = {key: p.spec.port for key, p in self._processes.items()}
            if len(running) == count and all(
                _accepts(ip, ports[key]) for key, ip in running.items() if key in ports
            ):
                return running
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{count} serving pod processes expected within {timeout}s, "
                                   f"running: {running}; last error: {self._last_error}")
            time.sleep(0.1)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
                self._last_error = None
            except Exception as error:  # keep polling: the API may come back
                self._last_error = f"{type(error).__name__}: {error}"
                log.warning("pod runner poll failed: %s", self._last_error)
            self._reap_stopping()
            self._polls += 1
            self._stop.wait(self.poll_interval)

    def _list_pods(self) -> list[client.V1Pod]:
        assert self._core is not None
        if self.namespaces is None:
            return list(self._core.list_pod_for_all_namespaces(
                label_selector=self.selector, _request_timeout=API_TIMEOUT).items)
        pods: list[client.V1Pod] = []
        for namespace in self.namespaces:
            try:
                pods += self._core.list_namespaced_pod(
                    namespace, label_selector=self.selector, _request_timeout=API_TIMEOUT).items
            except ApiException as error:
                if error.status != 404:
                    raise
        return pods

    def _sync(self) -> None:
        desired: dict[str, PodSpec] = {}
        for pod in self._list_pods():
            spec = pod_spec(pod)
            if spec is None:
                continue
            try:
                check_loopback(spec.ip)
            except LoopbackOnlyError as error:
                log.warning("not running pod %s: %s", spec.key, error)
                continue
            desired[spec.key] = spec

        now = time.monotonic()
        with self._lock:
            current = dict(self._processes)
        for key, process in current.items():
            want = desired.get(key)
            if want is None or want.identity != process.spec.identity:
                why = "pod gone, not Ready or deleting" if want is None else "pod changed"
                self._retire(key, process, why)
        for key, spec in desired.items():
            with self._lock:
                found = self._processes.get(key)
                if found is None:
                    found = self._processes[key] = _Process(
                        spec, self.log_path(spec.namespace, spec.name))
                else:
                    found.spec = spec  # same identity; labels may have changed
            self._tend(found, now)
        self._publish_running()

    def _retire(self, key: str, process: _Process, why: str) -> None:
        with self._lock:
            self._processes.pop(key, None)
            if process.popen is not None and process.popen.poll() is None:
                self._stopping.append(
                    (process.popen, process.spec.ip, time.monotonic() + self.stop_grace))
        if process.popen is not None:
            self._note(process, f"{why}: terminating pid {process.popen.pid}")
            _signal_group(process.popen, signal.SIGTERM)

    def _reap_stopping(self) -> None:
        with self._lock:
            stopping, self._stopping = self._stopping, []
        keep = []
        now = time.monotonic()
        for popen, ip, kill_at in stopping:
            if popen.poll() is not None:
                continue
            if now >= kill_at:
                _signal_group(popen, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=1.0)
                if popen.poll() is not None:
                    continue
            keep.append((popen, ip, kill_at))
        with self._lock:
            self._stopping = keep + self._stopping

    def _tend(self, process: _Process, now: float) -> None:
        popen = process.popen
        if popen is not None:
            code = popen.poll()
            if code is None:
                if now - process.started >= BACKOFF_RESET_AFTER:
                    process.failures = 0
                return
            popen.wait()
            process.popen = None
            ran = now - process.started
            if ran >= BACKOFF_RESET_AFTER:
                process.failures = 0
            self._backoff(process, now, f"exited with code {code} after {ran:.1f}s")
            return
        if now < process.next_start or self._ip_busy(process.spec.ip):
            return
        taken = [port for port in (process.spec.port, process.spec.metrics_port)
                 if _accepts(process.spec.ip, port)]
        if taken:
            # Not ours (ours are tracked): two clusters' kwoks could hand out the same IPs,
            # so this is likely a runner of another cluster using the same pod IP.
            self._backoff(process, now, f"{process.spec.ip} port(s) {taken} already in use by "
                                        "another process (another cluster's pod runner?)")
            return
        self._launch(process, now)

    def _backoff(self, process: _Process, now: float, what: str) -> None:
        delay = min(self.backoff_max, self.backoff_initial * 2 ** process.failures)
        process.failures += 1
        process.next_start = now + delay
        self._note(process, f"{what}; restarting in {delay:.1f}s (back-off)", logging.WARNING)

    def _ip_busy(self, ip: str) -> bool:
        """A terminating process still holds `ip`: wait for it before binding the address."""
        with self._lock:
            return any(busy == ip and popen.poll() is None for popen, busy, _ in self._stopping)

    def _launch(self, process: _Process, now: float) -> None:
        spec = process.spec
        assert self._core is not None
        try:
            secret_names: set[str] = set()
            pod_env = container_env(self._core, spec.pod, secret_names)
        except (EnvError, ApiException) as error:
            self._backoff(process, now, f"cannot build the environment: {error}")
            return
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOSTNAME": spec.name,
            **{k: v for k, v in pod_env.items() if k not in OWNED},
            "HOST": spec.ip,
            "PORT": str(spec.port),
            "METRICS_PORT": str(spec.metrics_port),
            MARKER: str(self.state),
        }
        self.logs.mkdir(parents=True, exist_ok=True)
        with process.log.open("ab") as out:
            popen = subprocess.Popen(
                [self.python, str(self.app)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.state),
                start_new_session=True,
            )
        if process.started:
            process.restarts += 1
        process.popen, process.started = popen, now
        shown = {k: "(secret)" if k in secret_names else v
                 for k, v in pod_env.items() if k not in OWNED}
        self._note(process, f"started pid {popen.pid} on {spec.ip}:{spec.port} "
                            f"(metrics :{spec.metrics_port}) env {shown}")

    def _note(self, process: _Process, message: str, level: int = logging.INFO) -> None:
        log.log(level, "%s: %s", process.spec.key, message)
        with contextlib.suppress(OSError), process.log.open("a") as out:
            out.write(f"[runner {time.strftime('%H:%M:%S')}] {message}\n")

    # -- Prometheus targets ------------------------------------------------------------------

    def _publish_running(self) -> None:
        groups = []
        with self._lock:
            processes = sorted(self._processes.values(), key=lambda p: p.spec.key)
            alive = [p.spec for p in processes if p.popen is not None and p.popen.poll() is None]
        for spec in alive:
            if not (spec.scrape or self.scrape_all):
                continue
            labels = {"namespace": spec.namespace, "pod": spec.name}
            if "app" in spec.labels:
                labels["app"] = spec.labels["app"]
            if VERSION_LABEL in spec.labels:
                labels["version"] = spec.labels[VERSION_LABEL]
            groups.append({"targets": [f"{spec.ip}:{spec.metrics_port}"], "labels": labels})
        self._publish(groups)

    def _publish(self, groups: list[dict[str, Any]]) -> None:
        if self.prometheus is None or groups == self._targets:
            return
        self.prometheus.write_targets(self.targets_name, groups)
        self._targets = groups


def _accepts(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((check_loopback(ip), port))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------------------------
# Load: the client, spread over the ready endpoints as kube-proxy would


@dataclass(frozen=True)
class LoadStats:
    """Requests sent per endpoint IP and status ("200", "500", or an error such as
    "ConnectError"); `unroutable` counts the requests due while the Service had no ready
    endpoint (kube-proxy would reject those)."""

    per_endpoint: dict[str, dict[str, int]]
    unroutable: int
    elapsed: float
    endpoints: tuple[str, ...]  # the ready endpoint IPs at the last refresh

    @property
    def sent(self) -> int:
        return sum(self.by_endpoint.values())

    @property
    def by_endpoint(self) -> dict[str, int]:
        return {ip: sum(statuses.values()) for ip, statuses in self.per_endpoint.items()}

    @property
    def by_status(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for statuses in self.per_endpoint.values():
            total.update(statuses)
        return dict(total)


class Load:
    """HTTP GETs at `qps` to uniformly random ready endpoints of a Service, loopback only.

    `port` names the Service port (its number or name; None if it has just one); the request
    goes to the matching EndpointSlice port. Bounded by `duration` seconds and/or
    `max_requests` (at least one is required). Endpoints are refreshed every `refresh` seconds;
    an endpoint IP outside 127.0.0.0/8 raises LoopbackOnlyError (from `start()` if present at
    the first refresh, else from `stop()`/`wait()`, the load having stopped at once).
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        service: str,
        port: int | str | None = None,
        *,
        qps: float = 50.0,
        workers: int = 4,
        duration: float | None = None,
        max_requests: int | None = None,
        path: str = "/",
        timeout: float = 1.0,
        refresh: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if duration is None and max_requests is None:
            raise ValueError("a Load needs a bound: duration and/or max_requests")
        if not 0 < qps <= 2000:
            raise ValueError(f"qps must be in (0, 2000], got {qps}")
        if not 1 <= workers <= 64:
            raise ValueError(f"workers must be from 1 to 64, got {workers}")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        self.discovery = client.DiscoveryV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace, self.service, self.port = namespace, service, port
        self.qps, self.workers, self.path, self.timeout = qps, workers, path, timeout
        self.duration, self.max_requests, self.refresh = duration, max_requests, refresh
        self._rng = rng or random.Random()  # noqa: S311 - load balancing, not secrets
        self._lock = threading.Lock()
        self._endpoints: list[tuple[str, int]] = []
        self._counts: dict[str, Counter[str]] = {}
        self._unroutable = 0
        self._reserved = 0
        self._next = 0.0
        self._started = 0.0
        self._ended: float | None = None
        self._active = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._port_name: str | None = None

    def start(self) -> Self:
        if self._threads:
            raise RuntimeError("Load already started")
        self._port_name = self._service_port_name()
        self._refresh()  # raises here if an endpoint is not loopback
        self._started = self._next = time.monotonic()
        self._active = self.workers
        self._threads = [threading.Thread(target=self._refresher, name="load-refresh",
                                          daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
                          for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def wait(self, timeout: float | None = None) -> LoadStats:
        """Wait for the bound (duration/max_requests) to be reached, then stop; return stats."""
        limit = timeout
        if limit is None:
            limit = (self.duration if self.duration is not None
                     else (self.max_requests or 0) / self.qps) + self.timeout + 10
        deadline = time.monotonic() + limit
        for thread in self._threads[1:]:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.stop()
        return self.stats()

    def stop(self) -> None:
        """Stop sending (requests in flight finish within `timeout`); raise a background error."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + API_TIMEOUT + 5)
        if self._ended is None and self._started:
            self._ended = time.monotonic()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def done(self) -> bool:
        """Started, and every worker has finished (bound reached or stopped)."""
        with self._lock:
            return bool(self._threads) and self._active == 0

    def stats(self) -> LoadStats:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return LoadStats(
                per_endpoint={ip: dict(c) for ip, c in self._counts.items()},
                unroutable=self._unroutable,
                elapsed=end - self._started if self._started else 0.0,
                endpoints=tuple(ip for ip, _ in self._endpoints),
            )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- endpoints ---------------------------------------------------------------------------

    def _service_port_name(self) -> str | None:
        service = self.core.read_namespaced_service(self.service, self.namespace,
                                                    _request_timeout=API_TIMEOUT)
        ports = (service.spec.ports if service.spec else None) or []
        if self.port is None:
            if len(ports) != 1:
                raise ValueError(f"service {self.namespace}/{self.service} has {len(ports)} "
                                 "ports: name the one to load")
            return ports[0].name
        for port in ports:
            if port.port == self.port or (port.name is not None and port.name == self.port):
                return port.name
        raise ValueError(f"service {self.namespace}/{self.service} has no port {self.port!r}")

    def _refresh(self) -> None:
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={self.service}",
            _request_timeout=API_TIMEOUT).items
        endpoints: set[tuple[str, int]] = set()
        for item in slices:
            if item.address_type != "IPv4":
                continue
            numbers = [p.port for p in item.ports or []
                       if (p.name or None) == (self._port_name or None) and p.port]
            if not numbers:
                continue
            for endpoint in item.endpoints or []:
                conditions = endpoint.conditions
                # A nil `ready` means ready (discovery.k8s.io/v1).
                if conditions is not None and conditions.ready is False:
                    continue
                for address in endpoint.addresses:
                    endpoints.add((check_loopback(address), int(numbers[0])))
        with self._lock:
            self._endpoints = sorted(endpoints)

    def _refresher(self) -> None:
        while not self._stop.wait(self.refresh):
            if self.done:
                return
            try:
                self._refresh()
            except LoopbackOnlyError as error:
                self._error = error
                with self._lock:
                    self._endpoints = []
                self._stop.set()
                return
            except Exception as error:  # keep the last endpoints; try again
                log.warning("refreshing endpoints of %s/%s failed: %s",
                            self.namespace, self.service, error)

    # -- sending -----------------------------------------------------------------------------

    def _slot(self) -> float | None:
        """When to send the next request, or None once the bound is reached."""
        with self._lock:
            if self.max_requests is not None and self._reserved >= self.max_requests:
                return None
            now = time.monotonic()
            slot = max(self._next, now)  # behind schedule: no catch-up burst
            if self.duration is not None and slot >= self._started + self.duration:
                return None
            self._next = slot + 1.0 / self.qps
            self._reserved += 1
            return slot

    def _pick(self) -> tuple[str, int] | None:
        with self._lock:
            if not self._endpoints:
                self._unroutable += 1
                return None
            return self._rng.choice(self._endpoints)

    def _send_until_bound(self) -> None:
        with httpx.Client(trust_env=False, timeout=self.timeout, follow_redirects=False) as http:
            while not self._stop.is_set():
                slot = self._slot()
                if slot is None:
                    return
                if self._stop.wait(max(0.0, slot - time.monotonic())):
                    return
                endpoint = self._pick()
                if endpoint is None:
                    continue
                ip, port = endpoint
                url = f"http://{check_loopback(ip)}:{port}{self.path}"
                try:
                    status = str(http.get(url).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with self._lock:
                    self._counts.setdefault(ip, Counter())[status] += 1

    def _worker(self) -> None:
        try:
            self._send_until_bound()
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._ended is None:
                    self._ended = time.monotonic()


# --------------------------------------------------------------------------------------------
# Command line


def _prometheus_from_state(state: Path) -> Prometheus:
    state = state.resolve()
    try:
        port = int((state / "port").read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"runner: no running Prometheus in {state} ({error})") from error
    return Prometheus(state, port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.runner",
        description="Run the sample app for every Ready pod of the local cluster until "
                    "SIGTERM/SIGINT; then stop every process it started.")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--namespace", action="append", dest="namespaces", default=None,
                        help="namespace to watch (repeatable; default: all namespaces)")
    parser.add_argument("--state", type=Path, required=True,
                        help="folder for the pods' logs (<state>/pods/<namespace>_<pod>.log)")
    parser.add_argument("--selector", default=DEFAULT_SELECTOR,
                        help="pod label selector (default: %(default)s)")
    parser.add_argument("--app", type=Path, default=DEFAULT_APP,
                        help="the program to run per pod (default: %(default)s)")
    parser.add_argument("--prometheus-state", "--prometheus-url-state", type=Path, default=None,
                        dest="prometheus_state",
                        help="state folder of a running localcluster Prometheus to publish "
                             "the pods to as file_sd targets")
    parser.add_argument("--scrape-all", action="store_true",
                        help="publish every running pod, not only prometheus.io/scrape=true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[runner %(asctime)s] %(message)s", datefmt="%H:%M:%S")

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    prometheus = _prometheus_from_state(args.prometheus_state) if args.prometheus_state else None
    runner = PodRunner(args.kubeconfig, args.state, args.namespaces, selector=args.selector,
                       app=args.app, prometheus=prometheus, scrape_all=args.scrape_all)
    with runner:
        while not stop.wait(1.0):  # runs until a signal, by design
            pass
        log.info("signal received: stopping every pod process")
    log.info("stopped; no pod process left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
