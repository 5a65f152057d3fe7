"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok, started as processes from the binaries hack/cluster/build.sh caches.

Everything lives in one state folder: certificates, kubeconfigs, etcd data, logs, pids and the
chosen ports (state.json). `up` is idempotent; `down` stops everything it started and checks
that no process naming the state folder is left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from localcluster.pki import CLIENTS, ensure_pki
from localcluster.processes import StartupError, Supervisor, free_port

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "cluster" / "build.sh"
RENDER_TOOLS_SCRIPT = REPO / "hack" / "render-tools" / "build.sh"
DEFAULT_STATE = REPO / ".localcluster" / "default"

# Pods get loopback addresses so a process can listen on a pod IP (see the apiserver patch in
# hack/tools/kube): 127.N.0.0/16 with N in 100-199 chosen by the state folder, so two local
# clusters (the demo's and the tests') never hand out the same pod IP. Service cluster IPs are
# loopback too: nothing proxies them, and any stray connection to one stays on this machine.
SERVICE_CIDR = "127.96.0.0/16"
SERVICE_IP = "127.96.0.1"
NODE_ANNOTATION = "kwok.x-k8s.io/node"

# Stop order: the controllers first, the store last.
COMPONENTS = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def pick(cls) -> Ports:
        return cls(*(free_port() for _ in dataclasses.fields(cls)))


def pod_cidr_for(state: Path) -> str:
    return f"127.{100 + int(hashlib.sha256(str(state).encode()).hexdigest(), 16) % 100}.0.0/16"


