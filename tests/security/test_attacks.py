"""The deploy repository is untrusted input: attacks by someone who can push, played as real
commits against real git and the real cluster, with the controller's real reconcile code.

Each row of ATTACKS is one attack. The scene: two apps on stable, `web` (the victim, with
`approvers:`) and `shop` (the attacker's app), every namespace allowed — the most permissive
configuration. After the attack the controller reconciles a few times, and the test asserts
that stable `web` still runs its reviewed spec, that no object of the other app changed, that
`web`'s record is its own, and that the commit got the status the row names (the rule it broke).
A new attack is one row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.domain.types import ANNOTATION_FINGERPRINT
from controller.edges.git import GitSource
from controller.edges.kube import RECORD_PREFIX, Kube
from controller.edges.statuses import GitNotesSink
from controller.errors import ApiError, TransientError
from controller.reconcile import Reconciler
from tests.controller.conftest import (  # noqa: F401 (deploy_repo is a fixture)
    DeployRepo,
    Harness,
    deploy_repo,
    deployment,
    git,
    service,
)

pytestmark = pytest.mark.cluster

LEAD = "lead@example.com"
WEB, SHOP = "apps/web", "apps/shop"


@dataclass
class Scene:
    h: Harness

    @property
    def repo(self) -> DeployRepo:
        return self.h.repo

    def web_policy(self, **fields: Any) -> dict[str, Any]:
        return {"namespace": self.h.namespace, "bootstrap": "direct", "approvers": [LEAD],
                **fields}

    def shop_policy(self, **fields: Any) -> dict[str, Any]:
        return {"namespace": self.h.namespace, "bootstrap": "direct", **fields}

    def web_canary(self, rate: str = "20") -> str:
        """A reviewed-looking change of web: baseline and canary, running."""
        self.repo.write(f"{WEB}/deployment.yml", deployment("web", rate))
        sha = self.repo.commit(f"web: rate {rate}")
        self.h.settle(lambda: {"web-baseline", "web-canary"} <= set(self.h.deployments()),
                      "web's baseline and canary")
        return sha

    def live(self) -> dict[str, Any]:
        """Everything an attack must not change: both apps' live objects, web's record."""
        apps, core = client.AppsV1Api(self.h.api), client.CoreV1Api(self.h.api)
        ns = self.h.namespace
        found: dict[str, Any] = {}
        for name in ("web", "shop"):
            d = apps.read_namespaced_deployment(name, ns)
            found[f"deployment/{name}"] = (d.spec.template.to_dict(), d.spec.replicas)
            s = core.read_namespaced_service(name, ns)
            found[f"service/{name}"] = (s.spec.selector, [p.to_dict() for p in s.spec.ports],
                                        (s.metadata.labels or {}).get("gitops-canary/app"))
        record = self.h.record("web")
        found["record/web"] = (record.path, record.stable_revision)
        return found

    def status(self, sha: str) -> str:
        return self.repo.note(sha)


def _annotated(name: str, rate: str, annotations: dict[str, str]) -> dict[str, Any]:
    d = deployment(name, rate)
    d["metadata"]["annotations"] = annotations
    return d


# --- the attacks: each commits, and returns the commit whose status names the rule --------

def planted_rollback(s: Scene) -> str:
    """Plant the controller's rollback annotation, to have a later image change taken for a
    rollback (straight to stable)."""
    fp = s.h.deployments()["web"].metadata.annotations[ANNOTATION_FINGERPRINT]
    s.repo.write(f"{WEB}/deployment.yml", _annotated(
        "web", "10", {"gitops-canary/previous-fingerprint": fp}))
    return s.repo.commit("web: an innocent annotation")


def planted_variant_labels(s: Scene) -> str:
    """Ship an object carrying the variant labels of another app, for its cleanup to delete."""
    s.repo.write(f"{SHOP}/config.yml", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web-baseline", "labels": {"gitops-canary/app": "web",
                                                        "gitops-canary/version": "canary"}},
        "data": {"x": "1"}})
    return s.repo.commit("shop: config")


def prefix_approval(s: Scene) -> str:
    """Approve by a 7-character prefix, which a brute-forced later commit could share."""
    change = s.web_canary()
    s.repo.write(f"{WEB}/canary.yaml", s.web_policy(promote=change[:7]))
    return s.repo.commit("web: promote")


def stale_full_approval(s: Scene) -> str:
    """Leave an old full approval in canary.yaml and push a new image under it."""
    first = git(s.repo.clone, "log", "-1", "--format=%H", "--", f"{WEB}/deployment.yml")
    s.repo.write(f"{WEB}/canary.yaml", s.web_policy(promote=first))
    s.repo.commit("web: an approval of the first version, long done")
    s.repo.write(f"{WEB}/deployment.yml", deployment("web", "66"))
    return s.repo.commit("web: rate 66")


def approvers_dropped_and_approved(s: Scene) -> str:
    """One commit deletes `approvers:` and approves the running canary."""
    change = s.web_canary()
    s.repo.write(f"{WEB}/canary.yaml", s.web_policy(approvers=[], promote=change))
    return s.repo.commit("web: promote, without the approvers")


def author_email_claimed(s: Scene) -> str:
    """Approve as the lead by writing the lead's email as author: no key, no forge."""
    change = s.web_canary()
    s.repo.write(f"{WEB}/canary.yaml", s.web_policy(promote=change))
    git(s.repo.clone, "add", "-A")
    git(s.repo.clone, "commit", "-q", f"--author=Lead <{LEAD}>", "-m", "web: promote")
    s.repo.push()
    return change  # the refusal is on the canary's commit, where its verdict is


