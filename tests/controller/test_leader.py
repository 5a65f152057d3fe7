"""Two replicas, one leader (issue 10, deliverable 6), and a loop no reconcile can kill.

- `decide`, the pure rule of the election, on a table.
- `Elector` against the real API server, with a clock of the test's own: a holder keeps the
  Lease while it renews, stops leading before anyone may take over, and a released Lease is
  taken at once.
- Two real `gitops-canary run` processes on one repository: one holds the Lease and
  reconciles, the other stands by (alive, not ready); `kill -9` of the leader hands the Lease
  and the next commit to the standby; SIGTERM releases the Lease.
- `loop()`: a reconcile that raises is logged with its traceback and counted, and the loop goes
  on; a standby never reconciles.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from kubernetes import client

from controller.leader import LEASE_NAME, Elector, Move, Seen, decide
from controller.metrics import Metrics
from controller.reconcile import Result
from controller.run import loop
from localcluster.processes import free_port
from tests.controller.conftest import DeployRepo, deployment, git, service
from tests.waiting import eventually

APP = "apps/sampleapp"
WEBHOOK_SECRET = "leader-test-secret"
LEASE_DURATION, LEASE_RENEW = 6, 1  # seconds: short, so that the takeover test is quick


# --- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("seen", "now", "move"), [
    (None, 0.0, Move.CREATE),
    (Seen("me", "7", 15.0, changed_at=0.0), 100.0, Move.RENEW),  # ours, however old
    (Seen("other", "7", 15.0, changed_at=0.0), 14.9, Move.WAIT),
    (Seen("other", "7", 15.0, changed_at=0.0), 15.0, Move.TAKE),  # unchanged for its duration
    (Seen("other", "7", 1.0, changed_at=10.0), 10.5, Move.WAIT),  # the holder's duration counts
    (Seen(None, "7", 15.0, changed_at=10.0), 10.0, Move.TAKE),  # released
    (Seen("", "7", 15.0, changed_at=10.0), 10.0, Move.TAKE),
])
def test_decide(seen: Seen | None, now: float, move: Move) -> None:
    assert decide(seen, "me", now) is move


# --- one candidate against the real API server --------------------------------------------------


def holder(api: client.ApiClient, namespace: str) -> tuple[str | None, int | None]:
    lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE_NAME, namespace)
    return lease.spec.holder_identity, lease.spec.lease_transitions


def current_holder(api: client.ApiClient, namespace: str) -> str | None:
    """The Lease's holder; None while nobody has created it yet."""
    try:
        return holder(api, namespace)[0]
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


@pytest.mark.cluster
def test_a_lease_is_taken_only_when_its_holder_stopped_renewing_or_released_it(
        api_client: client.ApiClient, state_namespace: str) -> None:
    now = [0.0]

    def candidate(name: str) -> Elector:
        return Elector(api_client, state_namespace, name, duration=10, renew=2,
                       clock=lambda: now[0])

    a, b = candidate("a"), candidate("b")
    assert a.attempt()
    assert a.leading()
    assert not b.attempt()
    assert not b.leading()
    now[0] = 5
    assert a.attempt()  # renewed: b sees the Lease change now
    assert not b.attempt()
    now[0] = 14
    assert not b.attempt()  # 9 s without a change: not yet
    # a's last renew started at 5: it leads until 5 + 10 - 2, before b may take over.
    assert not a.leading()
    now[0] = 15
    assert b.attempt()
    assert b.leading()
    assert holder(api_client, state_namespace) == ("b", 1)
    assert not a.attempt()
    assert not a.leading()
    b.release()
    assert not b.leading()
    assert a.attempt()  # released: taken at once, no waiting out the duration
    assert holder(api_client, state_namespace) == ("a", 2)


# --- two controller processes -------------------------------------------------------------------


@dataclass
class Replica:
    identity: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def probe(self, path: str) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2.0).status_code
        except httpx.HTTPError:
            return 0

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


def start(identity: str, repo: DeployRepo, kubeconfig: Path, namespace: str,
          state_namespace: str, tmp_path: Path) -> Replica:
    port, log = free_port(), tmp_path / f"{identity}.log"
    command = [sys.executable, "-m", "controller", "--log-level", "debug", "run",
               "--repo", str(repo.remote), "--interval", "1s",
               "--kubeconfig", str(kubeconfig), "--namespaces", namespace,
               "--state-namespace", state_namespace,
               "--workdir", str(tmp_path / f"{identity}-mirror"),
               "--metrics-address", f"127.0.0.1:{port}", "--identity", identity,
               "--lease-duration", f"{LEASE_DURATION}s", "--lease-renew", f"{LEASE_RENEW}s"]
    env = {**os.environ, "GITOPS_CANARY_WEBHOOK_SECRET": WEBHOOK_SECRET}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env)
    return Replica(identity, process, port, log)


