"""Commit statuses on a forge: Gitea/Forgejo, GitHub and GitLab behind one small protocol.

Each forge is a `Forge`: how to post a status and how to read the statuses of a commit, in its
own API's words. `ForgeStatusSink` does the rest once for all of them: the 140-character
description, the target URL template, no duplicate (same context, state and description),
retries with backoff on 5xx and rate limits. Tokens reach only the Authorization header.
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


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code == 429 or response.status_code >= 500:
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
        _check(client.post(f"{self.prefix}/projects/{self.project}/statuses/{sha}", json=body),
               f"gitlab: posting the status of {sha[:7]}")

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
                if attempt == self.attempts:
                    raise TransientError(f"{self.forge.name}: {error}") from None
                delay = self.backoff * 2 ** (attempt - 1)
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
