"""A real Gitea on loopback, built from its Go module by hack/cluster/build.sh.

API and git over HTTP only: SQLite in the state folder, no SSH, no mail, no registration, and
nothing that reaches beyond loopback: offline mode, no update checker, no pwned-password check,
and no gravatar (Gitea keeps `picture.disable_gravatar` in its database now, default true).
Webhooks may be delivered to loopback, so a test can receive them. Same process rules as the
control plane: a state folder, a pid file, `stop` leaves nothing behind.

Gitea refuses to run as root; CI runs as root, so the documented escape hatch is set both in
app.ini and as GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT for every gitea command.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from localcluster.cluster import build_binaries
from localcluster.processes import StartupError, Supervisor, free_port

NAME = "gitea"
ADMIN = "gitops"
ADMIN_EMAIL = "gitops@example.invalid"


@dataclass(frozen=True)
class Gitea:
    state: Path
    port: int
    token: str
    password: str
    admin: str = ADMIN

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> httpx.Client:
        """An API client authenticated with `token` (the admin's by default)."""
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"token {token or self.token}"},
            timeout=10.0,
            trust_env=False,  # loopback only: never through a proxy from the environment
        )

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        """Call the API (path relative to /api/v1); the decoded JSON body, or None if empty."""
        with self.client(token) as client:
            response = client.request(method, path, **kwargs)
        if response.is_error:
            raise RuntimeError(
                f"gitea {method} {path}: {response.status_code} {response.text[:500]}"
            )
        return response.json() if response.content else None

    def create_repo(self, name: str, token: str | None = None) -> str:
        """An empty repository owned by the token's user (the admin's by default): its clone URL."""
        repo = self.api(
            "POST",
            "/user/repos",
            token,
            json={"name": name, "auto_init": False, "default_branch": "main", "private": False},
        )
        clone_url: str = repo["clone_url"]
        return clone_url

    def http_url_with_auth(
        self, repo: str, user: str | None = None, token: str | None = None
    ) -> str:
        """A git remote URL carrying credentials; `repo` is `name` (the admin's) or `owner/name`."""
        path = repo if "/" in repo else f"{self.admin}/{repo}"
        return f"http://{user or self.admin}:{token or self.token}@127.0.0.1:{self.port}/{path}.git"

    def wait_for_push(
        self, repo: str, sha: str, branch: str = "main", timeout: float = 30.0
    ) -> None:
        """Wait until Gitea has taken in a push: `branch` of `repo` is at `sha`.

        `git push` returns before Gitea has processed the push (a queue): until then a repository
        pushed to for the first time still counts as empty, and Gitea 1.26 answers 500 (a nil
        pointer) to branch and commit requests on it.
        """
        path = repo if "/" in repo else f"{self.admin}/{repo}"
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                info = client.get(f"/repos/{path}")
                if info.status_code == 200 and not info.json()["empty"]:
                    got = client.get(f"/repos/{path}/branches/{branch}")
                    if got.status_code == 200 and got.json()["commit"]["id"] == sha:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gitea: {path} {branch} not at {sha} after {timeout}s")
                time.sleep(0.1)

    def create_user(self, name: str, email: str) -> str:
        """A non-admin user, created by the admin: returns an access token (all scopes) for it."""
        password = secrets.token_urlsafe(18)
        self.api(
            "POST",
            "/admin/users",
            json={
                "username": name,
                "email": email,
                "password": password,
                "must_change_password": False,
                "send_notify": False,
            },
        )
        # Tokens are created with the user's own basic credentials, not with another token.
        with httpx.Client(base_url=f"{self.url}/api/v1", timeout=10.0, trust_env=False) as c:
            response = c.post(
                f"/users/{name}/tokens",
                auth=(name, password),
                json={"name": f"{name}-token", "scopes": ["all"]},
            )
        if response.is_error:
            raise RuntimeError(f"gitea token for {name}: {response.status_code} {response.text}")
        token: str = response.json()["sha1"]
        return token

    def add_collaborator(self, repo: str, user: str, permission: str = "write") -> None:
        """Give `user` access (read, write or admin) to the admin's repository `repo`."""
        path = repo if "/" in repo else f"{self.admin}/{repo}"
        self.api("PUT", f"/repos/{path}/collaborators/{user}", json={"permission": permission})


