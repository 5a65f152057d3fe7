"""GitHub and GitLab status adapters against RECORDED request/response pairs.

GitHub and GitLab cannot run here, so these tests replay the request/response examples of
their REST API documentation (GitHub: "Create a commit status", "List commit statuses for a
reference"; GitLab: "Set the pipeline status of a commit", "List the statuses of a commit")
through httpx's transport seam: each request must match the recorded one (method, path, auth
header, JSON body), and gets the recorded response. Gitea is tested against a real server in
test_gitea_statuses.py.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from controller.domain.types import Sha, StatusState
from controller.edges.forges import ForgeStatusSink, auth_headers, make_forge
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


def test_retries_5xx_and_rate_limits_then_gives_up_as_transient() -> None:
    busy = ({"method": "GET", "path": f"/repos/o/r/commits/{SHA}/statuses"},
            httpx.Response(503, text="unavailable"))
    limited = ({"method": "GET", "path": f"/repos/o/r/commits/{SHA}/statuses"},
               httpx.Response(429, headers={"Retry-After": "1"}, text="slow down"))
    delays: list[float] = []
    recorded = Recorded([busy, limited, github_list_empty("o/r"),
                         ({"method": "POST", "path": f"/repos/o/r/statuses/{SHA}"},
                          GITHUB_CREATED)])
    forge_sink = sink("github", "o/r", recorded)
    forge_sink.sleep = delays.append
    assert forge_sink.post("app", SHA, StatusState.PENDING, "canary deployed")
    assert delays == [0.5, 1.0]

    failing = Recorded([busy] * 4)
    with pytest.raises(TransientError, match="HTTP 503"):
        sink("github", "o/r", failing).post("app", SHA, StatusState.PENDING, "x")


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

