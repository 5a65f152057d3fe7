"""Commit statuses on a forge: Gitea/Forgejo, GitHub and GitLab behind one small protocol.

Each forge is a `Forge`: how to post a status and how to read the statuses of a commit, in its
own API's words. `ForgeStatusSink` does the rest once for all of them: the 140-character
description, the target URL template, no duplicate (same context, state and description),
retries with backoff on 5xx and rate limits (waiting as long as the forge's `Retry-After` or
rate-limit reset asks, up to RATE_LIMIT_WAIT; a longer wait is left to a later reconcile, so
one rate-limited forge never holds a pass). Tokens reach only the Authorization header.
`approval_of` reads who merged the pull (merge) request merged as a commit, and who approved it.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httpx

from controller.domain.types import Sha, StatusState
from controller.edges.statuses import clip, context_for
from controller.errors import ApiError, TransientError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    context: str
    state: str  # in the forge's own words
    description: str


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str


@dataclass(frozen=True)
class ForgeApproval:
    """The pull (merge) request merged as a commit: who merged it, who approved it in review.

    Identities are lower-cased: the login (GitLab: username) and, when the API shows it, the
    email. Gitea shows a user's email to admins and to the user, to other callers unless it is
    kept private, and otherwise a placeholder `<id>+<login>@<no-reply domain>`; 1.26 always
    shows the merger's placeholder (it converts `merged_by` without the caller).
    """

    pr: int
    merged_by: tuple[str, ...]
    approved_by: tuple[str, ...]

    @property
    def identities(self) -> frozenset[str]:
        """Everyone who merged or approved: any of them may be a configured approver."""
        return frozenset(self.merged_by) | frozenset(self.approved_by)


class Forge(Protocol):
    name: str

    def find_pr(self, client: httpx.Client, branch: str) -> PullRequest | None:
        """The open pull (merge) request from `branch`, if any."""
        ...

    def open_pr(self, client: httpx.Client, branch: str, base: str, title: str,
                body: str) -> PullRequest: ...

    def update_pr(self, client: httpx.Client, pr: PullRequest, title: str, body: str) -> None: ...

    def close_pr(self, client: httpx.Client, pr: PullRequest, comment: str) -> None: ...

    def state(self, state: StatusState) -> str:
        """Our state in the forge's words."""
        ...

    def post(self, client: httpx.Client, sha: Sha, status: Status, target_url: str) -> None: ...

    def statuses(self, client: httpx.Client, sha: Sha) -> list[Status]:
        """The commit's statuses, newest first."""
        ...

    def approval_of(self, client: httpx.Client, merge_commit: Sha) -> ForgeApproval | None:
        """The merged pull (merge) request whose merge (or squash) commit is `merge_commit`, into
        any branch (the caller checks which), with who merged and approved it; None if the
        commit merged none."""
        ...


REVIEWS_PAGE = 50  # reviews per page (Gitea's default maximum)
REVIEWS_PAGES = 20  # more than 1000 reviews on one pull request: refuse to decide


RATE_LIMIT_WAIT = 10.0  # seconds a post may wait for a forge's rate limit; longer: next pass