@dataclass(frozen=True)
class Cluster:
    state: Path
    bin_dir: Path
    ports: Ports
    nodes: int = 1

    @property
    def pod_cidr(self) -> str:
        return pod_cidr_for(self.state)

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_binaries() -> Path:
    """Run the cached build and return the folder holding the binaries."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=False, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise StartupError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def render_tools() -> Path:
    """Run the cached build of the renderers and return the folder holding kustomize and helm."""
    result = subprocess.run(
        ["bash", str(RENDER_TOOLS_SCRIPT)], check=False, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise StartupError(f"{RENDER_TOOLS_SCRIPT} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def load(state: Path) -> Cluster | None:
    try:
        data = json.loads((state / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return Cluster(state, Path(data["bin_dir"]), Ports(**data["ports"]), data["nodes"])


def _save(cluster: Cluster) -> None:
    (cluster.state / "state.json").write_text(
        json.dumps(
            {
                "bin_dir": str(cluster.bin_dir),
                "ports": dataclasses.asdict(cluster.ports),
                "nodes": cluster.nodes,
                "server": cluster.server,
            },
            indent=2,
        )
    )


def _kubeconfig(cluster: Cluster, client: str) -> dict[str, Any]:
    pki = cluster.pki
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "gitops-canary-local",
                "cluster": {"server": cluster.server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": client,
                "user": {
                    "client-certificate": str(pki / f"{client}.crt"),
                    "client-key": str(pki / f"{client}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "gitops-canary-local", "context": {"cluster": "gitops-canary-local",
                                                       "user": client}}
        ],
        "current-context": "gitops-canary-local",
    }


def _write_kubeconfigs(cluster: Cluster) -> None:
    configs = cluster.state / "kubeconfigs"
    configs.mkdir(exist_ok=True)
    for client in CLIENTS:
        path = configs / f"{client.name}.yaml"
        path.write_text(yaml.safe_dump(_kubeconfig(cluster, client.name)))
        path.chmod(0o600)
    shutil.copy(configs / "admin.yaml", cluster.kubeconfig)


def _admin_tls(cluster: Cluster) -> ssl.SSLContext:
    pki = cluster.pki
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return context


def _https_ok(cluster: Cluster, url: str) -> bool:
    try:
        response = httpx.get(url, verify=_admin_tls(cluster), timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text.strip() == "ok"


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _serving(cluster: Cluster) -> list[str]:
    return [
        f"--tls-cert-file={cluster.pki / 'serving.crt'}",
        f"--tls-private-key-file={cluster.pki / 'serving.key'}",
    ]


def _start_etcd(cluster: Cluster, sup: Supervisor) -> None:
    p = cluster.ports
    client, peer = f"http://127.0.0.1:{p.etcd_client}", f"http://127.0.0.1:{p.etcd_peer}"
    sup.start("etcd", [
        cluster.binary("etcd"),
        "--name=local",
        f"--data-dir={cluster.state / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=local={peer}",
        # A throw-away test store: durability is not worth an fsync per write here.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ])
    sup.wait_healthy("etcd", lambda: _http_ok(f"{client}/health"), timeout=30)


def _start_apiserver(cluster: Cluster, sup: Supervisor) -> None:
    pki = cluster.pki
    sup.start("kube-apiserver", [
        cluster.binary("kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{cluster.ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={cluster.ports.apiserver}",
        *_serving(cluster),
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        f"--cert-dir={cluster.state / 'apiserver'}",
    ])
    sup.wait_healthy("kube-apiserver", lambda: _https_ok(cluster, f"{cluster.server}/readyz"),
                     timeout=90)


def _start_controllers(cluster: Cluster, sup: Supervisor) -> None:
    pki, configs = cluster.pki, cluster.state / "kubeconfigs"
    sup.start("kube-controller-manager", [
        cluster.binary("kube-controller-manager"),
        f"--kubeconfig={configs / 'controller-manager.yaml'}",
        f"--authentication-kubeconfig={configs / 'controller-manager.yaml'}",
        f"--authorization-kubeconfig={configs / 'controller-manager.yaml'}",
        "--bind-address=127.0.0.1",
        f"--secure-port={cluster.ports.controller_manager}",
        *_serving(cluster),
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allocate-node-cidrs=false",
        "--leader-elect=false",
        "--profiling=false",
    ])
    sup.start("kube-scheduler", [
        cluster.binary("kube-scheduler"),
        f"--kubeconfig={configs / 'scheduler.yaml'}",
        f"--authentication-kubeconfig={configs / 'scheduler.yaml'}",
        f"--authorization-kubeconfig={configs / 'scheduler.yaml'}",
        "--bind-address=127.0.0.1",
        f"--secure-port={cluster.ports.scheduler}",
        *_serving(cluster),
        "--leader-elect=false",
        "--profiling=false",
    ])
    sup.start("kwok", [
        cluster.binary("kwok"),
        f"--kubeconfig={configs / 'kwok.yaml'}",
        f"--config={cluster.bin_dir / 'kwok-stages.yaml'}",
        f"--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake",
        f"--cidr={cluster.pod_cidr}",
        "--node-ip=127.0.0.1",
        # Without it kwok keeps no node Lease, and the node-lifecycle controller marks every
        # node (and pod) NotReady about 40s after start.
        "--node-lease-duration-seconds=40",
        f"--server-address=127.0.0.1:{cluster.ports.kwok}",
    ])
    for name, port in (("kube-controller-manager", cluster.ports.controller_manager),
                       ("kube-scheduler", cluster.ports.scheduler)):
        sup.wait_healthy(name, lambda port=port: _https_ok(cluster, f"https://127.0.0.1:{port}/healthz"),  # type: ignore[misc]
                         timeout=60)
    sup.wait_healthy("kwok", lambda: _http_ok(f"http://127.0.0.1:{cluster.ports.kwok}/healthz"),
                     timeout=30)


def _api(cluster: Cluster) -> httpx.Client:
    return httpx.Client(base_url=cluster.server, verify=_admin_tls(cluster), timeout=10.0)


def node_name(index: int) -> str:
    return f"kwok-node-{index}"


def _register_nodes(cluster: Cluster, api: httpx.Client) -> None:
    for i in range(cluster.nodes):
        name = node_name(i)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                },
            },
        }
        response = api.post("/api/v1/nodes", json=node)
        if response.status_code not in (201, 409):
            raise StartupError(f"registering node {name}: {response.status_code} {response.text}")


def _nodes_ready(cluster: Cluster, api: httpx.Client) -> bool:
    response = api.get("/api/v1/nodes", params={"labelSelector": "type=kwok"})
    if response.status_code != 200:
        return False
    ready = [
        node for node in response.json()["items"]
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in node.get("status", {}).get("conditions", []))
    ]
    return len(ready) >= cluster.nodes


def _default_service_account(api: httpx.Client) -> bool:
    # The serviceaccount controller creates it: proof that kube-controller-manager works.
    return api.get("/api/v1/namespaces/default/serviceaccounts/default").status_code == 200


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise StartupError(f"timed out after {timeout:.0f}s waiting for {what}")


def healthy(cluster: Cluster) -> bool:
    sup = Supervisor(cluster.state)
    if not all(sup.running(name) for name in COMPONENTS):
        return False
    return _https_ok(cluster, f"{cluster.server}/readyz")


def up(state: Path = DEFAULT_STATE, nodes: int = 1, bin_dir: Path | None = None) -> Cluster:
    """Start the control plane in `state` (or find it running) and return it once ready."""
    state = state.resolve()
    existing = load(state)
    if existing is not None and healthy(existing):
        log(f"already up: {existing.server}, kubeconfig {existing.kubeconfig}")
        return existing

    started = time.monotonic()
    bin_dir = bin_dir or build_binaries()
    state.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(state)
    sup.stop_all(COMPONENTS)  # leftovers of a half-started or crashed run
    cluster = Cluster(state, bin_dir, Ports.pick(), nodes)
    ensure_pki(cluster.pki, SERVICE_IP)
    _write_kubeconfigs(cluster)
    _save(cluster)
    link = state / "bin"
    link.unlink(missing_ok=True)
    link.symlink_to(bin_dir)
    try:
        log(f"starting etcd on 127.0.0.1:{cluster.ports.etcd_client}")
        _start_etcd(cluster, sup)
        log(f"starting kube-apiserver on {cluster.server}")
        _start_apiserver(cluster, sup)
        log("starting kube-controller-manager, kube-scheduler and kwok")
        _start_controllers(cluster, sup)
        with _api(cluster) as api:
            _register_nodes(cluster, api)
            _wait(f"{nodes} kwok node(s) Ready", lambda: _nodes_ready(cluster, api), 60)
            _wait("the default service account", lambda: _default_service_account(api), 60)
    except BaseException:
        log(f"start-up failed; stopping what started (logs in {sup.logs})")
        sup.stop_all(COMPONENTS)
        raise
    log(f"ready in {time.monotonic() - started:.1f}s: {cluster.server}")
    log(f"export KUBECONFIG={cluster.kubeconfig}")
    return cluster


def down(state: Path = DEFAULT_STATE, purge: bool = False) -> None:
    """Stop every process of the cluster in `state`; with `purge`, delete its data too."""
    state = state.resolve()
    if not state.exists():
        log(f"nothing to stop: {state} does not exist")
        return
    left = Supervisor(state).stop_all(COMPONENTS)
    if left:
        raise RuntimeError(f"processes still running after down: {left}")
    if purge:
        shutil.rmtree(state)
    log(f"down: no process of {state} is running" + (" (state deleted)" if purge else ""))


def reset_data(state: Path) -> None:
    """Forget the cluster's objects (etcd data) but keep certificates: used by the test suite."""
    shutil.rmtree(state.resolve() / "etcd", ignore_errors=True)
