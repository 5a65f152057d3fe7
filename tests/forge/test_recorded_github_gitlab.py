"""GitHub and GitLab status adapters against RECORDED request/response pairs.

GitHub and GitLab cannot run here, so these tests replay the request/response examples of
their REST API documentation (GitHub: "Create a commit status", "List commit statuses for a
reference"; GitLab: "Set the pipeline status of a commit", "List the statuses of a commit")
through httpx's transport seam: each request must match the recorded one (method, path, auth
header, JSON body), and gets the recorded response. Gitea is tested against a real server in
test_gitea_statuses.py. The approvals of merged promote requests (`approval_of`) replay the
pull request and review examples the same way; Gitea's are in test_gitea_approvers.py.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from controller.domain.types import Sha, StatusState
from controller.edges.forges import ForgeApproval, ForgeStatusSink, auth_headers, make_forge
from controller.errors import ApiError, TransientError

SHA = Sha("6dcb09b5b57875f334f61aebed695e2e4193db5e")  # the sha of GitHub's documentation
TOKEN = "ghp_secrettoken123"


@dataclass
class Recorded:
    """Recorded pairs, replayed in order; every request is checked against its pair."""

    pairs: list[tuple[dict[str, Any], httpx.Response]]
    seen: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert self.pairs, f"unexpected request {request.method} {request.url}"
        expected, response = self.pairs.pop(0)
        self.seen.append(request)
        assert request.method == expected["method"]
        assert request.url.raw_path.decode() == expected["path"]
        for name, value in expected.get("headers", {}).items():
            assert request.headers.get(name) == value
        if "json" in expected:
            assert json.loads(request.content) == expected["json"]
        return response


def sink(kind: str, repo: str, recorded: Recorded, **kwargs: Any) -> ForgeStatusSink:
    client = httpx.Client(base_url="https://api.example.test", headers=auth_headers(kind, TOKEN),
                          transport=httpx.MockTransport(recorded))
    return ForgeStatusSink(make_forge(kind, repo), client, sleep=lambda _: None, **kwargs)


# GitHub: docs.github.com/rest/commits/statuses — example request and response bodies.
GITHUB_LIST_EMPTY = (
    {"method": "GET", "path": f"/repos/octocat/hello-world/commits/{SHA}/statuses",
     "headers": {"Authorization": f"Bearer {TOKEN}"}},
    httpx.Response(200, json=[]))
GITHUB_CREATED = httpx.Response(201, json={
    "url": f"https://api.github.com/repos/octocat/Hello-World/statuses/{SHA}",
    "id": 1, "node_id": "MDY6U3RhdHVzMQ==", "state": "success",
    "description": "canary 20.1% good vs baseline 10.2% (p<0.001): pass, score 100",
    "target_url": "https://grafana.example.test/d/canary?var-app=sampleapp",
    "context": "gitops-canary/sampleapp", "created_at": "2012-07-20T01:19:13Z",
    "updated_at": "2012-07-20T01:19:13Z"})


def test_github_posts_the_documented_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    recorded = Recorded([GITHUB_LIST_EMPTY, ({
        "method": "POST", "path": f"/repos/octocat/hello-world/statuses/{SHA}",
        "headers": {"Authorization": f"Bearer {TOKEN}", "X-GitHub-Api-Version": "2022-11-28"},
        "json": {"state": "success", "context": "gitops-canary/sampleapp",
                 "description": "canary 20.1% good vs baseline 10.2% (p<0.001): pass, score 100",
                 "target_url": "https://grafana.example.test/d/canary?var-app=sampleapp"},
    }, GITHUB_CREATED)])
    posted = sink("github", "octocat/hello-world", recorded,
                  target_url="https://grafana.example.test/d/canary?var-app={app}").post(
        "sampleapp", SHA, StatusState.SUCCESS,
        "canary 20.1% good vs baseline 10.2% (p<0.001): pass, score 100")
    assert posted
    assert recorded.pairs == []
    assert TOKEN not in caplog.text


def test_github_does_not_post_a_duplicate() -> None:
    listed = httpx.Response(200, json=[
        {"id": 2, "state": "success", "context": "gitops-canary/sampleapp",
         "description": "awaiting promotion"},
        {"id": 1, "state": "pending", "context": "gitops-canary/sampleapp",
         "description": "canary deployed"}])
    recorded = Recorded([({"method": "GET",
                           "path": f"/repos/octocat/hello-world/commits/{SHA}/statuses"}, listed)])
    assert not sink("github", "octocat/hello-world", recorded).post(
        "sampleapp", SHA, StatusState.SUCCESS, "awaiting promotion")
    assert recorded.pairs == []


def posted_after(*answers: tuple[dict[str, Any], httpx.Response]) -> list[float]:
    """Post a status on GitHub after `answers` to its first request; the waits it took."""
    delays: list[float] = []
    recorded = Recorded([*answers, github_list_empty("o/r"),
                         ({"method": "POST", "path": f"/repos/o/r/statuses/{SHA}"},
                          GITHUB_CREATED)])
    forge_sink = sink("github", "o/r", recorded)
    forge_sink.sleep = delays.append
    assert forge_sink.post("app", SHA, StatusState.PENDING, "canary deployed")
    assert recorded.pairs == []
    return delays


def test_retries_5xx_and_rate_limits_then_gives_up_as_transient() -> None:
    busy = ({"method": "GET", "path": f"/repos/o/r/commits/{SHA}/statuses"},
            httpx.Response(503, text="unavailable"))
    limited = ({"method": "GET", "path": f"/repos/o/r/commits/{SHA}/statuses"},
               httpx.Response(429, headers={"Retry-After": "1"}, text="slow down"))
    assert posted_after(busy, limited) == [0.5, 1.0]

    failing = Recorded([busy] * 4)
    with pytest.raises(TransientError, match="HTTP 503"):
        sink("github", "o/r", failing).post("app", SHA, StatusState.PENDING, "x")


def test_a_rate_limit_is_waited_out_as_long_as_the_forge_asks_within_bounds() -> None:
    listing = {"method": "GET", "path": f"/repos/o/r/commits/{SHA}/statuses"}
    limited = (listing, httpx.Response(429, headers={"Retry-After": "3"}, text="slow down"))
    # GitHub's primary limit: 403, nothing remaining, the reset as epoch seconds.
    exhausted = (listing, httpx.Response(403, headers={
        "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 5)},
        text="API rate limit exceeded"))
    first, second = posted_after(limited, exhausted)
    assert first == 3.0
    assert 3.0 <= second <= 5.0

    # An hour's wait is not taken inside a reconcile: transient, posted on a later one.
    later = Recorded([(listing, httpx.Response(429, headers={"Retry-After": "3600"}))])
    patient = sink("github", "o/r", later)
    delays: list[float] = []
    patient.sleep = delays.append
    with pytest.raises(TransientError, match="asks to wait 3600s: posted on a later reconcile"):
        patient.post("app", SHA, StatusState.PENDING, "canary deployed")
    assert delays == []  # no sleep for it


def test_a_403_with_requests_remaining_is_a_refusal_not_a_rate_limit() -> None:
    recorded = Recorded([({"method": "GET", "path": f"/repos/o/r/commits/{SHA}/statuses"},
                          httpx.Response(403, headers={"X-RateLimit-Remaining": "4999"},
                                         json={"message": "Resource not accessible"}))])
    with pytest.raises(ApiError, match="HTTP 403"):
        sink("github", "o/r", recorded).post("app", SHA, StatusState.PENDING, "x")


def test_a_4xx_is_permanent_and_says_what() -> None:
    recorded = Recorded([github_list_empty("o/r"), (
        {"method": "POST", "path": f"/repos/o/r/statuses/{SHA}"},
        httpx.Response(422, json={"message": "Validation Failed"}))])
    with pytest.raises(ApiError, match=r"HTTP 422.*Validation Failed"):
        sink("github", "o/r", recorded).post("app", SHA, StatusState.ERROR, "x")


def github_list_empty(repo: str) -> tuple[dict[str, Any], httpx.Response]:
    return ({"method": "GET", "path": f"/repos/{repo}/commits/{SHA}/statuses"},
            httpx.Response(200, json=[]))


# GitLab: docs.gitlab.com/api/commits — "Set the pipeline status of a commit" and
# "List the statuses of a commit", with the documented response fields.
GITLAB_STATUS = {"id": 93, "sha": SHA, "ref": "main", "status": "failed",
                 "name": "gitops-canary/sampleapp", "target_url": None,
                 "description": "canary 4.3% good vs baseline 19.7% (p<0.001): fail, score 0",
                 "created_at": "2016-01-19T09:05:50.355Z", "started_at": None,
                 "finished_at": "2016-01-19T09:05:50.365Z", "allow_failure": False,
                 "coverage": None, "author": {"username": "gitops-canary", "id": 28}}


def test_gitlab_posts_the_documented_request_with_its_own_state_names() -> None:
    project = "platform/deploy"
    recorded = Recorded([
        ({"method": "GET",
          "path": f"/api/v4/projects/platform%2Fdeploy/repository/commits/{SHA}/statuses",
          "headers": {"PRIVATE-TOKEN": TOKEN}}, httpx.Response(200, json=[])),
        ({"method": "POST", "path": f"/api/v4/projects/platform%2Fdeploy/statuses/{SHA}",
          "headers": {"PRIVATE-TOKEN": TOKEN},
          "json": {"state": "failed", "name": "gitops-canary/sampleapp",
                   "description": GITLAB_STATUS["description"]}},
         httpx.Response(201, json=GITLAB_STATUS)),
    ])
    assert sink("gitlab", project, recorded).post(
        "sampleapp", SHA, StatusState.FAILURE, str(GITLAB_STATUS["description"]))
    assert recorded.pairs == []


def test_gitlab_dedupes_on_the_newest_status_of_the_context() -> None:
    older = {**GITLAB_STATUS, "id": 90, "status": "pending", "description": "canary deployed"}
    recorded = Recorded([({"method": "GET",
                           "path": f"/api/v4/projects/42/repository/commits/{SHA}/statuses"},
                          httpx.Response(200, json=[older, GITLAB_STATUS]))])
    assert not sink("gitlab", "42", recorded).post(
        "sampleapp", SHA, StatusState.ERROR, str(GITLAB_STATUS["description"]))


def test_gitlab_refusing_a_second_status_in_the_same_state_is_success() -> None:
    """GitLab answers 400 to a pending after a pending (a new description): the commit shows
    pending, which is what was asked; it must not raise on every reconcile."""
    older = {**GITLAB_STATUS, "id": 90, "status": "pending", "description": "canary deployed"}
    recorded = Recorded([
        ({"method": "GET", "path": f"/api/v4/projects/42/repository/commits/{SHA}/statuses"},
         httpx.Response(200, json=[older])),
        ({"method": "POST", "path": f"/api/v4/projects/42/statuses/{SHA}"},
         httpx.Response(400, json={"message": "Cannot transition status via :enqueue from "
                                              ":pending (Reason(s): Status cannot transition "
                                              "via \"enqueue\")"})),
    ])
    assert sink("gitlab", "42", recorded).post("sampleapp", SHA, StatusState.PENDING,
                                               "canary ready: analysis starts")
    assert recorded.pairs == []


def test_descriptions_are_clipped_to_140_characters() -> None:
    long = "x" * 300
    captured: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=[])
        captured.append(json.loads(request.content))
        return httpx.Response(201, json={})

    client = httpx.Client(base_url="https://api.example.test",
                          transport=httpx.MockTransport(record))
    ForgeStatusSink(make_forge("github", "o/r"), client).post("a", SHA, StatusState.ERROR, long)
    assert len(captured[0]["description"]) == 140



# Approvals: who merged the promote request merged as a commit, and who approved it in review.
# GitHub: docs.github.com/rest — "List pull requests associated with a commit", "Get a pull
# request" and "List reviews for a pull request": the documented response fields, trimmed; the
# shas and users vary the documented example (octocat's pull request #1347, head 6dcb09b).
MERGED = Sha("e5bd3914e2e596debea16f433f57875b5b90bcd6")  # the documented merge_commit_sha
OLDER = "ecdd80bb57125d7ba9641ffaa4d7d2c19d3f3091"  # the documented review's commit_id


def forge_client(kind: str, recorded: Recorded) -> httpx.Client:
    return httpx.Client(base_url="https://api.example.test", headers=auth_headers(kind, TOKEN),
                        transport=httpx.MockTransport(recorded))


def github_user(login: str, **extra: Any) -> dict[str, Any]:
    return {"login": login, "id": 1, "node_id": "MDQ6VXNlcjE=", "type": "User",
            "site_admin": False, "url": f"https://api.github.com/users/{login}", **extra}


def github_pull(**fields: Any) -> dict[str, Any]:
    return {"url": "https://api.github.com/repos/octocat/Hello-World/pulls/1347", "id": 1,
            "number": 1347, "state": "closed", "title": "Promote sampleapp canary 6dcb09b",
            "user": github_user("gitops-canary"), "created_at": "2011-01-26T19:01:12Z",
            "closed_at": "2011-01-26T19:01:12Z", "merged_at": "2011-01-26T19:01:12Z",
            "merge_commit_sha": MERGED,
            "head": {"label": "octocat:gitops-canary/promote-sampleapp",
                     "ref": "gitops-canary/promote-sampleapp", "sha": SHA},
            "base": {"label": "octocat:main", "ref": "main",
                     "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"}, **fields}


def github_review(review_id: int, login: str, state: str, commit_id: str) -> dict[str, Any]:
    return {"id": review_id, "node_id": "MDE3OlB1bGxSZXF1ZXN0UmV2aWV3ODA=",
            "user": github_user(login), "body": "Here is the body for the review.",
            "state": state, "html_url": "https://github.com/octocat/Hello-World/pull/12"
            f"#pullrequestreview-{review_id}", "submitted_at": "2019-11-17T17:43:43Z",
            "commit_id": commit_id, "author_association": "COLLABORATOR"}


REVIEWS_PAGE = "page=1&limit=50&per_page=50"


def test_github_approval_names_the_merger_and_the_approvers_of_the_head() -> None:
    reviews = [
        github_review(80, "hubot", "APPROVED", SHA),
        github_review(81, "monalisa", "APPROVED", OLDER),  # an older head: other content
        github_review(82, "octodog", "APPROVED", SHA),
        github_review(83, "octodog", "CHANGES_REQUESTED", SHA),  # the latest verdict wins
        github_review(84, "Spacecat", "APPROVED", SHA),
        github_review(85, "Spacecat", "COMMENTED", SHA),  # a comment carries no verdict
        github_review(86, "dismissed-dan", "DISMISSED", SHA),
        github_review(87, "nobody", "COMMENTED", SHA),
    ]
    recorded = Recorded([
        ({"method": "GET", "path": f"/repos/octocat/hello-world/commits/{MERGED}/pulls",
          "headers": {"Authorization": f"Bearer {TOKEN}"}},
         httpx.Response(200, json=[github_pull()])),
        ({"method": "GET", "path": "/repos/octocat/hello-world/pulls/1347"},
         httpx.Response(200, json=github_pull(
             merged=True, merged_by=github_user("OctoCat", email="OctoCat@GitHub.com")))),
        ({"method": "GET",
          "path": f"/repos/octocat/hello-world/pulls/1347/reviews?{REVIEWS_PAGE}"},
         httpx.Response(200, json=reviews)),
    ])
    approval = make_forge("github", "octocat/hello-world").approval_of(
        forge_client("github", recorded), MERGED)
    assert approval is not None
    assert approval.pr == 1347
    assert approval.merged_by == ("octocat", "octocat@github.com")
    assert approval.approved_by == ("hubot", "spacecat")
    assert approval.identities == {"octocat", "octocat@github.com", "hubot", "spacecat"}
    assert recorded.pairs == []


def test_github_a_commit_that_merged_no_pull_request_has_no_approval() -> None:
    direct = Recorded([({"method": "GET", "path": f"/repos/o/r/commits/{SHA}/pulls"},
                        httpx.Response(200, json=[]))])
    assert make_forge("github", "o/r").approval_of(forge_client("github", direct), SHA) is None

    # An open pull request containing the commit, and one merged as another commit.
    only_related = Recorded([({"method": "GET", "path": f"/repos/o/r/commits/{MERGED}/pulls"},
                              httpx.Response(200, json=[
                                  github_pull(state="open", merged_at=None,
                                              merge_commit_sha=MERGED),
                                  github_pull(merge_commit_sha=OLDER)]))])
    assert make_forge("github", "o/r").approval_of(
        forge_client("github", only_related), MERGED) is None


def test_github_reviews_are_read_page_by_page() -> None:
    first = [github_review(i, f"user{i}", "COMMENTED", SHA) for i in range(1, 51)]
    recorded = Recorded([
        ({"method": "GET", "path": f"/repos/o/r/commits/{MERGED}/pulls"},
         httpx.Response(200, json=[github_pull()])),
        ({"method": "GET", "path": "/repos/o/r/pulls/1347"},
         httpx.Response(200, json=github_pull(merged=True, merged_by=None))),
        ({"method": "GET", "path": f"/repos/o/r/pulls/1347/reviews?{REVIEWS_PAGE}"},
         httpx.Response(200, json=first)),
        ({"method": "GET", "path": "/repos/o/r/pulls/1347/reviews?page=2&limit=50&per_page=50"},
         httpx.Response(200, json=[github_review(51, "user7", "APPROVED", SHA)])),
    ])
    approval = make_forge("github", "o/r").approval_of(forge_client("github", recorded), MERGED)
    assert approval == ForgeApproval(1347, merged_by=(), approved_by=("user7",))
    assert recorded.pairs == []


def test_approval_errors_are_transient_on_5xx_and_permanent_on_4xx() -> None:
    busy = Recorded([({"method": "GET", "path": f"/repos/o/r/commits/{MERGED}/pulls"},
                      httpx.Response(502, text="bad gateway"))])
    with pytest.raises(TransientError, match="HTTP 502"):
        make_forge("github", "o/r").approval_of(forge_client("github", busy), MERGED)
    refused = Recorded([
        ({"method": "GET", "path": f"/repos/o/r/commits/{MERGED}/pulls"},
         httpx.Response(200, json=[github_pull()])),
        ({"method": "GET", "path": "/repos/o/r/pulls/1347"},
         httpx.Response(403, json={"message": "Resource not accessible by integration"}))])
    with pytest.raises(ApiError, match=r"HTTP 403.*not accessible"):
        make_forge("github", "o/r").approval_of(forge_client("github", refused), MERGED)


# GitLab: docs.gitlab.com/api — commits.md "List merge requests associated with a commit",
# merge_requests.md "Get single MR" (`merge_user`, deprecated `merged_by`, `squash_commit_sha`)
# and merge_request_approvals.md (`approved_by[].user`): documented fields, trimmed.
def gitlab_user(username: str, user_id: int) -> dict[str, Any]:
    return {"id": user_id, "name": username.title(), "username": username, "state": "active",
            "avatar_url": None, "web_url": f"https://gitlab.example.com/{username}"}


def gitlab_mr(iid: int, state: str, **fields: Any) -> dict[str, Any]:
    return {"id": 44 + iid, "iid": iid, "project_id": 35, "title": "Promote sampleapp canary",
            "description": "", "state": state, "created_at": "2018-03-26T17:26:30.916Z",
            "updated_at": "2018-03-26T17:26:30.916Z", "target_branch": "main",
            "source_branch": "gitops-canary/promote-sampleapp",
            "author": gitlab_user("gitops-canary", 28), "sha": SHA, "merge_commit_sha": None,
            "squash_commit_sha": None,
            "web_url": f"https://gitlab.example.com/root/test-project/merge_requests/{iid}",
            **fields}


def test_gitlab_approval_names_the_merge_user_and_the_approvers() -> None:
    mrs = "/api/v4/projects/platform%2Fdeploy/merge_requests"
    recorded = Recorded([
        ({"method": "GET", "path": f"/api/v4/projects/platform%2Fdeploy/repository/commits/"
                                   f"{MERGED}/merge_requests",
          "headers": {"PRIVATE-TOKEN": TOKEN}},
         httpx.Response(200, json=[gitlab_mr(1, "opened"),
                                   gitlab_mr(2, "merged", squash_commit_sha=MERGED)])),
        ({"method": "GET", "path": f"{mrs}/2"}, httpx.Response(200, json=gitlab_mr(
            2, "merged", squash_commit_sha=MERGED, merge_commit_sha=OLDER,
            merged_by=gitlab_user("JaneDoe", 5), merge_user=gitlab_user("JaneDoe", 5)))),
        ({"method": "GET", "path": f"{mrs}/2/approvals"}, httpx.Response(200, json={
            "id": 46, "iid": 2, "project_id": 35, "title": "Promote sampleapp canary",
            "state": "merged", "approvals_required": 1, "approvals_left": 0,
            "approved_by": [{"user": gitlab_user("root", 1)},
                            {"user": gitlab_user("Security.Lead", 7)}]})),
    ])
    approval = make_forge("gitlab", "platform/deploy").approval_of(
        forge_client("gitlab", recorded), MERGED)
    assert approval == ForgeApproval(2, merged_by=("janedoe",),
                                     approved_by=("root", "security.lead"))
    assert recorded.pairs == []


def test_gitlab_a_commit_no_merge_request_was_merged_as_has_no_approval() -> None:
    recorded = Recorded([
        ({"method": "GET", "path": f"/api/v4/projects/42/repository/commits/{SHA}/"
                                   "merge_requests"},
         # the commit is in a merged request, but the request was merged as another commit
         httpx.Response(200, json=[gitlab_mr(3, "merged", merge_commit_sha=MERGED)]))])
    assert make_forge("gitlab", "42").approval_of(forge_client("gitlab", recorded), SHA) is None
    assert recorded.pairs == []
