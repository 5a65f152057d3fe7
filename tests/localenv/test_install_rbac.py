"""The install manifests (misc/install/) and the Grafana dashboard (misc/grafana-dashboard.json)
hold what they promise.

- RBAC: the ServiceAccount, Role, ClusterRole and RoleBindings of controller.yml, applied to the
  real local cluster (in fresh namespaces), let the controller's own Kube edge do its whole job
  as that ServiceAccount, and nothing more: no other namespace, no Secrets of kube-system, no
  cluster-scoped kinds, no RBAC objects.
- The Deployment runs `gitops-canary run` with flags the CLI accepts, the API server accepts it
  (strict field validation) and its pod meets the `restricted` Pod Security Standard, and the
  Service and the ServiceMonitor point at the port it serves /metrics on.
- Two replicas, one leader: the ServiceAccount may hold the Lease in its state namespace (and
  only that one), upgrades roll one pod at a time, and a PodDisruptionBudget keeps one running.
- The dashboard keeps the seed's two panels verbatim, queries only metrics the controller
  exports, and every query (annotations included) runs on a real Prometheus scraping the
  controller's real /metrics endpoint.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from prometheus_client import CollectorRegistry, Counter, generate_latest, start_http_server

from controller.cli import build_parser
from controller.domain.inventory import owned
from controller.domain.machine import Record, StatusNote
from controller.domain.render import key_of
from controller.domain.types import LABEL_APP, LABEL_VERSION, AppName, Phase, Sha, StatusState
from controller.edges.kube import API_VERSIONS, VARIANT_KINDS, WATCHED_KINDS, Kube
from controller.errors import ForbiddenError
from controller.leader import LEASE_NAME, Elector
from controller.metrics import EVENTS, Metrics, serve
from controller.reconcile import Outcome, Result
from localcluster import prometheus as localprometheus
from localcluster.processes import free_port
from tests.install import RBAC_KINDS, rbac_copy
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
CONTROLLER_YML = REPO / "misc" / "install" / "controller.yml"
SERVICE_MONITOR_YML = REPO / "misc" / "install" / "service-monitor.yml"
DASHBOARD_JSON = REPO / "misc" / "grafana-dashboard.json"

APPS_CLUSTER_ROLE = "gitops-canary-apps"
# The seed's two Grafana panels, query for query (seed/canary-deployment-strategy-...txt).
SEED_PANELS = {
    "All sampleapp pods":
        'rate(requests_total{pod=~"sampleapp-.*", custom_status="good"}[1m])',
    "sampleapp baseline and canary":
        'rate(requests_total{pod=~"sampleapp-baseline-.*|sampleapp-canary-.*", '
        'custom_status="good"}[1m])',
}
TRANSITIONS = {"canary_started", "verdict", "promoted", "rejected"}

T = TypeVar("T")




# --- the install manifests --------------------------------------------------------------------


def install_objects() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(CONTROLLER_YML.read_text()) if doc]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects
             if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {CONTROLLER_YML.name}"
    return found[0]


def controller_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def controller_args(objects: list[dict[str, Any]]) -> argparse.Namespace:
    """The Deployment's arguments, parsed by the controller's own command line."""
    return build_parser().parse_args(controller_container(objects)["args"])


def app_namespaces(args: argparse.Namespace) -> list[str]:
    assert args.namespaces, "the install must restrict the controller to --namespaces"
    return [n.strip() for n in args.namespaces.split(",") if n.strip()]


def grants(role: dict[str, Any], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in role["rules"]:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule["verbs"])
    return verbs


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds `path` (the deepest one)."""
    holding = [m for m in container.get("volumeMounts", [])
               if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert holding, f"{path} is on no volume (the root file system is read-only)"
    found: dict[str, Any] = max(holding, key=lambda m: len(m["mountPath"]))
    return found


def test_install_manifests_parse_and_run_the_controller_least_privileged() -> None:
    objects = install_objects()
    kinds = {o["kind"] for o in objects}
    assert kinds == {"Namespace", *RBAC_KINDS, "Deployment", "PodDisruptionBudget", "Service"}
    assert "ClusterRoleBinding" not in kinds
    state = only(objects, "Namespace", "gitops-canary")["metadata"]["name"]

    args = controller_args(objects)
    assert args.command == "run"
    assert args.repo
    assert args.prometheus_url == "http://prometheus-operated.monitoring:9090"
    assert args.state_namespace == state
    assert args.allow_cluster_kind == []

    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["namespace"] == state
    # Two replicas, one leader; an upgrade never leaves fewer than two pods (no Recreate).
    assert args.leader_election is True
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    budget = only(objects, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == state
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    account = only(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["namespace"] == state
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"],
               "namespace": state}

    # Records: a Role in the state namespace, bound to the account.
    records = only(objects, "Role")
    assert records["metadata"]["namespace"] == state
    assert grants(records, "", "configmaps") >= {"get", "list", "watch", "create", "patch",
                                                 "delete"}
    # The Lease: read and renewed by name, created the first time; nothing else of leases.
    assert grants(records, "coordination.k8s.io", "leases") == {"get", "create", "update"}
    for rule in records["rules"]:
        if "leases" in rule["resources"] and set(rule["verbs"]) & {"get", "update"}:
            assert rule["resourceNames"] == [LEASE_NAME]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert any(b["metadata"]["namespace"] == state and b["roleRef"]["kind"] == "Role"
               and b["roleRef"]["name"] == records["metadata"]["name"]
               and subject in b["subjects"] for b in bindings)
    # Apps: the ClusterRole, bound by one RoleBinding in each of --namespaces and nowhere else.
    apps_role = only(objects, "ClusterRole", APPS_CLUSTER_ROLE)
    bound = {b["metadata"]["namespace"] for b in bindings
             if b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                 "name": APPS_CLUSTER_ROLE} and subject in b["subjects"]}
    assert bound == set(app_namespaces(args))
    for kind in VARIANT_KINDS:  # read stable, list and delete variants, apply
        group = API_VERSIONS[kind].rpartition("/")[0]
        assert grants(apps_role, group, f"{kind.lower()}s") >= \
            {"get", "list", "create", "patch", "delete"}, kind
    for kind in WATCHED_KINDS:  # the informers: list, then watch
        group = API_VERSIONS[kind].rpartition("/")[0]
        assert grants(apps_role, group, f"{kind.lower()}s") >= {"list", "watch"}, kind
    # Secrets: read, applied and deleted by name (the inventory names the copies), never listed.
    assert grants(apps_role, "", "secrets") == {"get", "create", "patch", "delete"}
    # Applied as written; deleted only by prune (what left git, named by the inventory).
    for group, resource in (("", "services"), ("networking.k8s.io", "ingresses"),
                            ("autoscaling", "horizontalpodautoscalers"),
                            ("policy", "poddisruptionbudgets")):
        assert grants(apps_role, group, resource) >= {"get", "create", "patch", "delete"}, \
            resource
    everything = {v for rule in apps_role["rules"] for v in rule["verbs"]}
    assert not everything & {"*", "escalate", "bind", "impersonate"}
    assert not {r for rule in apps_role["rules"] for r in rule["resources"]} & {
        "*", "roles", "rolebindings", "clusterroles", "clusterrolebindings", "pods/exec"}

    # The container: non-root, read-only root; git mirror, $HOME and /tmp on emptyDirs; the git
    # token a file from a Secret; probes and the Service on the metrics port.
    container = controller_container(objects)
    assert container["image"] == "gitops-canary:latest"
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    for path in (str(args.workdir), env["HOME"], "/tmp"):  # noqa: S108 - the emptyDir
        assert "emptyDir" in volumes[mount_of(container, path)["name"]], path
    token_mount = mount_of(container, args.git_token_file)
    assert token_mount.get("readOnly") is True
    assert volumes[token_mount["name"]]["secret"]["secretName"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]

    host, _, port = args.metrics_address.rpartition(":")
    assert host == "0.0.0.0"  # noqa: S104 - the pod's address, for probes and scrapes
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # Ready when alive: /readyz is the leader's alone, and a standby never Ready would stall
    # rolling updates and block the eviction of the leader (see controller.yml).
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = only(objects, "Service")
    assert service["metadata"]["namespace"] == state
    assert service["spec"]["selector"].items() <= labels.items()
    assert {"name": "metrics", "port": int(port), "targetPort": "metrics", "protocol": "TCP"} \
        in service["spec"]["ports"]

    monitors = [d for d in yaml.safe_load_all(SERVICE_MONITOR_YML.read_text()) if d]
    assert len(monitors) == 1
    monitor = monitors[0]
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == state
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}]


