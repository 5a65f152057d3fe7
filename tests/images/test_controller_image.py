"""The controller's image (Dockerfile) runs as misc/install's Deployment runs it, and plays a
canary: `gitops-canary run` with the install's arguments, in-cluster config from the mounted
ServiceAccount token and CA, uid 10001, a read-only root file system, the install's RBAC and
nothing more. A push makes the canary variant; its status is a git note on the commit; a
promote commit makes it stable."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from tests.controller.conftest import deployment, service
from tests.images.conftest import (
    COMPOSE_FILE,
    SERVICE_ACCOUNT_PATH,
    Compose,
    ControllerSetup,
    controller_pod,
    install_objects,
)
from tests.waiting import eventually

APP = "apps/sampleapp"
# The values compose.yaml sets for the test: its repository, namespaces, Prometheus, a loopback
# port (host networking) and a short interval. Every other argument is the install's.
SET_BY_THE_TEST = {"--repo", "--interval", "--namespaces", "--state-namespace",
                   "--prometheus-url", "--metrics-address"}


def shape(args: list[str]) -> list[str]:
    return ["<set by the test>" if i and args[i - 1] in SET_BY_THE_TEST else arg
            for i, arg in enumerate(args)]


def test_compose_runs_the_controller_as_misc_install_does(render_tools: Path) -> None:
    """What compose.yaml gives the container is what the install's pod spec asks for."""
    pod = controller_pod(install_objects(render_tools / "kustomize"))
    (container,) = pod["containers"]
    service_ = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["controller"]
    assert shape(service_["command"]) == shape(container["args"])
    assert set(container["args"]) >= SET_BY_THE_TEST
    security = {**pod["securityContext"], **container["securityContext"]}
    assert service_["user"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert service_["read_only"] is security["readOnlyRootFilesystem"] is True
    assert service_["cap_drop"] == container["securityContext"]["capabilities"]["drop"]
    assert ("no-new-privileges" in service_["security_opt"]) is \
        (not security["allowPrivilegeEscalation"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {k: service_["environment"][k] for k in env} == env
    # emptyDirs are tmpfs; the Secret's folder and the ServiceAccount's are read-only binds.
    volumes = {v["name"]: v for v in pod["volumes"]}
    binds = {spec.split(":")[1]: spec.split(":")[2] for spec in service_["volumes"]}
    for mount in container["volumeMounts"]:
        if "emptyDir" in volumes[mount["name"]]:
            assert mount["mountPath"] in service_["tmpfs"], mount
        else:
            assert binds[mount["mountPath"]] == "ro", mount
    assert binds[SERVICE_ACCOUNT_PATH] == "ro"
    assert "KUBERNETES_SERVICE_HOST" in service_["environment"]
    assert pod["serviceAccountName"]


@pytest.mark.cluster
def test_the_image_carries_git_ssh_and_the_pinned_render_tools(
        controller_container: ControllerSetup, compose: Compose, render_tools: Path) -> None:
    def inside(*command: str) -> str:
        return compose.run("exec", "-T", "controller", *command).stdout.strip()

    assert inside("id", "-u") == "10001"
    assert inside("git", "--version").startswith("git version ")
    assert inside("sh", "-c", "ssh -V 2>&1").startswith("OpenSSH_")
    assert inside("sh", "-c", "test -s /etc/ssl/certs/ca-certificates.crt && echo ok") == "ok"
    versions = (render_tools / "VERSIONS").read_text().split()
    assert inside("kustomize", "version") == versions[versions.index("kustomize") + 1]
    assert inside("helm", "version", "--template", "{{.Version}}") == \
        versions[versions.index("helm") + 1]
    # The root file system is read-only; the emptyDirs are writable by the controller's user.
    refused = compose.run("exec", "-T", "controller", "touch", "/usr/local/x", check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr + refused.stdout
    assert inside("sh", "-c", "touch /tmp/x /var/lib/gitops-canary/x && echo ok") == "ok"


def deployments(api: client.ApiClient, namespace: str, *names: str
                ) -> dict[str, client.V1Deployment] | None:
    """The namespace's Deployments by name, when they are exactly `names`."""
    found = {str(d.metadata.name): d for d in
             client.AppsV1Api(api).list_namespaced_deployment(namespace).items}
    return found if sorted(found) == sorted(names) else None


@pytest.mark.cluster
@pytest.mark.prometheus
def test_the_container_plays_a_canary_push_variants_status(
        controller_container: ControllerSetup, compose: Compose,
        api_client: client.ApiClient) -> None:
    setup = controller_container
    metrics = f"http://127.0.0.1:{setup.metrics_port}"
    assert httpx.get(f"{metrics}/healthz", timeout=5).status_code == 200

    repo = setup.repo
    policy = {"namespace": setup.app_namespace, "percentage": 25}
    repo.write(f"{APP}/canary.yaml", policy)
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10"))
    repo.write(f"{APP}/service.yml", service("sampleapp"))
    first = repo.commit("sampleapp: first version")

    def log() -> str:
        return compose.logs("controller")[-3000:]

    found = eventually(lambda: deployments(api_client, setup.app_namespace, "sampleapp-canary"),
                       "the canary variant of the first version", timeout=90)
    assert found["sampleapp-canary"].spec.replicas == 1, log()
    note = eventually(lambda: "awaiting promotion" in repo.note(first) and repo.note(first),
                      "the awaiting-promotion status on the pushed commit", timeout=60)
    assert "gitops-canary/sampleapp: success: awaiting promotion: first deployment" in note

    repo.write(f"{APP}/canary.yaml", {**policy, "promote": first})
    approval = repo.commit("promote sampleapp")
    stable = eventually(lambda: deployments(api_client, setup.app_namespace, "sampleapp"),
                        "stable sampleapp, the canary gone", timeout=90)
    assert stable["sampleapp"].spec.replicas == 4
    # Statuses belong to the canary's commit.
    promoted = eventually(lambda: "promoted" in repo.note(first) and repo.note(first),
                          "the promoted status on the canary's commit", timeout=60)
    assert "success: promoted: stable runs" in promoted, promoted
    assert repo.note(approval) == ""

    # The leader's Lease and the app's record are in the state namespace, written with the
    # ServiceAccount's rights; the metrics endpoint counts the reconciles.
    core = client.CoreV1Api(api_client)
    assert core.read_namespaced_config_map("gitops-canary.sampleapp", setup.state_namespace)
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(
        "gitops-canary-leader", setup.state_namespace)
    assert lease.spec.holder_identity
    exported = httpx.get(f"{metrics}/metrics", timeout=5).text
    assert "gitops_canary_" in exported
