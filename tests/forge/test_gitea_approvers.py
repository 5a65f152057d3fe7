"""Approvers on a real Gitea: `approval_of` a merge commit names who merged the pull request and
who approved its head in review, read from Gitea's API as the controller reads it (the admin's
token, `make_forge("gitea", ...)`). People are real Gitea users with their own tokens: `alice`
merges, `bob`, `carol` and `dave` review; the admin `gitops` pushes and opens the requests, as
the controller does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.domain.types import Sha
from controller.edges.forges import ForgeApproval, auth_headers, make_forge
from localcluster.gitea import Gitea
from tests.forge.test_gitea_fixture import git, unique
from tests.waiting import eventually

PEOPLE = ("alice", "bob", "carol", "dave")
BRANCH = "gitops-canary/promote-sampleapp"
MERGE_RETRY_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def people(gitea: Gitea) -> dict[str, str]:
    """Non-admin users, each with an all-scopes token: name → token."""
    return {name: gitea.create_user(name, f"{name.title()}@Example.com") for name in PEOPLE}


@dataclass
class Repo:
    gitea: Gitea
    path: str  # owner/name
    clone: Path
    people: dict[str, str]
    client: httpx.Client  # the controller's: the admin's token, Gitea's root URL

    def push(self, branch: str, content: str, *, base: str = "main") -> str:
        """A commit changing canary.yaml on top of `base`, pushed to `branch`: its sha."""
        git(self.clone, "checkout", "-q", "-B", branch, f"origin/{base}")
        (self.clone / "canary.yaml").write_text(content)
        git(self.clone, "commit", "-q", "-am", f"{branch}: {content.strip()}")
        git(self.clone, "push", "-q", "--force", "origin", f"HEAD:{branch}")
        git(self.clone, "fetch", "-q", "origin")
        sha = git(self.clone, "rev-parse", "HEAD")
        self.gitea.wait_for_push(self.path, sha, branch)
        return sha

    def open_pr(self, content: str = 'promote: "abc"\n') -> tuple[int, str]:
        head = self.push(BRANCH, content)
        pr = self.gitea.api("POST", f"/repos/{self.path}/pulls", json={
            "title": "Promote sampleapp canary", "body": "", "head": BRANCH, "base": "main"})
        return int(pr["number"]), head

    def review(self, number: int, who: str, event: str, body: str = "") -> dict[str, Any]:
        review: dict[str, Any] = self.gitea.api(
            "POST", f"/repos/{self.path}/pulls/{number}/reviews", self.people[who],
            json={"event": event, "body": body or f"{who}: {event.lower()}"})
        return review

    def pull_head_ref(self, number: int) -> str:
        """Gitea's refs/pull/N/head (1.26 answers a list even for one exact match)."""
        refs = self.gitea.api("GET", f"/repos/{self.path}/git/refs/pull/{number}/head")
        (ref,) = [r for r in refs if r["ref"] == f"refs/pull/{number}/head"]
        return str(ref["object"]["sha"])

    def merge(self, number: int, who: str, style: str = "merge") -> Sha:
        """Merge as `who`, pressing again while Gitea answers 405 "Please try again later"
        (it is still checking the request after a push): the merge commit's sha."""
        deadline = time.monotonic() + MERGE_RETRY_TIMEOUT
        with self.gitea.client(self.people[who]) as client:
            while True:
                response = client.post(f"/repos/{self.path}/pulls/{number}/merge",
                                       json={"Do": style})
                if response.status_code == 405 and "try again later" in response.text \
                        and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                assert response.is_success, f"merge: {response.status_code} {response.text}"
                break
        pr = self.gitea.api("GET", f"/repos/{self.path}/pulls/{number}")
        assert pr["merged"]
        return Sha(pr["merge_commit_sha"])

    def approval_of(self, sha: Sha) -> ForgeApproval | None:
        return make_forge("gitea", self.path).approval_of(self.client, sha)


@pytest.fixture
def repo(gitea: Gitea, people: dict[str, str], tmp_path: Path) -> Iterator[Repo]:
    """The admin's repository with one commit on main; everyone may write to it."""
    name = unique("approvers")
    gitea.create_repo(name)
    for person in PEOPLE:
        gitea.add_collaborator(name, person, "write")
    clone = tmp_path / "clone"
    clone.mkdir()
    git(clone, "init", "-q", "-b", "main")
    git(clone, "remote", "add", "origin", gitea.http_url_with_auth(name))
    (clone / "canary.yaml").write_text("percentage: 10\n")
    git(clone, "add", "canary.yaml")
    git(clone, "commit", "-q", "-m", "first")
    git(clone, "push", "-q", "origin", "HEAD:main")
    git(clone, "fetch", "-q", "origin")
    path = f"{gitea.admin}/{name}"
    gitea.wait_for_push(path, git(clone, "rev-parse", "HEAD"))
    with httpx.Client(base_url=gitea.url, headers=auth_headers("gitea", gitea.token),
                      timeout=10.0, trust_env=False) as client:
        yield Repo(gitea, path, clone, people, client)