@pytest.fixture
def replicas(deploy_repo: DeployRepo, kubeconfig: Path, namespace: str, state_namespace: str,
             tmp_path: Path) -> Iterator[dict[str, Replica]]:
    deploy_repo.write("README.md", "the deploy repository\n")
    deploy_repo.commit("an empty deploy repository")
    started = {name: start(name, deploy_repo, kubeconfig, namespace, state_namespace, tmp_path)
               for name in ("replica-a", "replica-b")}
    try:
        yield started
    finally:
        for replica in started.values():
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(timeout=10)


def status_writes(repo: DeployRepo, sha: str, text: str) -> int:
    """How many times the notes' history added `text` to the note of `sha`: every status post
    is a commit of refs/notes/gitops-canary, and the controller pushes it without --force."""
    repo.note(sha)  # fetches the notes
    history = git(repo.clone, "log", "--reverse", "-p", "--format=commit %H",
                  "refs/notes/gitops-canary")
    path, count = "", 0
    for line in history.splitlines():
        if line.startswith("+++ "):
            path = line.removeprefix("+++ b/").replace("/", "")
        elif line.startswith("+") and path == sha and text in line:
            count += 1
    return count


def bootstrap(repo: DeployRepo, namespace: str, replicas: int) -> str:
    repo.write(f"{APP}/canary.yaml", {"namespace": namespace, "percentage": 25,
                                      "bootstrap": "direct"})
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10", replicas=replicas))
    repo.write(f"{APP}/service.yml", service("sampleapp"))
    return repo.commit(f"sampleapp with {replicas} replicas")


@pytest.mark.cluster
def test_two_replicas_one_leader_and_the_standby_takes_over_when_it_is_killed(
        replicas: dict[str, Replica], deploy_repo: DeployRepo, api_client: client.ApiClient,
        namespace: str, state_namespace: str) -> None:
    def lease_holder() -> str | None:
        return current_holder(api_client, state_namespace)

    def logs() -> str:
        return "\n".join(f"--- {r.identity}\n{r.tail()}" for r in replicas.values())

    first = eventually(lease_holder, "one replica to take the Lease")
    assert first in replicas, logs()
    leader = replicas[first]
    (standby,) = (r for r in replicas.values() if r is not leader)

    sha = bootstrap(deploy_repo, namespace, replicas=4)
    apps = client.AppsV1Api(api_client)
    eventually(lambda: "success: deployed to stable" in deploy_repo.note(sha),
               "the leader to deploy sampleapp to stable", timeout=120)
    # Rolled out once, by one controller: one spec, one status post.
    assert apps.read_namespaced_deployment("sampleapp", namespace).metadata.generation == 1
    assert status_writes(deploy_repo, sha, "success: deployed to stable") == 1, logs()
    # Both alive; only the leader is ready, once it has reconciled.
    assert eventually(lambda: leader.probe("/readyz") == 200, "the leader to be ready"), logs()
    assert standby.probe("/healthz") == 200, logs()
    assert standby.probe("/readyz") == 503, logs()
    assert "status gitops-canary/sampleapp" not in standby.log.read_text(), logs()

    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(timeout=10)
    eventually(lambda: lease_holder() == standby.identity,
               "the standby to take the Lease of the killed leader",
               timeout=LEASE_DURATION + 30)
    deploy_repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10", replicas=6))
    deploy_repo.commit("sampleapp: 6 replicas")
    eventually(lambda: apps.read_namespaced_deployment("sampleapp", namespace).spec.replicas == 6,
               "the new leader to apply the next commit", timeout=120)
    assert status_writes(deploy_repo, sha, "success: deployed to stable") == 1, logs()
    assert eventually(lambda: standby.probe("/readyz") == 200, "the new leader to be ready")

    # SIGTERM: the last reconcile ends, then the Lease is released for the next replica.
    standby.process.send_signal(signal.SIGTERM)
    assert standby.process.wait(timeout=30) == 0, logs()
    assert lease_holder() is None, logs()


def push_webhook(replica: Replica) -> int:
    """A genuine (signed) Gitea push webhook to a replica: its HTTP status."""
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signature = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = httpx.post(f"http://127.0.0.1:{replica.port}/webhook", content=body, timeout=5,
                          headers={"X-Gitea-Event": "push", "X-Gitea-Signature": signature},
                          trust_env=False)
    return response.status_code