# --- RBAC on the real cluster -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Installed:
    state: str  # the controller's namespace: its ServiceAccount and its records
    apps: tuple[str, ...]  # the app namespaces (one per namespace in --namespaces)
    cluster_role: str  # the unique copy of gitops-canary-apps
    user: str  # the ServiceAccount's user name, as the API server says it
    as_controller: client.ApiClient  # authenticated with the ServiceAccount's token


@pytest.fixture(scope="module")
def installed(api_client: client.ApiClient) -> Iterator[Installed]:
    objects = install_objects()
    args = controller_args(objects)
    suffix = uuid.uuid4().hex[:6]
    state = f"t-rbac-state-{suffix}"
    apps = {ns: f"t-rbac-app{i}-{suffix}" for i, ns in enumerate(app_namespaces(args))}
    cluster_roles = {o["metadata"]["name"]: f"{o['metadata']['name']}-{suffix}"
                     for o in objects if o["kind"] == "ClusterRole"}
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    dynamic = DynamicClient(api_client)
    created: list[str] = []
    try:
        # The state namespace gets the install's labels: its Pod Security level.
        labels = only(objects, "Namespace", args.state_namespace)["metadata"].get("labels")
        for name in (state, *apps.values()):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                name=name, labels=labels if name == state else None)))
            created.append(name)
        copies = rbac_copy(objects, {args.state_namespace: state, **apps}, cluster_roles)
        assert {o["kind"] for o in copies} == RBAC_KINDS
        for obj in copies:
            resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(body=obj, namespace=obj["metadata"].get("namespace"),
                                       field_manager="pytest")
        account = only(copies, "ServiceAccount")["metadata"]["name"]
        token = core.create_namespaced_service_account_token(
            account, state, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
        ).status.token
        config = client.Configuration()
        config.host = api_client.configuration.host
        config.ssl_ca_cert = api_client.configuration.ssl_ca_cert
        config.api_key = {"authorization": f"Bearer {token}"}
        with client.ApiClient(config) as as_controller:
            yield Installed(state, tuple(apps.values()), cluster_roles[APPS_CLUSTER_ROLE],
                            f"system:serviceaccount:{state}:{account}", as_controller)
    finally:
        for name in cluster_roles.values():
            try:
                rbac.delete_cluster_role(name)
            except ApiException as error:
                if error.status != 404:
                    raise
        for name in created:
            core.delete_namespace(name, propagation_policy="Background")


