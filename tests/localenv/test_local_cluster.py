"""The local cluster is a real Kubernetes: controllers, scheduler, endpoints, SSA and RBAC work."""

from __future__ import annotations

import ipaddress
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError

from tests.waiting import eventually

pytestmark = pytest.mark.cluster

T = TypeVar("T")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
APP = {"app": "sampleapp"}




def deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": APP},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": APP},
            "template": {
                "metadata": {"labels": APP},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "sampleapp:v1",
                         "ports": [{"containerPort": 8080, "name": "http"}]}
                    ]
                },
            },
        },
    }


def ready_pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector="app=sampleapp").items
    return [
        pod for pod in pods
        if pod.status.pod_ip
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def test_version_is_the_pinned_release(api_client: client.ApiClient) -> None:
    info = client.VersionApi(api_client).get_code()
    assert info.git_version == "v1.36.3"
    assert (info.major, info.minor) == ("1", "36")


def test_deployment_gets_a_replicaset_and_ready_pods_on_loopback_ips(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment("sampleapp", 4))

    replicasets = eventually(
        lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=sampleapp").items,
        "a ReplicaSet owned by the Deployment",
    )
    assert len(replicasets) == 1
    assert replicasets[0].metadata.owner_references[0].name == "sampleapp"

    pods = eventually(lambda: len(ready_pods(core, namespace)) == 4 and ready_pods(core, namespace),
                      "4 Ready pods")
    ips = [ipaddress.ip_address(pod.status.pod_ip) for pod in pods]
    assert all(ip in LOOPBACK for ip in ips), ips
    assert len(set(ips)) == 4, f"pod IPs must be distinct: {ips}"
    assert all(pod.spec.node_name and pod.spec.node_name.startswith("kwok-node-") for pod in pods)

    status = eventually(
        lambda: (d := apps.read_namespaced_deployment(namespace=namespace, name="sampleapp"))
        and d.status.ready_replicas == 4 and d.status,
        "the Deployment to report 4 ready replicas",
    )
    assert status.available_replicas == 4


def test_service_gets_an_endpointslice_of_the_ready_pods(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    apps.create_namespaced_deployment(namespace, deployment("sampleapp", 3))
    core.create_namespaced_service(namespace, {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sampleapp"},
        "spec": {"selector": APP, "ports": [{"port": 8080, "targetPort": "http", "name": "http"}]},
    })
    pods = eventually(lambda: len(ready_pods(core, namespace)) == 3 and ready_pods(core, namespace),
                      "3 Ready pods")

    def slice_addresses() -> set[str] | None:
        slices = discovery.list_namespaced_endpoint_slice(
            namespace, label_selector="kubernetes.io/service-name=sampleapp").items
        ready = {
            address
            for s in slices for e in s.endpoints or []
            if e.conditions.ready for address in e.addresses
        }
        return ready if len(ready) == 3 else None

    addresses = eventually(slice_addresses, "an EndpointSlice listing the 3 ready pods")
    assert addresses == {pod.status.pod_ip for pod in pods}

    service = core.read_namespaced_service("sampleapp", namespace)
    assert ipaddress.ip_address(service.spec.cluster_ip) in LOOPBACK


def test_server_side_apply_records_the_field_manager_and_detects_conflicts(
    api_client: client.ApiClient, namespace: str
) -> None:
    dynamic = DynamicClient(api_client)
    configmaps = dynamic.resources.get(api_version="v1", kind="ConfigMap")
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": namespace},
            "data": {"SUCCESS_RATE": "10"}}

    applied = configmaps.server_side_apply(body=body, field_manager="gitops-canary")
    managers = {entry.manager: entry.operation for entry in applied.metadata.managedFields}
    assert managers == {"gitops-canary": "Apply"}

    changed = {**body, "data": {"SUCCESS_RATE": "20"}}
    with pytest.raises(ConflictError):
        configmaps.server_side_apply(body=changed, field_manager="someone-else")
    forced = configmaps.server_side_apply(body=changed, field_manager="someone-else",
                                          force_conflicts=True)
    assert forced.data["SUCCESS_RATE"] == "20"
    assert {entry.manager for entry in forced.metadata.managedFields} == {"someone-else"}


def test_rbac_denies_a_service_account_without_rights(
    api_client: client.ApiClient, namespace: str
) -> None:
    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody")))
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token

    as_nobody = client.Configuration()
    as_nobody.host = api_client.configuration.host
    as_nobody.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    as_nobody.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(as_nobody) as nobody_client:
        nobody = client.CoreV1Api(nobody_client)
        with pytest.raises(ApiException) as denied:
            nobody.list_namespaced_pod(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:nobody" in denied.value.body

        # The same token works once a Role grants the right: the 403 was RBAC, not a bad token.
        rbac.create_namespaced_role(namespace, {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        })
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "nobody-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
        })

        def allowed() -> bool:
            try:
                nobody.list_namespaced_pod(namespace)
            except ApiException as error:
                if error.status != 403:
                    raise
                return False
            return True

        eventually(allowed, "the RoleBinding to take effect", timeout=15)
        with pytest.raises(ApiException) as still_denied:
            nobody.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403