@pytest.mark.parametrize("style", ["merge", "squash", "rebase"])
def test_the_merger_and_the_approving_reviewer_are_named(repo: Repo, style: str) -> None:
    number, _ = repo.open_pr()
    repo.review(number, "bob", "APPROVED")
    merged = repo.merge(number, "alice", style)

    approval = repo.approval_of(merged)
    assert approval is not None
    assert approval.pr == number
    # Gitea 1.26 shows the merger without its caller: a placeholder email, `<id>+alice@noreply.…`
    assert approval.merged_by[0] == "alice"
    assert approval.approved_by == ("bob", "bob@example.com")  # the admin sees emails
    assert approval.identities >= {"alice", "bob", "bob@example.com"}
    assert "gitops" not in approval.identities  # the admin opened the request: not an approver


def test_a_commit_pushed_directly_merged_no_pull_request(repo: Repo) -> None:
    direct = Sha(repo.push("main", "percentage: 20\n"))
    assert repo.approval_of(direct) is None

    # The head commit of an open request is in a pull request, but no request merged as it.
    _, head = repo.open_pr()
    assert repo.approval_of(Sha(head)) is None


def test_requested_changes_and_comments_are_no_approval(repo: Repo) -> None:
    number, _ = repo.open_pr()
    repo.review(number, "bob", "REQUEST_CHANGES", "not yet")
    repo.review(number, "carol", "COMMENT", "looks interesting")
    approval = repo.approval_of(repo.merge(number, "alice"))
    assert approval is not None
    assert approval.approved_by == ()
    assert approval.merged_by[0] == "alice"


def test_a_reviewers_latest_verdict_counts_and_dismissed_approvals_do_not(repo: Repo) -> None:
    number, _ = repo.open_pr()
    repo.review(number, "bob", "APPROVED")
    repo.review(number, "bob", "REQUEST_CHANGES", "on second thought, no")
    repo.review(number, "carol", "APPROVED")
    repo.review(number, "carol", "COMMENT", "a follow-up note")  # keeps her approval
    dismissed = repo.review(number, "dave", "APPROVED")
    repo.gitea.api("POST", f"/repos/{repo.path}/pulls/{number}/reviews/{dismissed['id']}"
                           "/dismissals", json={"message": "approved the wrong request"})
    approval = repo.approval_of(repo.merge(number, "alice"))
    assert approval is not None
    assert approval.approved_by == ("carol", "carol@example.com")


@pytest.mark.parametrize(("style", "settled"), [("merge", False), ("squash", True)],
                         ids=["merged-at-once", "squashed-after-gitea-marked-it-stale"])
def test_an_approval_of_an_older_head_does_not_count(repo: Repo, style: str,
                                                     settled: bool) -> None:
    """Bob approves the first head; a new commit on the branch changes the content; alice
    merges. Gitea marks bob's review `stale` from its push queue, after the push returned and
    possibly after the merge: what counts is that the review's commit is not the merged head."""
    number, first = repo.open_pr()
    approved = repo.review(number, "bob", "APPROVED")
    assert approved["commit_id"] == first
    second = repo.push(BRANCH, 'promote: "def"\n', base=BRANCH)  # new content, not approved
    assert repo.pull_head_ref(number) == second  # moved by the push's post-receive hook
    if settled:
        eventually(lambda: repo.gitea.api("GET", f"/repos/{repo.path}/pulls/{number}/reviews"
                                          )[0]["stale"], "Gitea marking bob's approval stale")

    approval = repo.approval_of(repo.merge(number, "alice", style))
    assert approval is not None
    assert approval.approved_by == ()
    assert approval.merged_by[0] == "alice"


@pytest.mark.parametrize("style", ["merge", "squash"])
def test_the_approval_survives_the_promote_branch_being_reused(repo: Repo, style: str) -> None:
    """The controller pushes the next canary's promote commit to the same branch: Gitea's
    `head.sha` of the merged request follows the branch, its refs/pull/N/head does not."""
    number, head = repo.open_pr()
    repo.review(number, "bob", "APPROVED")
    merged = repo.merge(number, "alice", style)
    reused = repo.push(BRANCH, 'promote: "next"\n')
    pr = eventually(lambda: (p := repo.gitea.api("GET", f"/repos/{repo.path}/pulls/{number}"))
                    and p["head"]["sha"] == reused and p, "the merged request's head.sha moved")
    assert pr["head"]["sha"] != head
    assert repo.pull_head_ref(number) == head

    approval = repo.approval_of(merged)
    assert approval is not None
    assert "bob" in approval.approved_by