def rbac_in_effect(kube: Kube) -> bool:
    """RoleBindings reach the authorizer's cache within moments; until then, 403."""
    try:
        kube.records()
    except ForbiddenError:
        return False
    return True


def deployment(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    pod_labels = {"app": "sampleapp", **{k: v for k, v in labels.items() if k != LABEL_APP}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels},
                         "spec": {"containers": [{"name": "app", "image": "sampleapp:v2"}]}},
        },
    }


def passthrough(namespace: str) -> list[dict[str, Any]]:
    """Objects an app folder holds that are applied as written."""
    meta = {"name": "sampleapp", "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": {"app": "sampleapp"},
                  "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta,
         "spec": {"defaultBackend": {"service": {"name": "sampleapp",
                                                 "port": {"number": 8080}}}}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "sampleapp"},
                  "minReplicas": 1, "maxReplicas": 4}},
    ]


@pytest.mark.cluster
def test_the_service_account_can_do_the_controllers_whole_job(
    installed: Installed, api_client: client.ApiClient, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # A fresh discovery cache, so discovery itself runs as the ServiceAccount.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    app_ns = installed.apps[0]
    kube = Kube(installed.as_controller, frozenset(installed.apps),
                state_namespace=installed.state)
    # API discovery needs no grant: system:discovery is bound to every authenticated user.
    assert kube.resource("apps/v1", "Deployment").namespaced
    eventually(lambda: rbac_in_effect(kube), "the RoleBindings to take effect")
    assert kube.records() == {}

    variant = {LABEL_APP: "sampleapp", LABEL_VERSION: "canary"}
    canary = [
        deployment(app_ns, "sampleapp-canary", variant),
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "settings-canary", "namespace": app_ns, "labels": variant},
         "data": {"SUCCESS_RATE": "20"}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "credentials-canary", "namespace": app_ns, "labels": variant},
         "stringData": {"greeting": "hello"}},
    ]
    # Before the first apply: nothing there that someone else owns (one get per object).
    kube.claim([*passthrough(app_ns), *canary], set(), adopt_own=False, app="sampleapp")
    kube.apply([*passthrough(app_ns), *canary])  # a dry run of everything, then the writes
    kube.apply([*passthrough(app_ns), *canary])  # and again: the objects exist now
    admin = Kube(api_client)
    for obj in [*passthrough(app_ns), *canary]:
        live = admin.get(key_of(obj), obj["apiVersion"])
        assert live is not None, key_of(obj)
        assert any(m["manager"] == "gitops-canary" and m["operation"] == "Apply"
                   for m in live["metadata"]["managedFields"])
    for obj in canary:  # what it reads back: stable workloads, ConfigMaps, Secrets
        assert kube.get(key_of(obj), obj["apiVersion"]) is not None
    # The informers, as `run` starts them: every watched kind and the records, listed and
    # watched with the install's grants (a refusal would leave them unsynced for good).
    watched = Kube(installed.as_controller, frozenset(installed.apps),
                   state_namespace=installed.state)
    watched.watch()
    try:
        informers = [*(watched.informer(kind, app_ns) for kind in WATCHED_KINDS),
                     watched.informer("ConfigMap", installed.state)]
        for informer in informers:
            assert informer is not None
            assert informer.wait_synced(30), (informer.what, informer.refused)
        assert watched.get(key_of(canary[0])) is not None  # from the copy
    finally:
        watched.close()
    # Drift: a dry run of each object against the live one (here: none), and an Event on an
    # object whose drift was corrected.
    assert kube.drift(canary, {}, {}) == []
    kube.event(key_of(canary[0]), "apps/v1", "DriftCorrected", "corrected to git: a test")
    assert [(e.reason, e.message, e.source.component) for e in client.CoreV1Api(
        api_client).list_namespaced_event(app_ns).items
            if e.source.component == "gitops-canary"] == [
        ("DriftCorrected", "corrected to git: a test", "gitops-canary")]
    # Found by label (records from before inventories): never Secrets, which it cannot list.
    variants = {key_of(v) for v in kube.variants(app_ns, "sampleapp")}
    assert variants == {key_of(obj) for obj in canary if obj["kind"] != "Secret"}
    # Found by the inventory's names: every kind, one get each.
    inventory = [owned(obj, "variant") for obj in canary]
    assert {key_of(v) for v in kube.objects(inventory)} == {key_of(obj) for obj in canary}
    for each in inventory:
        assert kube.delete(each.key, app="sampleapp", api_version=each.api_version), each
    assert kube.objects(inventory) == []
    assert admin.get(("Service", app_ns, "sampleapp")) is not None  # never deleted

    # The records: created, then updated, in the state namespace.
    record = Record(AppName("sampleapp"), phase=Phase.PROGRESSING,
                    canary_revision=Sha("a" * 40), canary_started=1.0)
    kube.save_record(record)
    analyzing = dataclasses.replace(
        record, phase=Phase.ANALYZING, ready_at=2.0,
        last_status=StatusNote(Sha("a" * 40), StatusState.PENDING, "canary: warming up"))
    kube.save_record(analyzing)
    assert kube.records() == {AppName("sampleapp"): analyzing}
    stored = client.CoreV1Api(api_client).read_namespaced_config_map(
        "gitops-canary.sampleapp", installed.state)
    assert json.loads(stored.data["record"])["phase"] == "Analyzing"

    # The Lease: created, renewed, released by one replica, then taken by the other.
    first = Elector(installed.as_controller, installed.state, "replica-a", duration=30, renew=5)
    second = Elector(installed.as_controller, installed.state, "replica-b", duration=30, renew=5)
    assert first.attempt()  # create
    assert first.attempt()  # renew (get, update)
    assert not second.attempt()
    first.release()  # update
    assert second.attempt()
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(LEASE_NAME, installed.state)
    assert (lease.spec.holder_identity, lease.spec.lease_transitions) == ("replica-b", 1)


