"""Fixtures for the controller's integration tests: a real bare repository as the remote, a
working clone to commit from, and a reconciler wired to the real local cluster."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.domain.machine import Record
from controller.domain.types import AppName
from controller.edges.git import GitSource
from controller.edges.kube import Kube
from controller.edges.statuses import GitNotesSink
from controller.reconcile import Reconciler, Result

REPO = Path(__file__).resolve().parents[2]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass
class DeployRepo:
    remote: Path  # bare repository: the "server"
    clone: Path  # a person's working clone

    def write(self, path: str, content: str | dict[str, Any] | list[dict[str, Any]]) -> None:
        target = self.clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        elif isinstance(content, list):
            target.write_text(yaml.safe_dump_all(content, sort_keys=False))
        else:
            target.write_text(yaml.safe_dump(content, sort_keys=False))

    def remove(self, path: str) -> None:
        git(self.clone, "rm", "-rq", path)

    def commit(self, message: str, push: bool = True) -> str:
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "-m", message)
        if push:
            self.push()
        return git(self.clone, "rev-parse", "HEAD")

    def push(self, force: bool = False) -> None:
        git(self.clone, "push", "-q", *(["--force"] if force else []), "origin", "HEAD:main")

    def note(self, sha: str) -> str:
        """The status note the controller pushed for a commit ("" when none)."""
        if not git(self.clone, "ls-remote", "origin", "refs/notes/gitops-canary"):
            return ""
        git(self.clone, "fetch", "-q", "origin",
            "+refs/notes/gitops-canary:refs/notes/gitops-canary")
        try:
            return git(self.clone, "notes", "--ref=gitops-canary", "show", sha)
        except subprocess.CalledProcessError:
            return ""


    @classmethod
    def create(cls, remote: Path, clone: Path) -> DeployRepo:
        """A bare repository (the "server") and a person's clone of it, on branch main."""
        git(remote.parent, "init", "-q", "--bare", "-b", "main", str(remote))
        git(remote.parent, "clone", "-q", str(remote), str(clone))
        git(clone, "checkout", "-q", "-b", "main")
        git(clone, "config", "user.name", "Dev")
        git(clone, "config", "user.email", "dev@example.com")
        return cls(remote, clone)


@pytest.fixture
def deploy_repo(tmp_path: Path) -> DeployRepo:
    return DeployRepo.create(tmp_path / "remote.git", tmp_path / "clone")


def deployment(name: str, rate: str, replicas: int = 4, image: str = "sampleapp:v1",
               config: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": image,
                                 "env": [{"name": "SUCCESS_RATE", "value": rate}],
                                 "ports": [{"containerPort": 8080, "name": "http"}]}
    if config:
        container["envFrom"] = [{"configMapRef": {"name": config}}]
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


@dataclass
class Harness:
    repo: DeployRepo
    namespace: str
    api: client.ApiClient
    reconciler: Reconciler
    state_namespace: str

    def reconcile(self) -> Result:
        return self.reconciler.reconcile()

    def settle(self, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        """Reconcile until `condition()` is truthy (rollouts on kwok take about a second)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.reconcile()
            last = condition()
            if last:
                return last
            time.sleep(0.3)
        pytest.fail(f"not settled after {timeout:.0f}s: {what} (last: {last!r})")

    def deployments(self) -> dict[str, client.V1Deployment]:
        items = client.AppsV1Api(self.api).list_namespaced_deployment(self.namespace).items
        return {str(d.metadata.name): d for d in items}

    def record(self, app: str) -> Record:
        found = self.reconciler.kube.records().get(AppName(app))
        assert found is not None, f"no record for {app}"
        return found


def new_reconciler(remote: Path, workdir: Path, api: client.ApiClient,
                   namespace: str, state_namespace: str,
                   allowed_signers: Path | None = None) -> Reconciler:
    source = GitSource(str(remote), "main", workdir)
    kube = Kube(api, frozenset({namespace}), state_namespace=state_namespace)
    return Reconciler(source, kube, GitNotesSink(source), allowed_signers=allowed_signers)


@pytest.fixture
def harness(deploy_repo: DeployRepo, namespace: str, state_namespace: str,
            api_client: client.ApiClient, tmp_path: Path) -> Harness:
    return Harness(deploy_repo, namespace, api_client,
                   new_reconciler(deploy_repo.remote, tmp_path / "mirror", api_client, namespace,
                                  state_namespace), state_namespace)
