"""The git edge at a thousand apps (issue 14), with real git and no cluster: the app list and
every folder's tree id come from one walk of the commit's tree, and a commit's status note can
hold a line for each of a thousand apps."""

from __future__ import annotations

from pathlib import Path

from controller.domain.types import Sha, StatusState
from controller.edges.git import GitSource
from controller.edges.statuses import GitNotesSink, Posting, parse_note, post_all
from tests.controller.conftest import DeployRepo, deployment, git


def test_one_tree_walk_finds_every_app_with_its_tree(deploy_repo: DeployRepo,
                                                      tmp_path: Path) -> None:
    deploy_repo.write("canary.yaml", {"app": "root"})
    deploy_repo.write("root.yml", deployment("root", "10"))
    for path in ("apps/web", "apps/team-a/shop", "apps/team-a/shop/nested"):
        deploy_repo.write(f"{path}/canary.yaml", {})
        deploy_repo.write(f"{path}/deployment.yml", deployment("x", "10"))
    deploy_repo.write("apps/team-a/shop/kustomization.yaml", {"resources": ["deployment.yml"]})
    deploy_repo.write("apps/docs/readme.md", "no canary.yaml: not an app\n")
    head = Sha(deploy_repo.commit("apps"))
    source = GitSource(str(deploy_repo.remote), "main", tmp_path / "mirror")
    assert source.fetch() == head

    found = source.apps(head)

    root = git(deploy_repo.clone, "rev-parse", "HEAD^{tree}")
    assert [(a.path, a.kustomize) for a in found] == [
        ("", False), ("apps/team-a/shop", True), ("apps/team-a/shop/nested", False),
        ("apps/web", False)]
    for folder in found:
        expected = git(deploy_repo.clone, "rev-parse", f"HEAD:{folder.path}")
        assert (folder.tree, folder.root) == (expected, root)


def one_commit(repo: DeployRepo, tmp_path: Path) -> tuple[Sha, GitSource]:
    """A commit, and the controller's mirror of the repository holding it."""
    repo.write("canary.yaml", {})
    head = Sha(repo.commit("one commit, many apps"))
    source = GitSource(str(repo.remote), "main", tmp_path / "mirror")
    source.fetch()
    return head, source


def test_a_commit_note_holds_a_line_for_each_of_a_thousand_apps(deploy_repo: DeployRepo,
                                                                 tmp_path: Path) -> None:
    head, source = one_commit(deploy_repo, tmp_path)
    # 1,000 lines of ~170 bytes: more than one command-line argument may hold (128 KiB).
    lines = {f"gitops-canary/app-{i:04d}": ("success", f"promoted: stable runs {head[:7]} "
                                            f"(4 replicas); {'x' * 100}") for i in range(1000)}
    text = "\n".join(f"{c}: {s}: {d}" for c, (s, d) in sorted(lines.items()))
    assert len(text) > 128 * 1024

    source.write_note(head, text)
    source.push_notes()
    GitNotesSink(source).post("app-1000", head, StatusState.SUCCESS, "one more")

    written = parse_note(deploy_repo.note(head))
    assert len(written) == 1001
    assert written["gitops-canary/app-0999"] == lines["gitops-canary/app-0999"]


class Wrapping:
    """A sink that wraps another and offers no batch: `post_all` posts through it in
    parallel (as the tests' counting sinks do)."""

    def __init__(self, inner: GitNotesSink) -> None:
        self.inner = inner

    def post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
        return self.inner.post(app, sha, state, description)


def test_statuses_posted_in_parallel_on_one_commit_keep_every_line(deploy_repo: DeployRepo,
                                                                    tmp_path: Path) -> None:
    head, source = one_commit(deploy_repo, tmp_path)
    postings = [Posting(f"app-{i:02d}", head, StatusState.PENDING, f"canary deployed {i}")
                for i in range(16)]

    errors = post_all(Wrapping(GitNotesSink(source)), postings)

    assert errors == [None] * 16
    written = parse_note(deploy_repo.note(head))
    assert sorted(written) == sorted(f"gitops-canary/{p.app}" for p in postings)
