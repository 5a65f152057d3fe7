"""`gitops-canary promote` and `reject` prepare real commits in a real clone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.domain.policy import parse_policy


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