def record_edited_to_promoting(s: Scene) -> str:
    """Someone edits web's record in the cluster to say its canary is being promoted."""
    change = s.web_canary()
    core = client.CoreV1Api(s.h.api)
    name = f"{RECORD_PREFIX}web"
    record = json.loads(core.read_namespaced_config_map(name, s.h.state_namespace).data["record"])
    record.update(phase="Promoting", promoting="promote")
    core.patch_namespaced_config_map(name, s.h.state_namespace,
                                     {"data": {"record": json.dumps(record)}})
    return change


def forged_record(s: Scene) -> str:
    """Ship a ConfigMap into the state namespace shaped like web's record, phase Promoting."""
    s.web_canary()
    forged = {"app": "web", "phase": "Promoting", "promoting": "promote"}
    s.repo.write(f"{SHOP}/record.yml", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{RECORD_PREFIX}web", "namespace": s.h.state_namespace,
                     "labels": {"app.kubernetes.io/managed-by": "gitops-canary"}},
        "data": {"record": json.dumps(forged)}})
    return s.repo.commit("shop: a record")


def app_hijack(s: Scene) -> str:
    """A new folder declares `app: web` (first in path order), to take web's record."""
    s.web_canary()
    s.repo.write("apps/aaa/canary.yaml", s.shop_policy(app="web"))
    s.repo.write("apps/aaa/deployment.yml", deployment("aaa", "10"))
    return s.repo.commit("aaa: a new app")


def service_takeover(s: Scene) -> str:
    """shop's manifests name web's Service, to route web's traffic elsewhere."""
    evil = service("web")
    evil["spec"]["selector"] = {"app": "shop"}
    s.repo.write(f"{SHOP}/service-web.yml", evil)
    return s.repo.commit("shop: one more service")


def variant_named_deployment(s: Scene) -> str:
    """shop ships a Deployment named like web's canary variant."""
    s.repo.write(f"{SHOP}/web-canary.yml", deployment("web-canary", "99"))
    return s.repo.commit("shop: a worker")


