"""`gitops-canary promote` and `reject` prepare real commits in a real clone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.cli import _restore_stable, main
from controller.domain.policy import POLICY_FILE, parse_policy
from controller.domain.types import Sha
from controller.edges.git import GitRepo
from controller.errors import CanaryError


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def deployment(rate: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sampleapp"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "sampleapp"}},
                 "template": {"metadata": {"labels": {"app": "sampleapp"}}, "spec": {
                     "containers": [{"name": "app", "image": "sampleapp:v1",
                                     "env": [{"name": "SUCCESS_RATE", "value": rate}]}]}}}})


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    repo = tmp_path / "deploy"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Dev")
    git(repo, "config", "user.email", "dev@example.com")
    app = repo / "apps" / "sampleapp"
    app.mkdir(parents=True)
    (app / "canary.yaml").write_text("# the sample app\nnamespace: demo\npercentage: 25\n")
    (app / "deployment.yml").write_text(deployment("10"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first version")
    (app / "deployment.yml").write_text(deployment("20"))
    git(repo, "commit", "-q", "-am", "success rate 20")
    return repo


def test_promote_commits_the_approval_of_the_canary_revision(clone: Path,
                                                               capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    canary = git(clone, "rev-parse", "HEAD")
    assert main(["promote", "sampleapp", "--repo", str(clone)]) == 0
    assert "push it" in capsys.readouterr().out
    text = (clone / "apps/sampleapp/canary.yaml").read_text()
    assert text.startswith("# the sample app\n")  # comments survive
    assert parse_policy(text, "canary.yaml", "sampleapp").promote == canary
    assert git(clone, "log", "-1", "--format=%s") == f"Promote sampleapp canary {canary[:7]}"
    assert git(clone, "status", "--porcelain") == ""

    # The approval commit does not change what pods run: promoting again names the same sha.
    assert main(["promote", "sampleapp", "--repo", str(clone)]) == 0
    text = (clone / "apps/sampleapp/canary.yaml").read_text()
    assert text.count("promote:") == 1
    assert parse_policy(text, "canary.yaml", "sampleapp").promote == canary


def test_reject_commits_the_revert_of_the_canary_revision(clone: Path) -> None:
    canary = git(clone, "rev-parse", "HEAD")
    assert main(["reject", "sampleapp", "--repo", str(clone)]) == 0
    assert (clone / "apps/sampleapp/deployment.yml").read_text() == deployment("10")
    assert git(clone, "rev-parse", "HEAD~1") == canary
    assert canary in git(clone, "log", "-1", "--format=%B")


def test_refuses_a_dirty_clone_and_an_unknown_app(clone: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promote", "nosuchapp", "--repo", str(clone)]) == 2
    assert "no app named nosuchapp (found: sampleapp)" in capsys.readouterr().err
    (clone / "apps/sampleapp/deployment.yml").write_text(deployment("30"))
    assert main(["promote", "sampleapp", "--repo", str(clone)]) == 2
    assert "uncommitted changes" in capsys.readouterr().err


# --- reject restores stable's revision with git: the canary's symlinks lead nowhere -------------


def restore(clone: Path, stable: str) -> int:
    """`reject` with the cluster's record naming `stable`, without the cluster."""
    repo = GitRepo.open(clone)
    policy_path = Path(str(repo.repo.working_dir)) / "apps/sampleapp" / POLICY_FILE
    canary = git(clone, "rev-parse", "HEAD")
    return _restore_stable(repo, policy_path, "sampleapp", Sha(stable), Sha(canary))


def service(port: int) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sampleapp"},
                           "spec": {"ports": [{"port": port}]}})


def entry(clone: Path, path: str) -> tuple[str, str]:
    """(mode, type) of `path` in HEAD."""
    mode, kind, _ = git(clone, "ls-tree", "HEAD", "--", path).partition("\t")[0].split()
    return mode, kind


def test_reject_replaces_a_symlinked_file_and_leaves_its_target_alone(
        clone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stable = git(clone, "rev-parse", "HEAD~1")
    secret = tmp_path / "outside" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n")
    target = clone / "apps/sampleapp/deployment.yml"
    target.unlink()
    target.symlink_to(secret)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "deployment.yml points at ~/.ssh")
    canary = git(clone, "rev-parse", "HEAD")

    assert restore(clone, stable) == 0
    assert secret.read_bytes() == b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n"
    assert entry(clone, "apps/sampleapp/deployment.yml") == ("100644", "blob")
    assert git(clone, "show", "HEAD:apps/sampleapp/deployment.yml") == deployment("10").strip()
    assert not target.is_symlink()
    assert target.read_text() == deployment("10")
    assert git(clone, "rev-parse", "HEAD~1") == canary
    assert git(clone, "status", "--porcelain") == ""
    head = git(clone, "rev-parse", "--short=7", "HEAD")
    assert capsys.readouterr().out == (
        f"committed {head}: sampleapp back to stable {stable[:7]}; push it (or open a pull "
        f"request) to reject the canary {canary[:7]}\n")


