"""The `gitea` fixture is a real Gitea: its API, git over HTTP, commit statuses and webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcluster.gitea import Gitea


def git(cwd: Path, *args: str) -> str:
    """git isolated from the user's configuration (no helpers, no prompts)."""
    env = {
        **os.environ,
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_and_push(gitea: Gitea, repo: str, work: Path) -> str:
    """One commit on main, pushed over HTTP with the admin's token: its sha."""
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "README.md").write_text(f"{repo}\n")
    git(work, "add", "README.md")
    git(work, "commit", "-q", "-m", "first")
    git(work, "push", "-q", gitea.http_url_with_auth(repo), "HEAD:main")
    sha = git(work, "rev-parse", "HEAD")
    gitea.wait_for_push(repo, sha)
    return sha


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[Delivery]]]:
    """A tiny HTTP server on loopback that records every POST: (its URL, the deliveries)."""
    deliveries: queue.Queue[Delivery] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            deliveries.put(Delivery(self.path, dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", deliveries
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_version_is_the_pinned_release(gitea: Gitea) -> None:
    response = httpx.get(f"{gitea.url}/api/v1/version", timeout=5.0, trust_env=False)
    assert response.status_code == 200
    assert response.json()["version"] == "1.26.0"
    me = gitea.api("GET", "/user")
    assert me["login"] == "gitops"
    assert me["is_admin"] is True


def test_push_over_http_then_post_and_read_a_commit_status(gitea: Gitea, tmp_path: Path) -> None:
    repo = unique("status")
    clone_url = gitea.create_repo(repo)
    assert clone_url == f"{gitea.url}/gitops/{repo}.git"
    sha = commit_and_push(gitea, repo, tmp_path / "work")
    branch = gitea.api("GET", f"/repos/gitops/{repo}/branches/main")
    assert branch["commit"]["id"] == sha

    posted = gitea.api(
        "POST",
        f"/repos/gitops/{repo}/statuses/{sha}",
        json={
            "state": "success",
            "context": "gitops-canary/demo",
            "description": "canary 99.0% vs baseline 98.5%: promoted",
            "target_url": "http://127.0.0.1:3000/d/canary",
        },
    )
    assert posted["status"] == "success"

    statuses = gitea.api("GET", f"/repos/gitops/{repo}/commits/{sha}/statuses")
    assert [(s["status"], s["context"], s["description"], s["target_url"]) for s in statuses] == [
        (
            "success",
            "gitops-canary/demo",
            "canary 99.0% vs baseline 98.5%: promoted",
            "http://127.0.0.1:3000/d/canary",
        )
    ]
    combined = gitea.api("GET", f"/repos/gitops/{repo}/commits/{sha}/status")
    assert combined["state"] == "success"


def test_webhook_delivers_a_signed_push_event(
    gitea: Gitea, tmp_path: Path, receiver: tuple[str, queue.Queue[Delivery]]
) -> None:
    url, deliveries = receiver
    repo = unique("hook")
    gitea.create_repo(repo)
    secret = uuid.uuid4().hex
    gitea.api(
        "POST",
        f"/repos/gitops/{repo}/hooks",
        json={
            "type": "gitea",
            "active": True,
            "events": ["push"],
            "config": {"url": url, "content_type": "json", "secret": secret},
        },
    )
    sha = commit_and_push(gitea, repo, tmp_path / "work")

    delivery = deliveries.get(timeout=30)
    assert delivery.path == "/hook"
    assert delivery.headers["X-Gitea-Event"] == "push"
    expected = hmac.new(secret.encode(), delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.headers["X-Gitea-Signature"], expected)
    event = json.loads(delivery.body)
    assert event["ref"] == "refs/heads/main"
    assert event["after"] == sha
    assert event["repository"]["full_name"] == f"gitops/{repo}"


def test_a_plain_user_gets_a_token_but_no_say_on_others_repositories(
    gitea: Gitea, tmp_path: Path
) -> None:
    name = unique("dev")
    token = gitea.create_user(name, f"{name}@example.invalid")
    me = gitea.api("GET", "/user", token)
    assert me["login"] == name
    assert me["is_admin"] is False

    repo = unique("guarded")
    gitea.create_repo(repo)
    sha = commit_and_push(gitea, repo, tmp_path / "work")
    status = {"state": "success", "context": "gitops-canary/demo"}
    with pytest.raises(RuntimeError, match=r": 403 "):
        gitea.api("POST", f"/repos/gitops/{repo}/statuses/{sha}", token, json=status)
    gitea.add_collaborator(repo, name, "write")
    assert gitea.api("POST", f"/repos/gitops/{repo}/statuses/{sha}", token, json=status)