@pytest.mark.cluster
def test_the_standby_finishes_a_promotion_when_the_leader_dies_mid_way(
        replicas: dict[str, Replica], deploy_repo: DeployRepo, api_client: client.ApiClient,
        namespace: str, state_namespace: str) -> None:
    """kill -9 of the leader the moment stable receives the promoted spec: the standby takes
    the Lease and finishes, with stable rolled out once and each status written once."""
    def logs() -> str:
        return "\n".join(f"--- {r.identity}\n{r.tail()}" for r in replicas.values())

    def lease_holder() -> str | None:
        return current_holder(api_client, state_namespace)

    leader = replicas[eventually(lease_holder, "one replica to take the Lease")]
    (standby,) = (r for r in replicas.values() if r is not leader)
    assert eventually(lambda: leader.probe("/readyz") == 200, "the leader ready"), logs()
    assert push_webhook(standby) == 503, logs()  # a standby refuses: it reconciles nothing
    assert push_webhook(leader) == 202, logs()

    bootstrap(deploy_repo, namespace, replicas=4)
    apps = client.AppsV1Api(api_client)

    def names() -> list[str]:
        return sorted(str(d.metadata.name)
                      for d in apps.list_namespaced_deployment(namespace).items)

    eventually(lambda: names() == ["sampleapp"], "stable", timeout=120)
    deploy_repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "20", replicas=4))
    change = deploy_repo.commit("rate 20")
    eventually(lambda: names() == ["sampleapp", "sampleapp-baseline", "sampleapp-canary"],
               "baseline and canary", timeout=120)
    deploy_repo.write(f"{APP}/canary.yaml", {"namespace": namespace, "percentage": 25,
                                             "bootstrap": "direct", "promote": change})
    deploy_repo.commit("promote rate 20")

    def stable_rate() -> str:
        d = apps.read_namespaced_deployment("sampleapp", namespace)
        return str(d.spec.template.spec.containers[0].env[0].value)

    eventually(lambda: stable_rate() == "20", "stable to receive the promoted spec", every=0.02)
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait(timeout=10)
    eventually(lambda: "success: promoted" in deploy_repo.note(change),
               "the standby to finish the promotion", timeout=LEASE_DURATION + 60)
    eventually(lambda: names() == ["sampleapp"], "baseline and canary deleted", timeout=60)
    stable = apps.read_namespaced_deployment("sampleapp", namespace)
    assert stable.metadata.annotations["deployment.kubernetes.io/revision"] == "2", logs()
    assert status_writes(deploy_repo, change, "success: promoted") == 1, logs()
    assert status_writes(deploy_repo, change, "pending: promoting") <= 1, logs()


# --- the loop -----------------------------------------------------------------------------------


class Scripted:
    """What `loop()` uses of a Reconciler: the source's URL (a remote one: nothing to watch),
    the clock and `reconcile()`, which here raises on the calls the test names."""

    def __init__(self, crash_on: set[int], stop: threading.Event, calls: int) -> None:
        self.source = SimpleNamespace(url="https://git.invalid/deploy.git")
        self.clock = time.time
        self.crash_on, self.stop, self.last = crash_on, stop, calls
        self.calls = 0

    def reconcile(self) -> Result:
        self.calls += 1
        if self.calls >= self.last:
            self.stop.set()
        if self.calls in self.crash_on:
            raise TypeError(f"reconcile {self.calls} crashed")
        return Result(None)


def run_loop(reconciler: Any, stop: threading.Event, metrics: Metrics,
             **kwargs: Any) -> threading.Thread:
    thread = threading.Thread(target=loop, args=(reconciler, 0.05, stop), daemon=True,
                              kwargs={"metrics": metrics, **kwargs})
    thread.start()
    return thread


def test_a_reconcile_that_raises_is_logged_counted_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    stop, metrics = threading.Event(), Metrics()
    reconciler = Scripted({1, 2}, stop, calls=3)
    with caplog.at_level(logging.ERROR, logger="controller.run"):
        run_loop(reconciler, stop, metrics).join(timeout=30)
    assert stop.is_set()
    assert reconciler.calls == 3
    crashes = [r for r in caplog.records if r.exc_info is not None]
    assert [str(r.exc_info[1]) for r in crashes] == ["reconcile 1 crashed", "reconcile 2 crashed"]
    counted = metrics.registry.get_sample_value
    assert counted("gitops_canary_reconciles_total", {"result": "crash"}) == 2
    assert counted("gitops_canary_reconciles_total", {"result": "ok"}) == 1
    assert metrics.ready(0.05)


def test_a_standby_never_reconciles_stays_alive_and_is_never_ready() -> None:
    stop, wake, metrics, leads = threading.Event(), threading.Event(), Metrics(), threading.Event()
    metrics.last_success = time.monotonic()  # ready once, as a former leader would be
    reconciler = Scripted(set(), stop, calls=1)
    thread = run_loop(reconciler, stop, metrics, wake=wake, leading=leads.is_set)
    eventually(lambda: metrics.last_finished is not None, "the standby's loop to turn")
    assert reconciler.calls == 0
    assert metrics.alive(0.05)
    assert not metrics.ready(0.05)
    wake.set()  # a webhook: still a standby
    time.sleep(0.2)
    assert reconciler.calls == 0
    leads.set()
    wake.set()  # elected: the elector wakes the loop
    thread.join(timeout=30)
    assert reconciler.calls == 1
    assert metrics.ready(0.05)
