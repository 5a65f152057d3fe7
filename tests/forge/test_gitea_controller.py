"""The controller with a real Gitea: statuses on the right commit, a promote pull request merged
through the API promotes stable in the real cluster, a push webhook wakes it within a second,
and a forged webhook is refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from controller.domain.types import Sha
from controller.edges.forges import ForgeStatusSink, auth_headers, make_forge
from controller.edges.git import GitSource
from controller.edges.kube import Kube
from controller.metrics import Metrics, serve
from controller.promotions import PromotionRequests
from controller.reconcile import Reconciler
from controller.run import loop
from localcluster.gitea import Gitea
from localcluster.processes import free_port
from tests.controller.conftest import deployment, git, service
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

APP = "sampleapp"


@dataclass
class ForgeHarness:
    gitea: Gitea
    repo: str  # owner/name
    clone: Path
    namespace: str
    api: client.ApiClient
    reconciler: Reconciler
    pushed_at: float = 0.0  # when the last `git push` returned

    def write(self, path: str, content: dict[str, Any]) -> None:
        (self.clone / path).parent.mkdir(parents=True, exist_ok=True)
        (self.clone / path).write_text(yaml.safe_dump(content, sort_keys=False))

    def commit(self, message: str) -> str:
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "-m", message)
        if git(self.clone, "ls-remote", "origin", "refs/heads/main"):
            git(self.clone, "pull", "-q", "--rebase", "origin", "main")
        git(self.clone, "push", "-q", "origin", "HEAD:main")
        self.pushed_at = time.monotonic()
        sha = git(self.clone, "rev-parse", "HEAD")
        self.gitea.wait_for_push(self.repo, sha)
        return sha

    def statuses(self, sha: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.gitea.api(
            "GET", f"/repos/{self.repo}/commits/{sha}/statuses")
        return sorted(found, key=lambda s: int(s["id"]), reverse=True)  # newest first

    def deployments(self) -> dict[str, client.V1Deployment]:
        items = client.AppsV1Api(self.api).list_namespaced_deployment(self.namespace).items
        return {str(d.metadata.name): d for d in items}

    def settle(self, condition: Any, what: str) -> Any:
        def probe() -> Any:
            self.reconciler.reconcile()
            return condition()
        return eventually(probe, what, every=0.3)


@pytest.fixture
def forge(gitea: Gitea, namespace: str, state_namespace: str, api_client: client.ApiClient,
          tmp_path: Path) -> Iterator[ForgeHarness]:
    name = f"deploy-{uuid.uuid4().hex[:6]}"
    gitea.create_repo(name)
    repo = f"{gitea.admin}/{name}"
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", gitea.http_url_with_auth(name), str(clone))
    git(clone, "checkout", "-q", "-b", "main")
    git(clone, "config", "user.name", "Dev")
    git(clone, "config", "user.email", "dev@example.com")
    source = GitSource(f"{gitea.url}/{repo}.git", "main", tmp_path / "mirror", gitea.token,
                       username=gitea.admin)
    http = httpx.Client(base_url=gitea.url, headers=auth_headers("gitea", gitea.token),
                        timeout=10.0, trust_env=False)
    forge_ = make_forge("gitea", repo)
    def approvers(commit: Sha) -> frozenset[str]:
        approval = forge_.approval_of(http, commit)
        return frozenset() if approval is None else approval.identities

    reconciler = Reconciler(source, Kube(api_client, frozenset({namespace}),
                                         state_namespace=state_namespace),
                            ForgeStatusSink(forge_, http, "http://grafana.local/d/canary?app={app}"),
                            promotions=PromotionRequests(forge_, http, source),
                            forge_approvers=approvers)
    try:
        yield ForgeHarness(gitea, repo, clone, namespace, api_client, reconciler)
    finally:
        http.close()


def first_version(forge: ForgeHarness, **policy: Any) -> str:
    forge.write(f"{APP}/canary.yaml", {"namespace": forge.namespace, **policy})
    forge.write(f"{APP}/deployment.yml", deployment(APP, "10"))
    forge.write(f"{APP}/service.yml", service(APP))
    return forge.commit("sampleapp: first version")


def test_statuses_and_a_promote_pull_request_merged_through_the_api(forge: ForgeHarness) -> None:
    first = first_version(forge)
    forge.settle(lambda: (d := forge.deployments()) and "sampleapp-canary" in d, "the canary")

    def latest() -> dict[str, Any] | None:
        mine = [s for s in forge.statuses(first) if s["context"] == f"gitops-canary/{APP}"]
        return mine[0] if mine and mine[0]["status"] == "success" else None

    status = forge.settle(latest, "a success status on the first commit")
    assert status["description"].startswith("awaiting promotion: first deployment")
    assert status["target_url"] == "http://grafana.local/d/canary?app=sampleapp"

    pulls = forge.settle(lambda: forge.gitea.api("GET", f"/repos/{forge.repo}/pulls",
                                                 params={"state": "open"}), "a promote PR")
    (pull,) = pulls
    assert pull["title"] == f"Promote {APP} canary {first[:7]}"
    assert pull["head"]["ref"] == f"gitops-canary/promote-{APP}"
    files = forge.gitea.api("GET", f"/repos/{forge.repo}/pulls/{pull['number']}/files")
    assert [f["filename"] for f in files] == [f"{APP}/canary.yaml"]

    forge.gitea.api("POST", f"/repos/{forge.repo}/pulls/{pull['number']}/merge",
                    json={"Do": "merge"})
    found = forge.settle(lambda: (d := forge.deployments()) and sorted(d) == [APP]
                         and d[APP].status.ready_replicas == 4 and d, "stable promoted")
    assert found[APP].spec.template.spec.containers[0].env[0].value == "10"
    promoted = forge.settle(lambda: (s := latest()) and "promoted" in s["description"] and s,
                            "the promoted status")
    assert promoted["status"] == "success"


def test_a_push_webhook_wakes_the_controller_within_a_second_and_forgeries_are_refused(
        forge: ForgeHarness) -> None:
    secret = uuid.uuid4().hex
    first_version(forge, bootstrap="direct")
    forge.settle(lambda: (d := forge.deployments()) and APP in d, "stable")

    heads: list[tuple[float, str]] = []
    settled: list[bool] = []
    original = forge.reconciler.reconcile

    def recording() -> Any:
        started = time.monotonic()  # the reconcile's start: it fetches, then acts
        result = original()
        heads.append((started, str(result.head)))
        settled.append(not result.waiting and result.next_analysis is None)
        return result

    forge.reconciler.reconcile = recording  # type: ignore[method-assign]
    stop, wake, port = threading.Event(), threading.Event(), free_port()
    received: list[float] = []

    def on_push() -> None:
        received.append(time.monotonic())
        wake.set()

    server = serve(Metrics(), f"127.0.0.1:{port}", 60, on_push=on_push, webhook_secret=secret)
    runner = threading.Thread(target=loop, args=(forge.reconciler, 60.0, stop, wake),
                              daemon=True)
    runner.start()
    try:
        forge.gitea.api("POST", f"/repos/{forge.repo}/hooks", json={
            "type": "gitea", "active": True, "events": ["push"],
            "config": {"url": f"http://127.0.0.1:{port}/webhook", "content_type": "json",
                       "secret": secret}})
        # Until stable is ready the loop turns every second on its own; once settled it
        # sleeps for its 60 s interval, and only the webhook can wake it.
        eventually(lambda: settled and settled[-1], "a settled reconcile", timeout=60)
        time.sleep(0.5)

        forge.write(f"{APP}/deployment.yml", deployment(APP, "20"))
        sha = forge.commit("rate 20")
        hook = eventually(lambda: next((t for t in received if t > forge.pushed_at), None),
                          "Gitea's webhook delivery", timeout=10, every=0.02)
        woke = eventually(lambda: next((t for t, head in heads if head == sha and t >= hook),
                                       None),
                          "a reconcile of the pushed commit after the webhook", timeout=10,
                          every=0.02)
        print(f"push → webhook {hook - forge.pushed_at:.2f}s (Gitea's delivery), webhook → "
              f"reconcile {woke - hook:.3f}s; the poll interval is 60s")
        assert woke - hook < 1.0

        before = len(heads)
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        forged = httpx.post(f"http://127.0.0.1:{port}/webhook", content=body, headers={
            "X-Gitea-Event": "push",
            "X-Gitea-Signature": hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()},
            trust_env=False)
        assert forged.status_code == 401
        time.sleep(1.0)
        assert len(heads) == before  # nothing woke the loop
    finally:
        stop.set()
        runner.join(timeout=10)
        server.shutdown()
        server.server_close()


def test_a_superseded_canary_has_its_promote_request_closed_with_a_comment(
        forge: ForgeHarness) -> None:
    first = first_version(forge)

    def open_pulls() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = forge.gitea.api(
            "GET", f"/repos/{forge.repo}/pulls", params={"state": "open"})
        return found

    (old,) = forge.settle(open_pulls, "the first promote request")
    assert first[:7] in old["title"]
    forge.write(f"{APP}/deployment.yml", deployment(APP, "30"))
    second = forge.commit("rate 30 before anyone promoted")

    (new,) = forge.settle(lambda: (p := open_pulls()) and second[:7] in p[0]["title"] and p,
                          "a promote request for the new canary")
    closed = forge.gitea.api("GET", f"/repos/{forge.repo}/pulls/{old['number']}")
    assert closed["state"] == "closed"
    assert not closed["merged"]
    comments = forge.gitea.api("GET", f"/repos/{forge.repo}/issues/{old['number']}/comments")
    assert any("Closed by gitops-canary: superseded by" in c["body"] for c in comments)
    assert new["number"] != old["number"]


def merge_as(forge: ForgeHarness, number: int, token: str | None) -> None:
    """Merge a pull request with a user's token (Gitea may answer 405 while it re-checks a
    request it has just opened: wait and retry)."""
    def merged() -> bool:
        with forge.gitea.client(token) as http:
            response = http.post(f"/repos/{forge.repo}/pulls/{number}/merge",
                                 json={"Do": "merge"})
        return response.status_code == 200
    eventually(merged, f"pull request #{number} merged", every=0.5)


@pytest.mark.parametrize("merger", ["alice", "admin"])
def test_forge_approvers_a_promote_request_merged_by_an_approver_promotes(
        forge: ForgeHarness, merger: str) -> None:
    """`approvers:` naming forge users: the merge of the promote request counts when an
    approver merged it (read from Gitea's API), never when anyone else did."""
    name = f"alice{uuid.uuid4().hex[:6]}"
    token = forge.gitea.create_user(name, f"{name}@example.com")
    forge.gitea.add_collaborator(forge.repo, name, "write")
    first = first_version(forge, approvers=[name])
    (pull,) = forge.settle(lambda: forge.gitea.api("GET", f"/repos/{forge.repo}/pulls",
                                                   params={"state": "open"}), "a promote PR")
    merge_as(forge, pull["number"], token if merger == "alice" else None)

    def latest() -> dict[str, Any] | None:
        mine = [s for s in forge.statuses(first) if s["context"] == f"gitops-canary/{APP}"]
        return mine[0] if mine else None

    if merger == "alice":
        forge.settle(lambda: (d := forge.deployments()) and sorted(d) == [APP], "promoted")
        done = forge.settle(lambda: (s := latest()) and "promoted" in s["description"] and s,
                            "the promoted status")
        assert done["status"] == "success"
    else:
        refused = forge.settle(lambda: (s := latest()) and "approval refused" in s["description"]
                               and s, "the refusal")
        assert refused["status"] == "error"
        assert "nor a pull request merged or approved by an approver" in refused["description"]
        for _ in range(3):
            forge.reconciler.reconcile()
        assert sorted(forge.deployments()) == [f"{APP}-canary"]