def test_reject_replaces_a_symlinked_folder_and_leaves_the_outside_folder_alone(
        clone: Path, tmp_path: Path) -> None:
    app = clone / "apps/sampleapp"
    (app / "canary.yaml").write_text("namespace: demo\nmanifests: ['*.yml', 'config/*.yml']\n")
    (app / "config").mkdir()
    (app / "config/service.yml").write_text(service(80))
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "a config folder")
    stable = git(clone, "rev-parse", "HEAD")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "authorized_keys").write_text("ssh-ed25519 AAAA me\n")
    (outside / "service.yml").write_text(service(22))
    git(clone, "rm", "-q", "-r", "apps/sampleapp/config")
    (app / "config").symlink_to(outside, target_is_directory=True)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "config points outside")

    assert restore(clone, stable) == 0
    assert sorted(p.name for p in outside.iterdir()) == ["authorized_keys", "service.yml"]
    assert (outside / "authorized_keys").read_text() == "ssh-ed25519 AAAA me\n"
    assert (outside / "service.yml").read_text() == service(22)
    assert not (app / "config").is_symlink()
    assert (app / "config").is_dir()
    assert (app / "config/service.yml").read_text() == service(80)
    assert entry(clone, "apps/sampleapp/config") == ("040000", "tree")
    assert git(clone, "status", "--porcelain") == ""


def test_reject_removes_the_canarys_files_and_keeps_the_policy_of_head(clone: Path) -> None:
    stable = git(clone, "rev-parse", "HEAD~1")
    app = clone / "apps/sampleapp"
    (app / "service.yml").write_text(service(80))
    (app / "canary.yaml").write_text("# the sample app\nnamespace: demo\npercentage: 10\n")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "a service and a smaller canary")
    canary = git(clone, "rev-parse", "HEAD")

    assert restore(clone, stable) == 0
    assert not (app / "service.yml").exists()
    assert git(clone, "ls-tree", "--name-only", "HEAD", "apps/sampleapp/").split() == [
        "apps/sampleapp/canary.yaml", "apps/sampleapp/deployment.yml"]
    assert (app / "canary.yaml").read_text() == \
        "# the sample app\nnamespace: demo\npercentage: 10\n"
    assert git(clone, "show", "HEAD:apps/sampleapp/canary.yaml") == \
        "# the sample app\nnamespace: demo\npercentage: 10"
    assert (app / "deployment.yml").read_text() == deployment("10")
    assert git(clone, "log", "-1", "--format=%B") == (
        f"Reject sampleapp canary {canary[:7]}: back to stable {stable[:7]}\n\n"
        f"Restores apps/sampleapp (except canary.yaml) as of {stable}.")
    assert git(clone, "rev-parse", "HEAD~1") == canary
    assert git(clone, "status", "--porcelain") == ""


def test_reject_restores_stables_own_symlinks_as_symlinks(clone: Path, tmp_path: Path) -> None:
    app = clone / "apps/sampleapp"
    (app / "shared.yml").symlink_to("deployment.yml")
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", "a symlink of stable")
    stable = git(clone, "rev-parse", "HEAD")
    outside = tmp_path / "outside.yml"
    outside.write_text("untouched\n")
    (app / "shared.yml").unlink()
    (app / "shared.yml").symlink_to(outside)
    git(clone, "commit", "-q", "-am", "the symlink points outside")

    assert restore(clone, stable) == 0
    assert outside.read_text() == "untouched\n"
    assert entry(clone, "apps/sampleapp/shared.yml") == ("120000", "blob")
    assert git(clone, "cat-file", "-p", "HEAD:apps/sampleapp/shared.yml") == "deployment.yml"
    assert os.readlink(app / "shared.yml") == "deployment.yml"
    assert git(clone, "status", "--porcelain") == ""


def test_reject_refuses_a_stable_without_the_folder(clone: Path) -> None:
    empty = subprocess.run(["git", "mktree"], cwd=clone, input="", check=True,
                           capture_output=True, text=True).stdout.strip()
    elsewhere = git(clone, "commit-tree", empty, "-m", "no app here")
    head = git(clone, "rev-parse", "HEAD")
    with pytest.raises(CanaryError, match=f"apps/sampleapp did not exist at stable's revision "
                                          f"{elsewhere[:7]}"):
        restore(clone, elsewhere)
    assert git(clone, "rev-parse", "HEAD") == head
    assert git(clone, "status", "--porcelain") == ""
