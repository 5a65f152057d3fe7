"""Fixtures that start real servers: the local Kubernetes control plane and Prometheus.

Nothing here is mocked. A fixture that cannot start its server fails the tests that need it,
loudly, with the server's own log; it never skips. Point $KUBECONFIG at your own cluster to
run the cluster tests there instead of the local one.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from localcluster import cluster as localcluster
from localcluster import prometheus as localprometheus

REPO = Path(__file__).resolve().parents[1]
TEST_STATE = REPO / ".localcluster" / "pytest"


@pytest.fixture(scope="session", autouse=True)
def render_tools() -> Path:
    """The pinned kustomize and helm (built once, cached), first on PATH: the controller finds
    them there, in this process and in the controllers the tests start."""
    folder = localcluster.render_tools()
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    return folder


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """A kubeconfig for a real cluster: $KUBECONFIG if set, else the local one, started here."""
    if os.environ.get("KUBECONFIG"):
        yield Path(os.environ["KUBECONFIG"])
        return
    running = localcluster.load(TEST_STATE)
    if running is not None and localcluster.healthy(running):
        # Someone left the test cluster up on purpose: use it and leave it up.
        yield running.kubeconfig
        return
    localcluster.reset_data(TEST_STATE)
    started = localcluster.up(TEST_STATE, nodes=2)
    try:
        yield started.kubeconfig
    finally:
        localcluster.down(TEST_STATE)


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    with fresh_namespace(api_client, f"t-{stem}-{uuid.uuid4().hex[:6]}") as name:
        yield name


@pytest.fixture
def state_namespace(api_client: client.ApiClient, namespace: str) -> Iterator[str]:
    """The controller's records live apart from the apps: git may never write there."""
    with fresh_namespace(api_client, f"{namespace}-s") as name:
        yield name


@contextlib.contextmanager
def fresh_namespace(api_client: client.ApiClient, name: str) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localprometheus.Prometheus]:
    """A real Prometheus on loopback, scraping every second whatever file_sd targets say."""
    state = tmp_path_factory.mktemp("prometheus")
    prom = localprometheus.start(state)
    try:
        yield prom
    finally:
        left = localprometheus.stop(state)
        assert not left, f"prometheus processes left behind: {left}"