def canary_changes_the_service(s: Scene) -> str:
    """A canary commit also changes the Service stable serves from (targetPort)."""
    changed = service("web")
    changed["spec"]["ports"][0]["targetPort"] = 9999
    s.repo.write(f"{WEB}/service.yml", changed)
    s.repo.write(f"{WEB}/deployment.yml", deployment("web", "20"))
    return s.repo.commit("web: rate 20, and a new port")


@dataclass(frozen=True)
class Attack:
    play: Callable[[Scene], str]
    state: str  # the status the attack's commit gets
    rule: str  # words of that status: the rule it broke ("" when the state says it all)
    canary_runs: bool = False  # web's canary (the attack's or the scene's) is still there


ATTACKS = {
    "planted rollback annotation": Attack(
        planted_rollback, "error", "previous-fingerprint: the controller's own key"),
    "planted variant labels": Attack(
        planted_variant_labels, "error", "gitops-canary/app: the controller's own key"),
    "approval by a sha prefix": Attack(
        prefix_approval, "error", "must be the full commit sha", canary_runs=True),
    "a stale approval left in canary.yaml": Attack(
        stale_full_approval, "pending", "canary deployed", canary_runs=True),
    "approvers dropped in the approving commit": Attack(
        approvers_dropped_and_approved, "pending", "canary deployed", canary_runs=True),
    "an approver's email claimed as author": Attack(
        author_email_claimed, "error", "neither signed by an approver's key",
        canary_runs=True),
    "record edited to Promoting": Attack(
        record_edited_to_promoting, "pending", "", canary_runs=True),
    "a forged record in the state namespace": Attack(
        forged_record, "error", "the state namespace is never written from git",
        canary_runs=True),
    "a second folder claiming app web": Attack(
        app_hijack, "error", "the name web belongs to apps/web", canary_runs=True),
    "another app's Service taken over": Attack(
        service_takeover, "error", "Service web exists and is not app shop's (managed by app web)"),
    "a Deployment named like a variant": Attack(
        variant_named_deployment, "error", "reserved for the controller's variants"),
    "a canary changing the Service stable serves from": Attack(
        canary_changes_the_service, "pending", "canary deployed", canary_runs=True),
}


@pytest.fixture
def scene(deploy_repo: DeployRepo, namespace: str, state_namespace: str,  # noqa: F811
          api_client: client.ApiClient, tmp_path: Path) -> Scene:
    source = GitSource(str(deploy_repo.remote), "main", tmp_path / "mirror")
    kube = Kube(api_client, None, state_namespace=state_namespace)  # every namespace allowed
    reconciler = Reconciler(source, kube, GitNotesSink(source))
    s = Scene(Harness(deploy_repo, namespace, api_client, reconciler, state_namespace))
    s.repo.write(f"{WEB}/canary.yaml", s.web_policy())
    s.repo.write(f"{WEB}/deployment.yml", deployment("web", "10"))
    s.repo.write(f"{WEB}/service.yml", service("web"))
    s.repo.write(f"{SHOP}/canary.yaml", s.shop_policy())
    s.repo.write(f"{SHOP}/deployment.yml", deployment("shop", "10"))
    s.repo.write(f"{SHOP}/service.yml", service("shop"))
    s.repo.commit("web and shop")
    s.h.settle(lambda: set(s.h.deployments()) == {"web", "shop"} and all(
        d.status.ready_replicas == 4 for d in s.h.deployments().values()) and all(
        s.h.record(app).phase == "Stable" for app in ("web", "shop")), "both stable")
    return s


@pytest.mark.parametrize("name", ATTACKS)
def test_an_attack_changes_nothing_but_its_own_status(scene: Scene, name: str) -> None:
    attack = ATTACKS[name]
    before = scene.live()
    sha = attack.play(scene)
    def line() -> str | None:
        """The status line of the attack's commit with the row's state and rule."""
        return next((each for each in scene.status(sha).splitlines()
                     if f": {attack.state}: " in each and attack.rule in each), None)

    note = scene.h.settle(line, f"the status {attack.state!r} ({attack.rule!r}) on {sha[:7]}")
    for _ in range(3):
        scene.h.reconcile()
    after = scene.live()
    assert after == before, name
    deployments = set(scene.h.deployments())
    assert ("web-canary" in deployments) is attack.canary_runs, deployments
    assert not deployments - {"web", "shop", "web-baseline", "web-canary"}, deployments
    assert scene.h.record("web").phase != "Promoting"
    assert note.startswith(("gitops-canary/web: ", "gitops-canary/shop: ")), note


