"""Fixtures for the image tests: the images built by hack/images/build.sh, and their containers
(compose.yaml) started by pytest-docker with the compose command this machine has.

The engine is podman where it is installed (hack/setup.sh installs it here: no Docker engine
runs on this machine), with the project's containers.conf (runc, ulimits); elsewhere a running
Docker engine. Without either, the tests that need one skip and say so; with one, nothing here
skips. The controller's container gets what a pod of misc/install would: the ServiceAccount's
token, the cluster's CA and its namespace at the kubelet's path, KUBERNETES_SERVICE_HOST/PORT,
the install's RBAC (moved to fresh namespaces) and the install's arguments, with this test's
repository (served by `git daemon` on loopback), namespaces, Prometheus and ports in place of
the example's.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from pytest_docker import Services

from localcluster import prometheus as localprometheus
from localcluster.processes import free_port
from tests.controller.conftest import DeployRepo
from tests.install import rbac_copy

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE_FILE = HERE / "compose.yaml"
CONTAINERS_CONF = REPO / "hack" / "images" / "containers.conf"
INSTALL = REPO / "misc" / "install"
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
COMPOSE_TIMEOUT = 120.0


def find_engine() -> str | None:
    """podman if installed; else docker if its engine answers; else None."""
    if shutil.which("podman"):
        return "podman"
    if shutil.which("docker"):
        answered = subprocess.run(["docker", "info"], capture_output=True, check=False,
                                  timeout=30)
        if answered.returncode == 0:
            return "docker"
    return None


@pytest.fixture(scope="session")
def container_engine() -> str:
    found = find_engine()
    if found is None:
        pytest.skip("no container engine: podman is not installed and no Docker engine "
                    "answers `docker info` (hack/setup.sh installs podman)")
    return found


@pytest.fixture(scope="session")
def images(container_engine: str) -> dict[str, str]:
    """Image ids by name (gitops-canary, sampleapp), built by hack/images/build.sh."""
    built = subprocess.run(["bash", str(REPO / "hack" / "images" / "build.sh")], cwd=REPO,
                           capture_output=True, text=True, check=False,
                           env={**engine_env(), "ENGINE": container_engine})
    if built.returncode != 0:
        pytest.fail(f"hack/images/build.sh failed:\n{built.stderr[-4000:]}")
    print(built.stderr, end="")
    ids = dict(line.split() for line in built.stdout.splitlines() if line.strip())
    return {name: image.removeprefix("sha256:") for name, image in ids.items()}


def engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


# --- the install, in fresh namespaces ---------------------------------------------------------


def install_objects(kustomize: Path) -> list[dict[str, Any]]:
    """misc/install as `kubectl apply -k` would apply it (kustomize build)."""
    built = subprocess.run([str(kustomize), "build", str(INSTALL)], capture_output=True,
                           text=True, check=True)
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in misc/install"
    return found[0]


def controller_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = only(objects, "Deployment")["spec"]["template"]["spec"]
    return pod


def moved(objects: list[dict[str, Any]], namespaces: dict[str, str], suffix: str
          ) -> list[dict[str, Any]]:
    """The install's RBAC objects in the test's namespaces, its ClusterRoles renamed."""
    roles = {o["metadata"]["name"]: f"{o['metadata']['name']}-{suffix}" for o in objects
             if o["kind"] == "ClusterRole"}
    return rbac_copy(objects, namespaces, roles)


def cluster_ca(kubeconfig: Path) -> bytes:
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        return base64.b64decode(cluster["certificate-authority-data"])
    ca = Path(cluster["certificate-authority"])
    return (ca if ca.is_absolute() else kubeconfig.parent / ca).read_bytes()


@contextlib.contextmanager
def git_daemon(root: Path) -> Iterator[str]:
    """`git daemon` serving the bare repositories under `root` on loopback, pushes allowed."""
    port = free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}",
         f"--base-path={root}", "--export-all", "--enable=receive-pack",
         "--informative-errors", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or daemon.poll() is not None:
                pytest.fail("git daemon did not start")
            time.sleep(0.1)
        yield f"git://127.0.0.1:{port}"
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


@dataclass(frozen=True)
class ControllerSetup:
    app_namespace: str
    state_namespace: str
    repo: DeployRepo
    metrics_port: int
    env: dict[str, str]  # for compose.yaml's controller service


@pytest.fixture(scope="session")
def controller_setup(kubeconfig: Path, api_client: client.ApiClient, render_tools: Path,
                     prometheus: localprometheus.Prometheus,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerSetup]:
    objects = install_objects(render_tools / "kustomize")
    pod = controller_pod(objects)
    (container,) = pod["containers"]
    args: list[str] = container["args"]
    suffix = uuid.uuid4().hex[:6]
    state_ns = args[args.index("--state-namespace") + 1]
    app_ns = args[args.index("--namespaces") + 1]
    namespaces = {state_ns: f"t-images-state-{suffix}", app_ns: f"t-images-app-{suffix}"}
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    dynamic = DynamicClient(api_client)
    folder = tmp_path_factory.mktemp("controller")
    folder.chmod(0o755)
    created: list[str] = []
    copies = moved(objects, namespaces, suffix)
    try:
        for original, name in namespaces.items():
            labels = next((o["metadata"].get("labels") for o in objects
                           if o["kind"] == "Namespace" and o["metadata"]["name"] == original),
                          None)
            core.create_namespace(client.V1Namespace(
                metadata=client.V1ObjectMeta(name=name, labels=labels)))
            created.append(name)
        for obj in copies:
            resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(body=obj, namespace=obj["metadata"].get("namespace"),
                                       field_manager="pytest")

        # What the kubelet mounts for the pod's ServiceAccount (a projected token).
        account = pod["serviceAccountName"]
        token = core.create_namespaced_service_account_token(
            account, namespaces[state_ns], client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
        ).status.token
        service_account = folder / "serviceaccount"
        service_account.mkdir(mode=0o755)
        (service_account / "token").write_text(token)
        (service_account / "ca.crt").write_bytes(cluster_ca(kubeconfig))
        (service_account / "namespace").write_text(namespaces[state_ns])
        # The git token Secret's file (git:// sends no credentials; the flag is the install's).
        git_secret = folder / "git-secret"
        git_secret.mkdir(mode=0o755)
        (git_secret / "token").write_text("unused-on-git-protocol\n")
        for path in [*service_account.iterdir(), *git_secret.iterdir()]:
            path.chmod(0o644)

        remotes = folder / "remotes"
        remotes.mkdir(exist_ok=True)
        repo = DeployRepo.create(remotes / "deploy.git", folder / "clone")

        server = urlsplit(api_client.configuration.host)
        metrics_port = free_port()
        with git_daemon(remotes) as git_url:
            yield ControllerSetup(
                namespaces[app_ns], namespaces[state_ns], repo,
                metrics_port,
                {"GIT_REPO": f"{git_url}/deploy.git",
                 "APP_NAMESPACE": namespaces[app_ns],
                 "STATE_NAMESPACE": namespaces[state_ns],
                 "PROMETHEUS_URL": prometheus.url,
                 "CONTROLLER_METRICS_PORT": str(metrics_port),
                 "KUBERNETES_SERVICE_HOST": str(server.hostname),
                 "KUBERNETES_SERVICE_PORT": str(server.port or 443),
                 "SERVICE_ACCOUNT_DIR": str(service_account),
                 "GIT_SECRET_DIR": str(git_secret)})
    finally:
        for obj in copies:
            if obj["kind"] == "ClusterRole":
                with contextlib.suppress(ApiException):
                    rbac.delete_cluster_role(obj["metadata"]["name"])
        for name in created:
            core.delete_namespace(name, propagation_policy="Background")


# --- pytest-docker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleAppPorts:
    app: int
    metrics: int


@pytest.fixture(scope="session")
def sampleapp_ports() -> SampleAppPorts:
    return SampleAppPorts(free_port(), free_port())


@pytest.fixture(scope="session")
def compose_env_file(images: dict[str, str], sampleapp_ports: SampleAppPorts,
                     controller_setup: ControllerSetup,
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    values = {"CONTROLLER_IMAGE": images["gitops-canary"],
              "SAMPLEAPP_IMAGE": images["sampleapp"],
              "SAMPLEAPP_PORT": str(sampleapp_ports.app),
              "SAMPLEAPP_METRICS_PORT": str(sampleapp_ports.metrics),
              **controller_setup.env}
    env_file = tmp_path_factory.mktemp("compose") / "compose.env"
    # One line each; compose takes the value after '=' verbatim (no quotes needed or wanted).
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return env_file


@pytest.fixture(scope="session")
def docker_compose_command(container_engine: str, compose_env_file: Path) -> str:
    """podman-compose here (no pod: host networking; the project's containers.conf: runc and
    ulimits), `docker compose` with a Docker engine."""
    if container_engine == "podman":
        beside = Path(sys.executable).parent / "podman-compose"  # the virtualenv's
        compose = str(beside) if beside.exists() else shutil.which("podman-compose")
        if compose is None:
            pytest.fail("podman is installed but podman-compose is not: run hack/setup.sh")
        return (f"env CONTAINERS_CONF={shlex.quote(str(CONTAINERS_CONF))} "
                f"{shlex.quote(compose)} --no-ansi --in-pod false "
                f"--env-file {shlex.quote(str(compose_env_file))}")
    return f"docker compose --env-file {shlex.quote(str(compose_env_file))}"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"gitops-canary-images-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -t 3"]


@dataclass(frozen=True)
class Compose:
    """The compose command line of this session, for what pytest-docker does not run."""

    command: str
    file: str
    project: str

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        line = (f"{self.command} -f {shlex.quote(self.file)} -p {shlex.quote(self.project)} "
                f"{shlex.join(args)}")
        # A shell line, as pytest-docker runs its compose command (one string, shell=True).
        return subprocess.run(line, shell=True, capture_output=True, text=True,  # noqa: S602
                              check=check, timeout=COMPOSE_TIMEOUT)

    def logs(self, service: str) -> str:
        done = self.run("logs", service, check=False)
        return done.stdout + done.stderr


@pytest.fixture(scope="session")
def compose(docker_compose_command: str, docker_compose_file: str,
            docker_compose_project_name: str) -> Compose:
    return Compose(docker_compose_command, docker_compose_file, docker_compose_project_name)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(services: Services, compose: Compose, service: str, url: str,
                 timeout: float = 60.0) -> None:
    try:
        services.wait_until_responsive(lambda: answers(url), timeout=timeout, pause=0.2)
    except Exception:  # pytest-docker raises a bare Exception on its timeout
        pytest.fail(f"{service} did not answer {url} within {timeout:.0f}s; its log:\n"
                    f"{compose.logs(service)[-4000:]}")


@pytest.fixture(scope="session")
def sampleapp_container(docker_services: Services, compose: Compose,
                        sampleapp_ports: SampleAppPorts) -> SampleAppPorts:
    wait_healthy(docker_services, compose, "sampleapp",
                 f"http://127.0.0.1:{sampleapp_ports.app}/healthz")
    return sampleapp_ports


@pytest.fixture(scope="session")
def controller_container(docker_services: Services, compose: Compose,
                         controller_setup: ControllerSetup) -> ControllerSetup:
    wait_healthy(docker_services, compose, "controller",
                 f"http://127.0.0.1:{controller_setup.metrics_port}/healthz")
    return controller_setup
