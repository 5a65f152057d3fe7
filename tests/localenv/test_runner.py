"""The pod runner makes the local cluster's pods real processes; Load spreads traffic over them.

Against the real local control plane and a real Prometheus: pods that kwok marks Ready get a
sample-app process on their pod IP, Prometheus scrapes them under their pod names, a Service's
ready endpoints share the load as kube-proxy would share it, and scaling down or deleting the
Deployment ends the processes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from kubernetes import client

from localcluster.prometheus import Prometheus
from localcluster.runner import (
    Load,
    LoopbackOnlyError,
    PodRunner,
    check_loopback,
    leftovers,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

T = TypeVar("T")
APP = {"app": "sampleapp"}
REPO = Path(__file__).resolve().parents[2]


def deployment(name: str, replicas: int, container: dict[str, Any]) -> dict[str, Any]:
    labels = {**APP, "variant": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": APP},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels,
                             "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "sampleapp:v1",
                    "ports": [{"name": "http", "containerPort": 8080},
                              {"name": "metrics", "containerPort": 8000}],
                    **container,
                }]},
            },
        },
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": APP, "ports": [{"name": "http", "port": 8080,
                                              "targetPort": "http"}]},
    }


def ready_pods(core: client.CoreV1Api, namespace: str, selector: str) -> dict[str, str]:
    """Pod name → IP of the Ready pods that are not being deleted."""
    return {
        str(pod.metadata.name): str(pod.status.pod_ip)
        for pod in core.list_namespaced_pod(namespace, label_selector=selector).items
        if pod.status.pod_ip and pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    }


def status_of(ip: str, port: int = 8080) -> int | None:
    """The HTTP status of GET / on a (loopback) pod IP, None if nothing answers."""
    try:
        return httpx.get(f"http://{check_loopback(ip)}:{port}/", timeout=2.0,
                         trust_env=False).status_code
    except httpx.TransportError:
        return None


def slice_ips(api: client.ApiClient, namespace: str, service_name: str) -> set[str]:
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        namespace, label_selector=f"kubernetes.io/service-name={service_name}").items
    return {address for s in slices for e in s.endpoints or []
            if e.conditions.ready for address in e.addresses}


def test_runner_serves_scrapes_spreads_load_and_follows_scaling(
    api_client: client.ApiClient, namespace: str, prometheus: Prometheus, tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment("sampleapp", 3, {
        "env": [{"name": "SUCCESS_RATE", "value": "100"}]}))
    core.create_namespaced_service(namespace, service("sampleapp"))
    runner = PodRunner(api_client, tmp_path / "runner", [namespace], prometheus=prometheus,
                       targets_name="test-runner")
    runner.start()
    try:
        def three_pods() -> dict[str, str] | None:
            pods = ready_pods(core, namespace, "app=sampleapp")
            return pods if len(pods) == 3 else None

        pods = eventually(three_pods, "3 Ready pods")
        ips = set(pods.values())
        running = runner.wait_serving(3, timeout=30)
        assert running == {f"{namespace}/{name}": ip for name, ip in pods.items()}
        assert all(status_of(ip) == 200 for ip in ips)
        for name in pods:
            log = runner.log_path(namespace, name)
            assert "SUCCESS_RATE" in log.read_text(), log

        # Prometheus scrapes each process under its pod's name and namespace.
        query = (f'requests_total{{namespace="{namespace}", pod=~"sampleapp-.*", '
                 f'custom_status="good"}}')
        series = eventually(lambda: (r := prometheus.query(query)) and len(r) == 3 and r,
                            f"3 series for {query}")
        assert {s["metric"]["pod"] for s in series} == set(pods)
        assert {s["metric"]["app"] for s in series} == {"sampleapp"}
        assert {s["metric"]["instance"] for s in series} == {f"{ip}:8000" for ip in ips}

        # The Service's ready endpoints share the load, as kube-proxy would share it; an
        # endpoint that is not ready (in a second slice, as another controller may write one)
        # gets none. How fast the load goes is a benchmark's question (bench/runner_rate.py).
        eventually(lambda: slice_ips(api_client, namespace, "sampleapp") == ips,
                   "an EndpointSlice of the 3 pods")
        not_ready = "127.0.0.1"
        assert not_ready not in ips
        client.DiscoveryV1Api(api_client).create_namespaced_endpoint_slice(namespace, {
            "metadata": {"name": "sampleapp-not-ready",
                         "labels": {"kubernetes.io/service-name": "sampleapp"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [not_ready], "conditions": {"ready": False}}],
        })
        requests = 90
        with Load(api_client, namespace, "sampleapp", "http", qps=60, max_requests=requests,
                  rng=random.Random(7)) as load:  # noqa: S311 - picks, not secrets
            stats = load.wait(timeout=60)
        assert stats.by_status == {"200": requests}, stats
        assert set(stats.per_endpoint) == ips, stats
        assert set(stats.endpoints) == ips, stats
        assert all(count >= 0.1 * requests for count in stats.by_endpoint.values()), stats
        assert stats.unroutable == 0

        # Scaling down ends the processes of the removed pods; their IPs stop answering.
        apps.patch_namespaced_deployment_scale("sampleapp", namespace,
                                               {"spec": {"replicas": 1}})
        left = eventually(lambda: (r := runner.running()) and len(r) == 1 and r,
                          "the runner to keep 1 process")
        (kept,) = left.values()
        assert kept in ips
        gone = ips - {kept}
        eventually(lambda: all(status_of(ip) is None for ip in gone),
                   f"{sorted(gone)} to stop answering")
        assert status_of(kept) == 200

        # Deleting the Deployment ends them all.
        apps.delete_namespaced_deployment("sampleapp", namespace)
        eventually(lambda: runner.running() == {} and all(status_of(ip) is None for ip in ips),
                   "every process to stop")
    finally:
        runner.stop()
    assert leftovers(tmp_path / "runner") == []


def test_environment_comes_from_configmaps(
    api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "settings"}, "data": {"SUCCESS_RATE": "0", "RATE": "0"}})
    apps.create_namespaced_deployment(namespace, deployment("from-envfrom", 1, {
        "envFrom": [{"configMapRef": {"name": "settings"}}]}))
    apps.create_namespaced_deployment(namespace, deployment("from-key", 1, {
        "env": [{"name": "SUCCESS_RATE", "valueFrom": {
            "configMapKeyRef": {"name": "settings", "key": "RATE"}}}]}))
    with PodRunner(api_client, tmp_path / "runner", [namespace]) as runner:
        running = runner.wait_serving(2, timeout=30)
        for ip in running.values():
            assert [status_of(ip) for _ in range(10)] == [500] * 10, ip
    assert leftovers(tmp_path / "runner") == []


def test_a_crashing_process_is_restarted_with_back_off(
    api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment("crashing", 1, {
        "env": [{"name": "SUCCESS_RATE", "value": "lots"}]}))
    (name,) = eventually(lambda: ready_pods(core, namespace, "app=sampleapp"), "a Ready pod")
    with PodRunner(api_client, tmp_path / "runner", [namespace],
                   backoff_initial=0.5) as runner:
        key = f"{namespace}/{name}"
        eventually(lambda: (s := runner.status().get(key)) and s.restarts >= 2,
                   "two restarts", timeout=20)
        text = runner.log_path(namespace, name).read_text()
    assert "SUCCESS_RATE must be a number from 0 to 100" in text
    assert "exited with code 1" in text
    assert "restarting in 0.5s" in text
    assert "restarting in 1.0s" in text


def test_load_refuses_endpoints_off_loopback(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    # A Service without a selector and a hand-made EndpointSlice pointing off this machine.
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "elsewhere"},
        "spec": {"ports": [{"name": "http", "port": 8080}]}})
    discovery.create_namespaced_endpoint_slice(namespace, {
        "metadata": {"name": "elsewhere-1",
                     "labels": {"kubernetes.io/service-name": "elsewhere"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}],
    })
    load = Load(api_client, namespace, "elsewhere", "http", qps=10, max_requests=5)
    with pytest.raises(LoopbackOnlyError, match=r"10\.1\.2\.3"):
        load.start()
    assert load.stats().sent == 0
    with pytest.raises(ValueError, match="bound"):
        Load(api_client, namespace, "elsewhere", "http")


def test_command_line_runs_until_sigterm_and_leaves_nothing(
    kubeconfig: Path, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment("cli", 1, {
        "env": [{"name": "SUCCESS_RATE", "value": "100"}]}))
    pods = eventually(lambda: ready_pods(core, namespace, "app=sampleapp"), "a Ready pod")
    (ip,) = pods.values()
    state = tmp_path / "runner"
    env = {**os.environ, "PYTHONPATH": str(REPO / "hack")}
    with subprocess.Popen(
        [sys.executable, "-m", "localcluster.runner", "--kubeconfig", str(kubeconfig),
         "--namespace", namespace, "--state", str(state)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
    ) as cli:
        try:
            eventually(lambda: status_of(ip) == 200, "the CLI's process to answer")
            cli.send_signal(signal.SIGTERM)
            _, stderr = cli.communicate(timeout=20)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
    assert cli.returncode == 0, stderr.decode()
    assert status_of(ip) is None
    assert leftovers(state) == []