def test_after_a_reject_the_live_service_equals_stable_again(scene: Scene) -> None:
    before = scene.live()
    canary_changes_the_service(scene)
    scene.h.settle(lambda: "web-canary" in scene.h.deployments(), "the canary")
    git(scene.repo.clone, "revert", "--no-edit", "HEAD")
    scene.repo.push()
    scene.h.settle(lambda: set(scene.h.deployments()) == {"web", "shop"}, "variants deleted")
    assert scene.live() == before


def test_an_early_config_the_canary_created_is_removed_by_its_reject(scene: Scene) -> None:
    """A ConfigMap new with the canary may go first (nothing stable reads it); the revert
    deletes it, so the cluster equals git's stable revision again."""
    d = deployment("web", "20", config="web-extra")
    scene.repo.write(f"{WEB}/deployment.yml", d)
    scene.repo.write(f"{WEB}/extra.yml", {"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": {"name": "web-extra"},
                                          "data": {"MODE": "new"}})
    scene.repo.commit("web: reads a new config")
    core = client.CoreV1Api(scene.h.api)
    scene.h.settle(lambda: "web-canary" in scene.h.deployments(), "the canary")
    names = {c.metadata.name for c in core.list_namespaced_config_map(scene.h.namespace).items}
    assert "web-extra" in names
    git(scene.repo.clone, "revert", "--no-edit", "HEAD")
    scene.repo.push()
    scene.h.settle(lambda: set(scene.h.deployments()) == {"web", "shop"}, "variants deleted")
    names = {c.metadata.name for c in core.list_namespaced_config_map(scene.h.namespace).items}
    assert "web-extra" not in names


def test_the_app_name_stays_with_its_folder_and_its_commits_still_work(scene: Scene) -> None:
    app_hijack(scene)
    scene.h.settle(lambda: "belongs to apps/web" in scene.status(
        git(scene.repo.clone, "rev-parse", "HEAD")), "the hijack refused")
    later = scene.web_canary("30")
    # "canary deployed", or already "baseline and canary ready" when the rollout was quick
    note = scene.h.settle(lambda: "pending: " in scene.status(later)
                          and "canary" in scene.status(later) and scene.status(later),
                          "web's own next canary")
    assert "already defined" not in note
    assert scene.h.record("web").path == WEB


def test_a_token_in_the_repository_url_is_refused_and_never_printed(tmp_path: Path) -> None:
    secret = "s3cr3t-t0ken"
    with pytest.raises(ApiError) as refused:
        GitSource(f"https://bot:{secret}@git.example.com/team/deploy.git", "main",
                  tmp_path / "mirror")
    assert secret not in str(refused.value)
    assert "--git-token-file" in str(refused.value)
    assert not (tmp_path / "mirror").exists()


def test_git_errors_never_print_credentials(tmp_path: Path) -> None:
    """A remote that fails names the URL without the token, whatever git prints."""
    secret = "t0ken-in-the-clear"
    source = GitSource("http://127.0.0.1:9/deploy.git", "main", tmp_path / "mirror", secret)
    source.url = f"http://bot:{secret}@127.0.0.1:9/deploy.git"  # as if configured so before
    source.where = source.url
    git(tmp_path / "mirror", "config", "remote.origin.url", source.url)
    with pytest.raises(TransientError) as failed:
        source.fetch()
    assert secret not in str(failed.value)
    assert "***@" in str(failed.value)