@pytest.mark.cluster
def test_the_service_account_cannot_reach_beyond_its_namespaces(
    installed: Installed, api_client: client.ApiClient, namespace: str,
) -> None:
    # Kube's own namespace and kind checks off: only RBAC stands in the way.
    anywhere = Kube(installed.as_controller, None, frozenset({"ClusterRole", "Namespace"}),
                    state_namespace=installed.state)
    eventually(lambda: rbac_in_effect(anywhere), "the RoleBindings to take effect")
    denied = re.escape(f'User "{installed.user}" cannot')

    with pytest.raises(ForbiddenError, match=denied):
        anywhere.apply([deployment(namespace, "intruder", {"app": "intruder"})])
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []
    with pytest.raises(ForbiddenError, match=denied):
        anywhere.get(("ConfigMap", namespace, "kube-root-ca.crt"))

    with pytest.raises(ForbiddenError, match=denied):
        anywhere.get(("Secret", "kube-system", "anything"))
    core = client.CoreV1Api(installed.as_controller)
    for ns in ("kube-system", installed.state):  # not even its own namespace's Secrets
        with pytest.raises(ApiException) as listing:
            core.list_namespaced_secret(ns)
        assert listing.value.status == 403

    with pytest.raises(ForbiddenError, match=denied):
        anywhere.apply([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                         "metadata": {"name": f"{installed.cluster_role}-more"},
                         "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}])
    with pytest.raises(ForbiddenError, match=denied):  # nor grant itself more where it works
        anywhere.apply([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                         "metadata": {"name": "more", "namespace": installed.apps[0]},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                     "kind": "ClusterRole", "name": "admin"},
                         "subjects": [{"kind": "User", "name": installed.user}]}])
    with pytest.raises(ForbiddenError, match=denied):
        anywhere.apply([{"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": f"{namespace}-x"}}])
    with pytest.raises(ForbiddenError, match=denied):  # deletes records (quarantine) only
        anywhere.delete(("ConfigMap", "kube-system", "kube-root-ca.crt"))

    # Leases: its own, by name, in its own namespace; no other Lease, and none elsewhere.
    leases = client.CoordinationV1Api(installed.as_controller)
    for ns, name in ((installed.state, "kube-controller-manager"), (namespace, LEASE_NAME)):
        with pytest.raises(ApiException) as lease_denied:
            leases.read_namespaced_lease(name, ns)
        assert lease_denied.value.status == 403, (ns, name)
    with pytest.raises(ApiException) as listing:
        leases.list_namespaced_lease(installed.state)
    assert listing.value.status == 403
    foreign = client.V1Lease(metadata=client.V1ObjectMeta(name=LEASE_NAME),
                             spec=client.V1LeaseSpec(holder_identity="intruder"))
    with pytest.raises(ApiException) as creating:
        leases.create_namespaced_lease(namespace, foreign)
    assert creating.value.status == 403


