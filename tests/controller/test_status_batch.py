"""One reconcile posts every app's statuses together (issue 14): the notes sink fetches, writes
and pushes once per pass, not once per status. Real commits, real cluster."""

from __future__ import annotations

import pytest

from tests.controller.conftest import Harness, deployment, git

pytestmark = pytest.mark.cluster


def test_one_pass_posts_all_its_statuses_in_one_notes_push(harness: Harness) -> None:
    for name in ("web", "shop", "cart", "search", "ads"):
        harness.repo.write(f"apps/{name}/canary.yaml", {"namespace": harness.namespace,
                                                         "bootstrap": "direct"})
        harness.repo.write(f"apps/{name}/deployment.yml", deployment(name, "10", replicas=1))
    sha = harness.repo.commit("five apps")

    harness.reconcile()

    note = harness.repo.note(sha)  # fetches the remote's notes into the clone
    assert sorted(line.split(":")[0] for line in note.splitlines()) == [
        f"gitops-canary/{name}" for name in ("ads", "cart", "search", "shop", "web")]
    assert all(": pending: deploying straight to stable" in line for line in note.splitlines())
    history = git(harness.repo.clone, "rev-list", "--count", "refs/notes/gitops-canary")
    assert history == "1"  # five statuses, one notes commit, one push