def _app_ini(state: Path, static: Path, port: int, user: str) -> str:
    url = f"http://127.0.0.1:{port}/"
    sections: dict[str, dict[str, object]] = {
        "": {
            "APP_NAME": "gitops-canary test forge",
            "RUN_USER": user,
            "RUN_MODE": "prod",
            "WORK_PATH": state,
            "I_AM_BEING_UNSAFE_RUNNING_AS_ROOT": "true",
        },
        "server": {
            "PROTOCOL": "http",
            "HTTP_ADDR": "127.0.0.1",
            "HTTP_PORT": port,
            "ROOT_URL": url,
            "LOCAL_ROOT_URL": url,
            "DOMAIN": "127.0.0.1",
            "APP_DATA_PATH": state / "data",
            "STATIC_ROOT_PATH": static,
            "DISABLE_SSH": "true",
            "START_SSH_SERVER": "false",
            "LFS_START_SERVER": "false",
            "OFFLINE_MODE": "true",
        },
        "database": {
            "DB_TYPE": "sqlite3",
            "PATH": state / "data" / "gitea.db",
            "SQLITE_JOURNAL_MODE": "WAL",
        },
        "repository": {"ROOT": state / "repositories", "DEFAULT_BRANCH": "main"},
        "repository.signing": {"SIGNING_KEY": "none"},
        "security": {
            "INSTALL_LOCK": "true",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "INTERNAL_TOKEN": secrets.token_urlsafe(64),
            "PASSWORD_CHECK_PWN": "false",
        },
        "service": {
            "DISABLE_REGISTRATION": "true",
            "REGISTER_EMAIL_CONFIRM": "false",
            "ENABLE_NOTIFY_MAIL": "false",
            "ENABLE_CAPTCHA": "false",
            "REQUIRE_SIGNIN_VIEW": "false",
        },
        "webhook": {"ALLOWED_HOST_LIST": "loopback", "DELIVER_TIMEOUT": 5},
        "mailer": {"ENABLED": "false"},
        "oauth2": {"ENABLED": "false"},
        "openid": {"ENABLE_OPENID_SIGNIN": "false", "ENABLE_OPENID_SIGNUP": "false"},
        "cron": {"ENABLED": "false"},
        "cron.update_checker": {"ENABLED": "false"},
        "actions": {"ENABLED": "false"},
        "packages": {"ENABLED": "false"},
        "mirror": {"ENABLED": "false"},
        "indexer": {"ISSUE_INDEXER_TYPE": "db", "REPO_INDEXER_ENABLED": "false"},
        "api": {"ENABLE_SWAGGER": "false"},
        "log": {"MODE": "console", "LEVEL": "Warn", "ROOT_PATH": state / "logs"},
    }
    lines = []
    for section, keys in sections.items():
        if section:
            lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


def _environment(state: Path) -> dict[str, str]:
    return {
        "GITEA_WORK_DIR": str(state),
        "GITEA_CUSTOM": str(state / "custom"),
        "GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT": "true",
    }


def _run(binary: Path, state: Path, *args: str) -> str:
    """Run one gitea command against the state folder's app.ini: its stdout."""
    argv = [str(binary), "--config", str(state / "app.ini"), "--work-path", str(state), *args]
    result = subprocess.run(
        argv,
        env={**os.environ, **_environment(state)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise StartupError(
            f"gitea {args[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def start(state: Path, bin_dir: Path | None = None) -> Gitea:
    """A fresh Gitea (empty database) with an admin user and its access token."""
    state = state.resolve()
    bin_dir = bin_dir or build_binaries()
    binary, static = bin_dir / "gitea", bin_dir / "gitea-static"
    sup = Supervisor(state)
    sup.stop_all([NAME])
    for stale in ("data", "repositories", "custom", "app.ini"):
        path = state / stale
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    (state / "app.ini").write_text(_app_ini(state, static, port, user))
    started = time.monotonic()

    password = secrets.token_urlsafe(18)
    _run(binary, state, "migrate")
    _run(
        binary, state, "admin", "user", "create", "--admin",
        "--username", ADMIN, "--password", password, "--email", ADMIN_EMAIL,
        "--must-change-password=false",
    )
    # The CLI logs to stdout too (the root warning): the token is the last line.
    output = _run(
        binary, state, "admin", "user", "generate-access-token",
        "--username", ADMIN, "--token-name", "gitops-canary", "--scopes", "all", "--raw",
    )
    token = output.strip().splitlines()[-1] if output.strip() else ""
    if not re.fullmatch(r"[0-9a-f]{40}", token):
        raise StartupError(f"gitea printed no access token:\n{output}")
    gitea = Gitea(state, port, token, password)

    sup.start(
        NAME,
        [str(binary), "web", "--config", str(state / "app.ini"), "--work-path", str(state)],
        env=_environment(state),
    )

    def ready() -> bool:
        try:
            with gitea.client() as client:
                return client.get("/version", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        sup.wait_healthy(NAME, ready, timeout=60)
    except StartupError:
        sup.stop_all([NAME])
        raise
    (state / "port").write_text(str(port))
    print(f"[gitea] ready in {time.monotonic() - started:.1f}s at {gitea.url}")
    return gitea


def stop(state: Path) -> list[int]:
    return Supervisor(state.resolve()).stop_all([NAME])