@pytest.mark.cluster
def test_the_api_server_accepts_the_controllers_deployment_and_its_pod(
    installed: Installed, api_client: client.ApiClient,
) -> None:
    objects, dynamic = install_objects(), DynamicClient(api_client)
    for obj in (only(objects, "Deployment"), only(objects, "PodDisruptionBudget"),
                only(objects, "Service")):
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = installed.state
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.server_side_apply(body=obj, namespace=installed.state, field_manager="pytest",
                                   dry_run="All", query_params=[("fieldValidation", "Strict")])

    # Its pod meets the `restricted` Pod Security Standard the namespace enforces...
    core = client.CoreV1Api(api_client)
    template = only(objects, "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "gitops-canary", "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}
    core.create_namespaced_pod(installed.state, pod, dry_run="All")
    # ... which is really enforced: the same pod without its security context is refused.
    loose = copy.deepcopy(pod)
    del loose["spec"]["securityContext"]
    del loose["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(installed.state, loose, dry_run="All")
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body


# --- the dashboard ----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in found if p["type"] != "row"]


def annotation_queries(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in board["annotations"]["list"] if a["datasource"]["type"] == "prometheus"]


def event_of(annotation: dict[str, Any]) -> str:
    events = set(re.findall(r'event="([a-z_]+)"', annotation["expr"]))
    assert len(events) == 1, annotation["name"]
    return str(events.pop())


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panels and annotations."""
    found = [t["expr"] for p in panels(board) for t in p["targets"]]
    for annotation in annotation_queries(board):
        found.append(annotation["expr"])
        if "target" in annotation:
            assert annotation["target"]["expr"] == annotation["expr"]
    return found


def variable_queries(board: dict[str, Any]) -> list[str]:
    return [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]


def exported_metrics() -> set[str]:
    """Metric names a fresh controller exposes, as Prometheus will store them."""
    names = set()
    for line in generate_latest(Metrics().registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            names.add(name)
            if kind == "histogram":  # its series exist, unlabelled, from the start
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_is_importable_and_keeps_the_seeds_two_panels() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["datasource"] == source for t in panel["targets"])
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
    by_title = {p["title"]: p for p in panels(board)}
    for title, query in SEED_PANELS.items():
        assert [t["expr"] for t in by_title[title]["targets"]] == [query], title

    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["app"]["query"] == "label_values(gitops_canary_app_phase, app)"
    assert variables["app"]["datasource"] == source
    titles = set(by_title)
    assert {"Success rate per variant", "Analysis score", "Verdict", "Phase per app",
            "Metric values: baseline vs canary", "Reconciles per second",
            "Reconcile duration"} <= titles


def test_dashboard_queries_only_metrics_the_controller_exports() -> None:
    exported = exported_metrics()
    assert "gitops_canary_transitions_total" in exported  # counters appear with _total
    board = dashboard()
    used = {name for query in [*queries(board), *variable_queries(board)]
            for name in re.findall(r"\bgitops_canary_[a-zA-Z0-9_:]+", query)}
    assert used, "the dashboard shows none of the controller's metrics"
    assert used <= exported, f"not exported by controller/metrics.py: {used - exported}"
    assert {"gitops_canary_app_phase", "gitops_canary_analysis_score",
            "gitops_canary_analysis_verdict", "gitops_canary_metric_value",
            "gitops_canary_reconciles_total", "gitops_canary_reconcile_duration_seconds_bucket",
            "gitops_canary_transitions_total"} <= used


def test_dashboard_annotates_every_transition_and_maps_every_phase() -> None:
    board = dashboard()
    events = {event_of(a): a for a in annotation_queries(board)}
    assert set(events) == TRANSITIONS == {*EVENTS.values(), "verdict"}
    for annotation in events.values():
        assert annotation["enable"] is True
        assert "gitops_canary_transitions_total" in annotation["expr"]
        assert "{{app}}" in annotation["titleFormat"]

    phase = next(p for p in panels(board) if p["title"] == "Phase per app")
    assert phase["type"] == "state-timeline"
    (query,) = [t["expr"] for t in phase["targets"]]
    codes = dict(re.findall(r'phase="(\w+)"\}\) \* (\d+)', query))
    (mapping,) = phase["fieldConfig"]["defaults"]["mappings"]
    assert {o["text"]: code for code, o in mapping["options"].items()} == codes
    assert set(codes) == {str(p) for p in Phase}

    verdict = next(p for p in panels(board) if p["title"] == "Verdict")
    colored = {o["matcher"]["options"] for o in verdict["fieldConfig"]["overrides"]}
    assert colored == {f".*: {v}" for v in ("pass", "marginal", "fail", "inconclusive")}


# --- the dashboard on a real Prometheus -------------------------------------------------------

PODS = {  # pod name -> (good, bad) responses per tick
    "sampleapp-7d9c5b8f4-x2x4z": (9, 1),
    "sampleapp-baseline-5f6c7d8b9-abcde": (9, 1),
    "sampleapp-canary-6b8d9c7f5-fghij": (1, 1),
    "other-6c9f8d7b5-klmno": (1, 0),
}


@pytest.fixture(scope="module")
def own_prometheus(tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[localprometheus.Prometheus]:
    """A Prometheus of this module's own: the dashboard's sums must see only our pods."""
    state = tmp_path_factory.mktemp("dashboard-prometheus")
    prom = localprometheus.start(state)
    try:
        yield prom
    finally:
        left = localprometheus.stop(state)
        assert not left, f"prometheus processes left behind: {left}"


def instant(prom: localprometheus.Prometheus, promql: str) -> list[dict[str, Any]]:
    """Run a query; a PromQL error fails the test with Prometheus's own message."""
    response = httpx.get(f"{prom.url}/api/v1/query", params={"query": promql}, timeout=5.0)
    body = response.json()
    assert body["status"] == "success", f"{promql}\n{body.get('error')}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def grafana(query: str, app: str) -> str:
    """The query as Grafana sends it, with this test's variables."""
    return (query.replace("$__rate_interval", "1m").replace("${workload}", "sampleapp")
            .replace("$app", app))


@pytest.mark.prometheus
def test_every_dashboard_query_runs_and_shows_a_canary_on_a_real_prometheus(
    own_prometheus: localprometheus.Prometheus,
) -> None:
    board, app = dashboard(), f"shop-{uuid.uuid4().hex[:6]}"
    servers = []
    counters = {}
    for pod in PODS:
        registry = CollectorRegistry()
        counters[pod] = Counter("requests", "Requests served", ["custom_status"],
                                registry=registry)
        port = free_port()
        servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
        own_prometheus.write_targets(pod, [{"targets": [f"127.0.0.1:{port}"],
                                            "labels": {"pod": pod, "namespace": "demo"}}])
    metrics, port = Metrics(), free_port()
    controller = serve(metrics, f"127.0.0.1:{port}", 1.0)
    own_prometheus.write_targets("gitops-canary", [{"targets": [f"127.0.0.1:{port}"]}])
    try:
        # A stable app first, scraped: then its canary starts and is analysed.
        stable = Record(AppName(app))
        metrics.observe(Result(None, (Outcome(app, stable),)), 0.05)
        eventually(lambda: instant(own_prometheus, f'gitops_canary_app_phase{{app="{app}"}}'),
                   "the controller's first scrape")
        judgement = {"score": 100.0, "verdict": "pass", "metrics": [
            {"name": "success-rate", "baseline": 0.9, "canary": 0.91, "e_value": 0.4}]}
        analyzing = dataclasses.replace(
            stable, phase=Phase.ANALYZING, canary_revision=Sha("b" * 40),
            analysis=json.dumps(judgement),
            last_status=StatusNote(Sha("b" * 40), StatusState.PENDING, "canary: analysing"))

        def tick() -> bool:
            for pod, (good, bad) in PODS.items():
                counters[pod].labels("good").inc(good)
                counters[pod].labels("bad").inc(bad)
            metrics.observe(Result(None, (Outcome(app, analyzing),)), 0.2)
            return all(instant(own_prometheus, grafana(q, app)) for q in queries(board)
                       if "event=" not in q)

        eventually(tick, "data in every panel of the dashboard", timeout=60)

        by_title = {p["title"]: p for p in panels(board)}

        def pods_of(title: str) -> set[str]:
            (target,) = by_title[title]["targets"]
            return {s["metric"]["pod"] for s in instant(own_prometheus, target["expr"])}

        assert pods_of("All sampleapp pods") == {p for p in PODS if p.startswith("sampleapp-")}
        assert pods_of("sampleapp baseline and canary") == {
            p for p in PODS if "-baseline-" in p or "-canary-" in p}
        rates = {t["legendFormat"]: float(instant(own_prometheus, grafana(t["expr"], app))[0]
                                          ["value"][1])
                 for t in by_title["Success rate per variant"]["targets"]}
        assert rates == pytest.approx({"stable": 0.9, "baseline": 0.9, "canary": 0.5})
        (phase,) = instant(own_prometheus,
                           grafana(by_title["Phase per app"]["targets"][0]["expr"], app))
        mapping = by_title["Phase per app"]["fieldConfig"]["defaults"]["mappings"][0]
        assert mapping["options"][phase["value"][1]]["text"] == "Analyzing"

        # The annotations: the canary's start and its verdict, the first of each for the app.
        fired = {event_of(a): instant(own_prometheus, grafana(a["expr"], app))
                 for a in annotation_queries(board)}
        assert {e for e, series in fired.items() if series} == {"canary_started", "verdict"}
        assert all(s["metric"] == {"app": app} for s in fired["canary_started"])

        # The `app` variable: label_values(gitops_canary_app_phase, app), as Grafana asks it.
        (variable,) = variable_queries(board)
        metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable).groups()
        values = httpx.get(f"{own_prometheus.url}/api/v1/label/{label}/values",
                           params={"match[]": metric}, timeout=5.0).json()["data"]
        assert values == [app]
    finally:
        controller.shutdown()
        controller.server_close()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
