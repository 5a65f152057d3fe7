"""judgment: auto, end to end: the controller commits the approval of a canary that passes and
the revert of one that fails, so git still tells the truth."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from localcluster.story import APP, Story, Timing, first_version, git, rate_of, ready

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]


def remote_log(story: Story) -> list[str]:
    git(story.clone, "fetch", "-q", "origin")
    return git(story.clone, "log", "--format=%an|%s", "origin/main").splitlines()


def body_of(story: Story, subject: str) -> str:
    """The message body of the remote's commit with this subject: the controller writes the
    verdict it acted on there."""
    for entry in git(story.clone, "log", "--format=%s%n%b%x00", "origin/main").split("\0"):
        head, _, body = entry.strip("\n").partition("\n")
        if head == subject:
            return body.strip()
    raise AssertionError(f"no commit {subject!r} on origin/main")


def test_the_controller_commits_the_approval_and_the_revert(kubeconfig: Path,
                                                            tmp_path: Path) -> None:
    story = Story(tmp_path / "story", namespace=f"auto-{uuid.uuid4().hex[:6]}",
                  timing=Timing(warmup="20s", interval="5s", deadline="90s",
                                poll="2s", qps=100), say=print, judgment="auto")
    try:
        story.up(kubeconfig)
        first_version(story)  # a first deployment has nothing to compare: a person promotes it

        better = story.set_success_rate(20, "sampleapp: success rate 20")
        story.wait(lambda: (d := story.deployments()) and ready(d, {APP: 4})
                   and rate_of(d[APP]) == "20", "the controller to promote on its own")
        log = remote_log(story)
        assert f"gitops-canary|Promote {APP} canary {better[:7]} (judgment: auto)" in log
        verdict = body_of(story, f"Promote {APP} canary {better[:7]} (judgment: auto)")
        assert verdict.startswith("pass: success-rate canary "), verdict
        assert ": no worse than 0.5 pts (95% CS [+" in verdict
        assert verdict.endswith("; awaiting promotion"), verdict
        # The status follows the rollout it reports: wait for it, do not race it.
        story.wait(lambda: "promoted" in (story.status_of(better, "success") or ""),
                   "the promoted status")

        worse = story.set_success_rate(5, "sampleapp: success rate 5")  # pulls the approval
        story.wait(lambda: f"gitops-canary|Revert {APP} canary {worse[:7]} (judgment: auto)"
                   in remote_log(story), "the controller's revert")
        verdict = body_of(story, f"Revert {APP} canary {worse[:7]} (judgment: auto)")
        assert verdict.startswith("fail: "), verdict
        assert ": success-rate canary " in verdict
        assert ": worse, e=" in verdict
        story.wait(lambda: ready(story.deployments(), {APP: 4}), "baseline and canary to go")
        assert rate_of(story.deployments()[APP]) == "20"
        story.wait(lambda: "rejected" in (story.status_of(worse, "failure") or ""),
                   "the rejected status")
        # The local clone catches up with what the controller committed, as a person's would.
        git(story.clone, "pull", "-q", "--rebase", "origin", "main")
        text = (story.app_dir / "deployment.yml").read_text()
        assert 'value: "20"' in text
    finally:
        story.down()