class RateLimited(TransientError):
    """The forge asks to wait `wait` seconds (0: it does not say how long)."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


def _wait_asked(response: httpx.Response, now: float) -> float:
    """Seconds a rate-limited answer asks to wait: `Retry-After` (seconds; GitHub, Gitea,
    GitLab), or until `X-RateLimit-Reset` (epoch seconds; GitHub's primary limit)."""
    headers = response.headers
    for name, since in (("retry-after", 0.0), ("x-ratelimit-reset", now)):
        try:
            return max(0.0, float(headers[name]) - since)
        except (KeyError, ValueError):
            continue
    return 0.0


def _check(response: httpx.Response, what: str) -> httpx.Response:
    # GitHub's primary rate limit answers 403 with no requests remaining.
    limited = response.status_code == 429 or (
        response.status_code == 403 and response.headers.get("x-ratelimit-remaining") == "0")
    if limited:
        raise RateLimited(f"{what}: HTTP {response.status_code} (rate limited)",
                          _wait_asked(response, time.time()))
    if response.status_code >= 500:
        raise TransientError(f"{what}: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise ApiError(f"{what}: HTTP {response.status_code}: {response.text[:200]}")
    return response


class GiteaLike:
    """Gitea, Forgejo and GitHub share `POST /repos/{owner}/{repo}/statuses/{sha}`."""

    STATES: ClassVar[dict[StatusState, str]] = {
        StatusState.PENDING: "pending", StatusState.SUCCESS: "success",
        StatusState.FAILURE: "failure", StatusState.ERROR: "error"}

    def __init__(self, name: str, repo: str, api_prefix: str) -> None:
        self.name, self.repo, self.prefix = name, repo, api_prefix

    def state(self, state: StatusState) -> str:
        return self.STATES[state]

    def post(self, client: httpx.Client, sha: Sha, status: Status, target_url: str) -> None:
        body: dict[str, Any] = {"state": status.state, "context": status.context,
                                "description": status.description}
        if target_url:
            body["target_url"] = target_url
        _check(client.post(f"{self.prefix}/repos/{self.repo}/statuses/{sha}", json=body),
               f"{self.name}: posting the status of {sha[:7]}")

    def statuses(self, client: httpx.Client, sha: Sha) -> list[Status]:
        response = _check(client.get(f"{self.prefix}/repos/{self.repo}/commits/{sha}/statuses"),
                          f"{self.name}: reading the statuses of {sha[:7]}")
        return [Status(s["context"], s.get("state") or s.get("status", ""),
                       s.get("description") or "") for s in _newest_first(response.json())]


    def find_pr(self, client: httpx.Client, branch: str) -> PullRequest | None:
        response = _check(client.get(f"{self.prefix}/repos/{self.repo}/pulls",
                                     params={"state": "open", "limit": 50, "per_page": 50}),
                          f"{self.name}: listing pull requests")
        for pr in response.json():
            if (pr.get("head") or {}).get("ref") == branch:
                return PullRequest(int(pr["number"]), str(pr.get("html_url", "")))
        return None

    def open_pr(self, client: httpx.Client, branch: str, base: str, title: str,
                body: str) -> PullRequest:
        pr = _check(client.post(f"{self.prefix}/repos/{self.repo}/pulls", json={
            "title": title, "body": body, "head": branch, "base": base}),
            f"{self.name}: opening a pull request from {branch}").json()
        return PullRequest(int(pr["number"]), str(pr.get("html_url", "")))

    def update_pr(self, client: httpx.Client, pr: PullRequest, title: str, body: str) -> None:
        _check(client.patch(f"{self.prefix}/repos/{self.repo}/pulls/{pr.number}",
                            json={"title": title, "body": body}),
               f"{self.name}: updating pull request #{pr.number}")

    def close_pr(self, client: httpx.Client, pr: PullRequest, comment: str) -> None:
        _check(client.post(f"{self.prefix}/repos/{self.repo}/issues/{pr.number}/comments",
                           json={"body": comment}),
               f"{self.name}: commenting on pull request #{pr.number}")
        _check(client.patch(f"{self.prefix}/repos/{self.repo}/pulls/{pr.number}",
                            json={"state": "closed"}),
               f"{self.name}: closing pull request #{pr.number}")

    def approval_of(self, client: httpx.Client, merge_commit: Sha) -> ForgeApproval | None:
        pr = self._merged_as(client, merge_commit)
        if pr is None:
            return None
        number = int(pr["number"])
        reviews = _pages(client, f"{self.prefix}/repos/{self.repo}/pulls/{number}/reviews",
                         f"{self.name}: reading the reviews of pull request #{number}")
        return ForgeApproval(number, _identities(pr.get("merged_by")),
                             _approved(reviews, self._head_at_merge(client, pr)))

    def _merged_as(self, client: httpx.Client, sha: Sha) -> dict[str, Any] | None:
        """The merged pull request whose merge commit is `sha`, as `GET .../pulls/{n}` shows it.

        Gitea: `GET /repos/{o}/{r}/commits/{sha}/pull` (404: none). GitHub: the list of
        `GET /repos/{o}/{r}/commits/{sha}/pulls`, whose entries lack `merged_by`."""
        what = f"{self.name}: finding the pull request merged as {sha[:7]}"
        if self.name != "github":
            response = client.get(f"{self.prefix}/repos/{self.repo}/commits/{sha}/pull")
            if response.status_code == 404:
                return None
            pr: dict[str, Any] = _check(response, what).json()
            return pr if _is_merged_as(pr, sha) else None
        listed = _check(client.get(f"{self.prefix}/repos/{self.repo}/commits/{sha}/pulls"),
                        what).json()
        number = next((int(p["number"]) for p in listed if _is_merged_as(p, sha)), None)
        if number is None:
            return None
        pr = _check(client.get(f"{self.prefix}/repos/{self.repo}/pulls/{number}"), what).json()
        return pr if _is_merged_as(pr, sha) else None

    def _head_at_merge(self, client: httpx.Client, pr: dict[str, Any]) -> str:
        """The head commit the pull request had when it was merged: approvals of it count.

        GitHub freezes `head.sha` when a pull request closes. Gitea's `head.sha` follows the head
        branch while it exists, and the next canary reuses the promote branch. So on Gitea: a
        merge commit's last parent is exactly the head it merged; squash and fast-forward merges
        leave no such trace, and `refs/pull/{n}/head` tells (Gitea moves it in a push's
        post-receive hook, and only while the request is open)."""
        if self.name == "github":
            return str((pr.get("head") or {}).get("sha") or "")
        number, sha = int(pr["number"]), str(pr["merge_commit_sha"])
        commit = _check(client.get(f"{self.prefix}/repos/{self.repo}/git/commits/{sha}", params={
            "stat": "false", "verification": "false", "files": "false"}),
            f"{self.name}: reading the merge commit {sha[:7]}").json()
        parents = [str(p.get("sha") or "") for p in commit.get("parents") or []]
        if len(parents) > 1:
            return parents[-1]
        ref = _check(client.get(f"{self.prefix}/repos/{self.repo}/git/refs/pull/{number}/head"),
                     f"{self.name}: reading the head of pull request #{number}").json()
        found = ref if isinstance(ref, dict) else next(
            (r for r in ref if r.get("ref") == f"refs/pull/{number}/head"), {})
        return str((found.get("object") or {}).get("sha") or "")


def _is_merged_as(pr: dict[str, Any], sha: Sha) -> bool:
    merged = bool(pr.get("merged")) or bool(pr.get("merged_at"))
    return merged and pr.get("merge_commit_sha") == sha


# A verdict: Gitea's APPROVED / REQUEST_CHANGES, GitHub's APPROVED / CHANGES_REQUESTED. Comments
# (COMMENT, COMMENTED), pending drafts and Gitea's REQUEST_REVIEW carry none and leave a
# reviewer's verdict as it was, as on both forges; GitHub's DISMISSED and Gitea's `dismissed`
# take the review back.
_VERDICTS = frozenset({"APPROVED", "REQUEST_CHANGES", "CHANGES_REQUESTED"})


def _approved(reviews: list[dict[str, Any]], head: str) -> tuple[str, ...]:
    """Identities of every reviewer whose latest verdict approves, given on `head` itself.

    Only the head at merge counts: an approval of an older commit approved other content (Gitea
    then also marks it `stale`, but `commit_id` is what says which content was approved).
    Gitea's `official` is not required: the configured approvers decide who counts."""
    latest: dict[str, dict[str, Any]] = {}
    for review in sorted(reviews, key=lambda r: int(r.get("id") or 0)):
        login = str((review.get("user") or {}).get("login") or "").lower()
        if login and review.get("state") in _VERDICTS and not review.get("dismissed"):
            latest[login] = review
    approvals = [r for r in latest.values()
                 if r["state"] == "APPROVED" and head and r.get("commit_id") == head]
    return tuple(dict.fromkeys(i for r in approvals for i in _identities(r.get("user"))))


def _identities(user: dict[str, Any] | None, login: str = "login") -> tuple[str, ...]:
    """A user's login (GitLab: username) and email when shown, lower-cased."""
    found = (str((user or {}).get(key) or "").strip().lower() for key in (login, "email"))
    return tuple(dict.fromkeys(f for f in found if f))


def _pages(client: httpx.Client, url: str, what: str) -> list[dict[str, Any]]:
    """Every item of a paginated list (Gitea: `limit`, GitHub and GitLab: `per_page`)."""
    items: list[dict[str, Any]] = []
    for page in range(1, REVIEWS_PAGES + 1):
        batch = _check(client.get(url, params={"page": page, "limit": REVIEWS_PAGE,
                                               "per_page": REVIEWS_PAGE}), what).json()
        items.extend(batch)
        if len(batch) < REVIEWS_PAGE:
            return items
    raise ApiError(f"{what}: more than {REVIEWS_PAGE * REVIEWS_PAGES} of them")


class GitLab:
    """GitLab: `POST /projects/:id/statuses/:sha`, states pending/running/success/failed."""

    name = "gitlab"
    STATES: ClassVar[dict[StatusState, str]] = {
        StatusState.PENDING: "pending", StatusState.SUCCESS: "success",
        StatusState.FAILURE: "failed", StatusState.ERROR: "failed"}

    def __init__(self, project: str, api_prefix: str = "/api/v4") -> None:
        self.project = urllib.parse.quote(project, safe="")  # id or url-encoded path
        self.prefix = api_prefix

    def state(self, state: StatusState) -> str:
        return self.STATES[state]

    def post(self, client: httpx.Client, sha: Sha, status: Status, target_url: str) -> None:
        body: dict[str, Any] = {"state": status.state, "name": status.context,
                                "description": status.description}
        if target_url:
            body["target_url"] = target_url
        response = client.post(f"{self.prefix}/projects/{self.project}/statuses/{sha}",
                               json=body)
        if response.status_code == 400 and "Cannot transition status" in response.text:
            # GitLab refuses a second status in the state the commit is in already (pending
            # → pending with a new description): the commit shows that state, which is done.
            log.info("gitlab: %s on %s is %s already", status.context, sha[:7], status.state)
            return
        _check(response, f"gitlab: posting the status of {sha[:7]}")

    def statuses(self, client: httpx.Client, sha: Sha) -> list[Status]:
        response = _check(
            client.get(f"{self.prefix}/projects/{self.project}/repository/commits/{sha}/statuses"),
            f"gitlab: reading the statuses of {sha[:7]}")
        return [Status(s["name"], s["status"], s.get("description") or "")
                for s in _newest_first(response.json())]

    def _mrs(self) -> str:
        return f"{self.prefix}/projects/{self.project}/merge_requests"

    def find_pr(self, client: httpx.Client, branch: str) -> PullRequest | None:
        response = _check(client.get(self._mrs(), params={"state": "opened",
                                                          "source_branch": branch}),
                          "gitlab: listing merge requests")
        found = response.json()
        return PullRequest(int(found[0]["iid"]), str(found[0].get("web_url", ""))) \
            if found else None

    def open_pr(self, client: httpx.Client, branch: str, base: str, title: str,
                body: str) -> PullRequest:
        mr = _check(client.post(self._mrs(), json={
            "source_branch": branch, "target_branch": base, "title": title,
            "description": body}), f"gitlab: opening a merge request from {branch}").json()
        return PullRequest(int(mr["iid"]), str(mr.get("web_url", "")))

    def update_pr(self, client: httpx.Client, pr: PullRequest, title: str, body: str) -> None:
        _check(client.put(f"{self._mrs()}/{pr.number}", json={"title": title,
                                                               "description": body}),
               f"gitlab: updating merge request !{pr.number}")

    def close_pr(self, client: httpx.Client, pr: PullRequest, comment: str) -> None:
        _check(client.post(f"{self._mrs()}/{pr.number}/notes", json={"body": comment}),
               f"gitlab: commenting on merge request !{pr.number}")
        _check(client.put(f"{self._mrs()}/{pr.number}", json={"state_event": "close"}),
               f"gitlab: closing merge request !{pr.number}")

    def approval_of(self, client: httpx.Client, merge_commit: Sha) -> ForgeApproval | None:
        """GitLab approves a merge request, not a commit: whether a push resets approvals is the
        project's setting ("Remove all approvals when commits are added")."""
        listed = _check(client.get(f"{self.prefix}/projects/{self.project}/repository/commits/"
                                   f"{merge_commit}/merge_requests"),
                        f"gitlab: finding the merge request merged as {merge_commit[:7]}").json()
        iid = next((int(mr["iid"]) for mr in listed if _gitlab_merged_as(mr, merge_commit)), None)
        if iid is None:
            return None
        mr = _check(client.get(f"{self._mrs()}/{iid}"),
                    f"gitlab: reading merge request !{iid}").json()
        if not _gitlab_merged_as(mr, merge_commit):
            return None
        approvals = _check(client.get(f"{self._mrs()}/{iid}/approvals"),
                           f"gitlab: reading the approvals of merge request !{iid}").json()
        approved = (i for a in approvals.get("approved_by") or []
                    for i in _identities(a.get("user"), "username"))
        # `merged_by` is deprecated for `merge_user` (who merged, or set auto-merge).
        merger = mr.get("merge_user") or mr.get("merged_by")
        return ForgeApproval(iid, _identities(merger, "username"), tuple(dict.fromkeys(approved)))


def _gitlab_merged_as(mr: dict[str, Any], sha: Sha) -> bool:
    """Merged as `sha`: its merge commit, or its squash commit when squashed without one. A
    fast-forward merge without squashing leaves both null: GitLab names no commit, so None."""
    return mr.get("state") == "merged" and sha in (mr.get("merge_commit_sha"),
                                                   mr.get("squash_commit_sha"))


def _newest_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda s: int(s.get("id") or 0), reverse=True)


def auth_headers(kind: str, token: str) -> dict[str, str]:
    if kind == "gitlab":
        return {"PRIVATE-TOKEN": token}
    if kind == "github":
        return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28"}
    return {"Authorization": f"token {token}"}


def make_forge(kind: str, repo: str) -> Forge:
    if kind in ("gitea", "forgejo"):
        return GiteaLike(kind, repo, "/api/v1")
    if kind == "github":
        return GiteaLike(kind, repo, "")
    if kind == "gitlab":
        return GitLab(repo)
    raise ApiError(f"unknown forge {kind!r} (gitea, forgejo, github, gitlab)")


class ForgeStatusSink:
    def __init__(self, forge: Forge, client: httpx.Client, target_url: str = "",
                 attempts: int = 4, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.forge, self.client, self.target_url = forge, client, target_url
        self.attempts, self.backoff, self.sleep = attempts, backoff, sleep

    def _retrying(self, call: Callable[[], Any]) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except (TransientError, httpx.TransportError) as error:
                asked = error.wait if isinstance(error, RateLimited) else 0.0
                if attempt == self.attempts or asked > RATE_LIMIT_WAIT:
                    raise TransientError(f"{self.forge.name}: {error}" + (
                        f"; the forge asks to wait {asked:.0f}s: posted on a later reconcile"
                        if asked > RATE_LIMIT_WAIT else "")) from None
                delay = max(self.backoff * 2 ** (attempt - 1), asked)
                log.warning("%s: %s; retrying in %.1fs", self.forge.name, error, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
        status = Status(context_for(app), self.forge.state(state), clip(description))
        current: list[Status] = self._retrying(lambda: self.forge.statuses(self.client, sha))
        latest = next((s for s in current if s.context == status.context), None)
        if latest == status:
            return False  # the forge shows exactly this already
        url = self.target_url.format(app=app, sha=sha, context=status.context)
        self._retrying(lambda: self.forge.post(self.client, sha, status, url))
        log.info("status %s %s on %s: %s", status.context, status.state, sha[:7],
                 status.description)
        return True
