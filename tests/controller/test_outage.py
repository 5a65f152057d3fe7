"""The API server and etcd stopped for 30 s mid-canary (SIGSTOP: they accept connections and
answer nothing, the worst kind of outage): the controller process lives through it, and a
promotion pushed meanwhile lands once they are back (issue 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from localcluster.cluster import load
from localcluster.processes import Supervisor, free_port
from tests.controller.conftest import DeployRepo, deployment, service
from tests.controller.test_canary_flow import rate
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

APP = "apps/sampleapp"
REPO = Path(__file__).resolve().parents[2]
TEST_STATE = REPO / ".localcluster" / "pytest"  # the cluster tests/conftest.py starts
OUTAGE = 30.0


def paused(names: tuple[str, ...]) -> list[int]:
    cluster = load(TEST_STATE)
    if cluster is None or os.environ.get("KUBECONFIG"):
        pytest.fail("this test stops the local test cluster's API server: it needs the cluster "
                    "the suite starts itself (unset KUBECONFIG)")
    supervisor = Supervisor(cluster.state)
    pids = [supervisor.pid(name) for name in names]
    assert all(pids), f"no pid for one of {names}: {pids}"
    return [p for p in pids if p is not None]


@pytest.fixture
def controller(deploy_repo: DeployRepo, namespace: str, state_namespace: str,
               kubeconfig: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    log = (tmp_path / "controller.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--repo", str(deploy_repo.remote),
         "--interval", "1s", "--kubeconfig", str(kubeconfig), "--namespaces", namespace,
         "--state-namespace", state_namespace, "--workdir", str(tmp_path / "mirror"),
         "--metrics-address", f"127.0.0.1:{port}", "--no-leader-election"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=log)
    try:
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_the_controller_lives_through_a_stopped_api_server_and_converges(
        deploy_repo: DeployRepo, namespace: str, api_client: client.ApiClient,
        controller: tuple[subprocess.Popen[bytes], int]) -> None:
    process, port = controller
    apps = client.AppsV1Api(api_client)

    def names() -> list[str]:
        items = apps.list_namespaced_deployment(namespace).items
        return sorted(str(d.metadata.name) for d in items)

    deploy_repo.write(f"{APP}/canary.yaml", {"namespace": namespace, "bootstrap": "direct"})
    deploy_repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10"))
    deploy_repo.write(f"{APP}/service.yml", service("sampleapp"))
    deploy_repo.commit("first version")
    eventually(lambda: names() == ["sampleapp"], "stable", timeout=60)
    deploy_repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "20"))
    change = deploy_repo.commit("rate 20")
    eventually(lambda: names() == ["sampleapp", "sampleapp-baseline", "sampleapp-canary"],
               "baseline and canary", timeout=60)

    pids = paused(("etcd", "kube-apiserver"))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        deploy_repo.write(f"{APP}/canary.yaml", {"namespace": namespace, "bootstrap": "direct",
                                                 "promote": change})
        deploy_repo.commit("promote rate 20, while the API server is away")
        time.sleep(OUTAGE)
        assert process.poll() is None, "the controller died during the outage"
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5, trust_env=False)
        assert health.status_code == 200  # alive: its loop kept going, each call timed out
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    eventually(lambda: names() == ["sampleapp"] and rate(
        apps.read_namespaced_deployment("sampleapp", namespace)) == "20",
        "the promotion pushed during the outage", timeout=120)
    eventually(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5,
                                 trust_env=False).status_code == 200, "ready again", timeout=60)
    assert process.poll() is None
