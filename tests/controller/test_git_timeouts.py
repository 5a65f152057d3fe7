"""The git edge against hostile remotes and folders (issue 10), with real git and real sockets:
a remote that accepts the connection and never answers costs one deadline and leaves no process
behind; an app folder is read file by file, only what the app uses, within the limits. No
cluster: these tests use the git fixtures only."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import git as gitpython
import pytest

from controller.apps import AppReader
from controller.domain.limits import MiB
from controller.edges.git import SSH_COMMAND, GitRepo, GitSource, git_env
from controller.errors import InputError, TransientError
from tests.controller.conftest import DeployRepo, deployment, service

# Generous: only proves the command did not hang; the deadline under test is 2 s.
CEILING = 30.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback server that accepts every connection and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, name="silent-git-server", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        server.close()


def processes_of(url: str, workdir: Path) -> list[str]:
    """Live processes running for this remote: naming the URL, or git working in `workdir`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone, or a zombie waiting to be reaped
        command = b" ".join(argv).decode(errors="replace")
        if url in command or (cwd == str(workdir) and b"git" in Path(argv[0].decode()).name
                              .encode()):
            found.append(f"{entry.name}: {command}")
    return found


def gone(url: str, workdir: Path) -> list[str]:
    """What is still running after a short grace (SIGKILL is immediate, reaping is not)."""
    deadline = time.monotonic() + 5
    while (left := processes_of(url, workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


SCHEMES = ["http", "git"] + (["ssh"] if shutil.which("ssh") else [])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_remote_that_never_answers_costs_one_deadline_and_leaves_no_process(
        scheme: str, silent_port: int, tmp_path: Path) -> None:
    url = f"{scheme}://127.0.0.1:{silent_port}/team/deploy.git"
    secret = "t0ken-never-printed"
    source = GitSource(url, "main", tmp_path / "mirror", secret, network_timeout=2)
    started = time.monotonic()
    with pytest.raises(TransientError) as failed:
        source.fetch()
    elapsed = time.monotonic() - started
    assert elapsed < CEILING
    assert f"git fetch {url}: no answer within 2 s" in str(failed.value)
    assert secret not in str(failed.value)
    assert gone(url, tmp_path / "mirror") == []


def test_a_local_command_past_its_deadline_is_killed_with_its_children(tmp_path: Path) -> None:
    """A local git command that hangs (here a shell alias running sleep: git's grandchild) is
    killed with everything it started, and the loop retries later: a transient error."""
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    repo = GitRepo(gitpython.Repo(tmp_path / "repo"), local_timeout=1)
    marker = "sleep 37.25"  # unusual enough to find in the process list
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"git hang .*: no answer within 1 s"):
        repo._git("-c", f"alias.hang=!{marker}", "hang")
    assert time.monotonic() - started < CEILING
    assert gone(marker, tmp_path / "repo") == []


def test_the_network_limits_reach_git_beside_the_credentials_and_the_user_s_config(
        tmp_path: Path) -> None:
    environ = {**os.environ, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.name",
               "GIT_CONFIG_VALUE_0": "From The Environment"}
    environ.pop("GIT_SSH_COMMAND", None)
    environ.pop("GIT_SSH", None)
    env = git_env("s3cret", "bot", environ)
    assert env["GIT_SSH_COMMAND"] == SSH_COMMAND

    def config(key: str) -> str:
        return subprocess.run(["git", "config", "--get", key], cwd=tmp_path, check=True,
                              capture_output=True, text=True, env={**environ, **env}
                              ).stdout.strip()

    assert config("user.name") == "From The Environment"
    assert config("http.lowSpeedLimit") == "1000"
    assert config("http.lowSpeedTime") == "20"
    assert config("http.extraHeader").startswith("Authorization: Basic ")
    assert "s3cret" not in str(env.get("GIT_CONFIG_KEY_3"))
    # The user's own ssh command wins: keep-alives are theirs to choose then.
    assert "GIT_SSH_COMMAND" not in git_env(None, environ={**environ, "GIT_SSH": "my-ssh"})
    assert "GIT_SSH_COMMAND" not in git_env(None, environ=environ, ssh_configured=True)


# --- app folders: read only what the app uses, within the limits ---------------------------


def app(repo: DeployRepo) -> None:
    repo.write("apps/web/canary.yaml", "namespace: demo\n")
    repo.write("apps/web/deployment.yml", deployment("web", "10"))
    repo.write("apps/web/service.yml", service("web"))


def reader_of(repo: DeployRepo, tmp_path: Path) -> tuple[AppReader, GitSource]:
    source = GitSource(str(repo.remote), "main", tmp_path / "mirror")
    return AppReader(source), source


def test_a_large_file_the_app_does_not_use_is_never_read(deploy_repo: DeployRepo,
                                                         tmp_path: Path) -> None:
    app(deploy_repo)
    (deploy_repo.clone / "apps/web/docs").mkdir(parents=True)
    (deploy_repo.clone / "apps/web/docs/manual.pdf").write_bytes(os.urandom(20 * MiB))
    (deploy_repo.clone / "apps/web/docs/notes.yml").write_bytes(os.urandom(20 * MiB))
    deploy_repo.commit("web, with large docs")
    reader, source = reader_of(deploy_repo, tmp_path)
    head = source.fetch()
    (folder,) = source.apps(head)
    tracemalloc.start()
    try:
        desired = reader.desired(head, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(m.name for m in desired.manifests) == ["web", "web"]
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB to read a folder with 40 MiB of docs"


def test_a_matched_manifest_over_the_limit_is_refused_unread(deploy_repo: DeployRepo,
                                                             tmp_path: Path) -> None:
    app(deploy_repo)
    deploy_repo.write("apps/web/huge.yml", "# " + "x" * (2 * MiB) + "\n")
    deploy_repo.commit("web, with a huge manifest")
    reader, source = reader_of(deploy_repo, tmp_path)
    head = source.fetch()
    (folder,) = source.apps(head)
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as refused:
            reader.desired(head, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.file == "apps/web/huge.yml"
    assert "over the limit of 1 MiB per file" in refused.value.problem
    assert peak < 1 * MiB


@pytest.mark.parametrize("link", ["apps/web/secrets.yml", "apps/web/canary.yaml"])
def test_a_symlink_among_the_app_s_files_is_refused_not_followed(
        link: str, deploy_repo: DeployRepo, tmp_path: Path) -> None:
    app(deploy_repo)
    deploy_repo.write("elsewhere/real.yml", service("elsewhere"))
    target = deploy_repo.clone / link
    target.unlink(missing_ok=True)
    target.symlink_to("../../elsewhere/real.yml")
    deploy_repo.commit("web, with a symlink")
    reader, source = reader_of(deploy_repo, tmp_path)
    head = source.fetch()
    (folder,) = source.apps(head)
    with pytest.raises(InputError) as refused:
        reader.desired(head, folder)
    assert refused.value.file == link
    assert "symlinks are not followed" in refused.value.problem
