"""What both benchmarks share: the cluster they run against, git in a subprocess, a throw-away
namespace, deploy-repo manifests and the summary figures.

Not a benchmark itself. The scripts import it as a sibling module (`python bench/<script>.py`
puts bench/ first on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from controller.domain.machine import Record
from controller.edges.kube import RECORD_PREFIX, record_from_json
from localcluster import cluster as localcluster

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".localcluster" / "bench"


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def kubeconfig() -> Iterator[Path]:
    """$KUBECONFIG when set; else the local cluster in .localcluster/bench, started here and
    stopped at the end (left up if it was already running before this script)."""
    if os.environ.get("KUBECONFIG"):
        yield Path(os.environ["KUBECONFIG"])
        return
    running = localcluster.load(STATE)
    if running is not None and localcluster.healthy(running):
        say(f"using the running bench cluster in {STATE} (left up)")
        yield running.kubeconfig
        return
    localcluster.reset_data(STATE)
    started = localcluster.up(STATE, nodes=1)
    try:
        yield started.kubeconfig
    finally:
        localcluster.down(STATE)


@contextlib.contextmanager
def api_client(path: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(path))
    try:
        yield api
    finally:
        api.close()


@contextlib.contextmanager
def namespace(api: client.ApiClient, stem: str) -> Iterator[str]:
    """A fresh namespace and its `<name>-state` twin for the controller's records (git may
    never write there), both deleted (in the background) afterwards."""
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    for each in (name, state_of(name)):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=each)))
    try:
        yield name
    finally:
        for each in (name, state_of(name)):
            with contextlib.suppress(ApiException):
                core.delete_namespace(each, propagation_policy="Background")


def state_of(namespace: str) -> str:
    return f"{namespace}-state"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, timeout=60).stdout.strip()


@dataclass
class DeployRepo:
    """A bare repository (the "server") and a person's working clone of it."""

    remote: Path
    clone: Path

    @classmethod
    def create(cls, root: Path) -> DeployRepo:
        remote, clone = root / "remote.git", root / "clone"
        git(root, "init", "-q", "--bare", "-b", "main", str(remote))
        git(root, "clone", "-q", str(remote), str(clone))
        git(clone, "checkout", "-q", "-b", "main")
        git(clone, "config", "user.name", "Bench")
        git(clone, "config", "user.email", "bench@example.com")
        return cls(remote, clone)

    def write(self, path: str, content: dict[str, Any] | list[dict[str, Any]]) -> None:
        target = self.clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            target.write_text(yaml.safe_dump_all(content, sort_keys=False))
        else:
            target.write_text(yaml.safe_dump(content, sort_keys=False))

    def commit(self, message: str) -> str:
        """Commit everything (not pushed); return the sha."""
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "-m", message)
        return git(self.clone, "rev-parse", "HEAD")

    def push(self) -> None:
        git(self.clone, "push", "-q", "origin", "HEAD:main")


def deployment(name: str, rate: str, replicas: int) -> dict[str, Any]:
    """The sample app's Deployment; SUCCESS_RATE is the knob a change turns."""
    container = {"name": "app", "image": "sampleapp:v1",
                 "env": [{"name": "SUCCESS_RATE", "value": rate}],
                 "ports": [{"containerPort": 8080, "name": "http"}]}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [container]}}},
    }


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}


def wait_for(condition: Callable[[], Any], what: str, timeout: float,
             step: float = 0.1) -> Any:
    """Poll `condition()` until it is truthy; raise TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(step)
    raise TimeoutError(f"not within {timeout:.0f}s: {what}")


@dataclass(frozen=True)
class Summary:
    median: float
    p90: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        ordered = sorted(samples)
        # Nearest rank: the smallest sample with at least 90% of them at or below it.
        p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]
        return cls(statistics.median(ordered), p90, ordered[0], ordered[-1], len(ordered))

    def text(self, unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
        def f(value: float) -> str:
            return f"{value * scale:.{digits}f} {unit}"
        return (f"median {f(self.median)}, p90 {f(self.p90)}, min {f(self.low)}, "
                f"max {f(self.high)} (n={self.count})")


def machine(load_at_start: float) -> str:
    """The machine line of a report: cores, and the 1-minute load average at the start and now
    (other work on the machine shows here and skews the figures)."""
    return (f"{os.cpu_count()} cores, load average {load_at_start:.2f} at the start, "
            f"{os.getloadavg()[0]:.2f} at the end")


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


REQUEST_TIMEOUT = 5.0  # seconds, for each read of the cluster


class AppCluster:
    """What a benchmark reads of one app in its namespace: the Deployments and the record."""

    def __init__(self, api: client.ApiClient, ns: str, app: str = "sampleapp") -> None:
        self.apps, self.core, self.ns, self.app = (client.AppsV1Api(api), client.CoreV1Api(api),
                                                   ns, app)

    def deployment(self, name: str) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(
                name, self.ns, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def stable_rate(self) -> str | None:
        stable = self.deployment(self.app)
        if stable is None:
            return None
        pod = stable.spec.template.spec if stable.spec else None
        env = (pod.containers[0].env if pod else None) or []
        return next((e.value for e in env if e.name == "SUCCESS_RATE"), None)

    def stable_ready(self, replicas: int) -> bool:
        stable = self.deployment(self.app)
        return stable is not None and stable.status is not None \
            and stable.status.ready_replicas == replicas

    def readiness(self) -> str:
        found = []
        for name in (self.app, f"{self.app}-baseline", f"{self.app}-canary"):
            d = self.deployment(name)
            found.append(f"{name} {(d.status and d.status.ready_replicas) or 0}/"
                         f"{d.spec and d.spec.replicas}" if d else f"{name} absent")
        return ", ".join(found)

    def record(self) -> Record | None:
        try:
            cm = self.core.read_namespaced_config_map(
                f"{RECORD_PREFIX}{self.app}", self.ns, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return record_from_json(cm.data["record"]) if cm.data and "record" in cm.data else None
