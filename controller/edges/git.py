"""The git edge: a bare mirror of the tracked branch, read through GitPython.

It fetches, lists the apps (folders holding canary.yaml), reads an app folder at a commit, and
walks the commits that changed a folder. Trees, not ancestry, decide what changed, so force
pushes and rewritten history need no special case. Credentials come from a file or the
environment and reach git through GIT_CONFIG_* variables, never a command line or a log.

No git command may hold the loop: each runs under a deadline and is killed (with its children:
remote helpers, ssh) when it passes, since a remote that accepts the connection and never answers
otherwise blocks a fetch for good. Low-speed limits (http) and keep-alives (ssh) end a stalled
transfer earlier, inside that deadline. An app folder is listed before it is read: only the files
the app uses are read, and only when their size is within the limits.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

import git

from controller.domain.limits import Budget
from controller.domain.policy import KUSTOMIZATION_FILES, POLICY_FILE
from controller.domain.types import Sha
from controller.errors import ApiError, TransientError

NOTES_REF = "refs/notes/gitops-canary"

# Deadlines per git command, in seconds: a fetch of a large repository over a slow link takes
# a while; a local command that takes 30 s is stuck. Both are parameters of GitRepo.
NETWORK_TIMEOUT = 60.0
LOCAL_TIMEOUT = 30.0
NETWORK_COMMANDS = frozenset({"fetch", "push", "ls-remote", "clone", "pull"})
# A transfer slower than 1000 bytes/s for 20 s is dead (curl's low-speed limit, http(s) only).
NETWORK_CONFIG = (("http.lowSpeedLimit", "1000"), ("http.lowSpeedTime", "20"))
# ssh: give up connecting after 10 s, and on a server silent for 3 keep-alives 10 s apart.
SSH_COMMAND = "ssh -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=3"
SYMLINK_MODE = "120000"


@dataclass(frozen=True)
class AppFolder:
    path: str  # relative to the repository root; "" for the root itself
    tree: str  # the folder's git tree sha
    root: str = ""  # the commit's root tree: a Kustomize overlay may use bases outside
    kustomize: bool = False  # the folder holds a kustomization file

    @property
    def inputs(self) -> str:
        """What the app is rendered from: equal inputs, equal apps. A kustomization may name
        bases anywhere in the repository, so its inputs are the whole commit's tree."""
        return f"{self.tree}+{self.root}" if self.kustomize else self.tree

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] if self.path else "root"


@dataclass(frozen=True)
class FileEntry:
    """A file of a folder's tree, as listed: what it is, before anything of it is read."""

    path: str  # relative to the folder
    mode: str  # git's: 100644, 100755, or 120000 for a symlink
    sha: str
    size: int

    @property
    def symlink(self) -> bool:
        return self.mode == SYMLINK_MODE


def credentials_config(token: str | None, username: str = "git") -> list[tuple[str, str]]:
    """The git config that makes git send HTTP basic auth: given through the environment
    (git_env), never on a command line (visible in `ps`) or in a config file."""
    if not token:
        return []
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    return [("http.extraHeader", f"Authorization: Basic {basic}")]


def git_env(token: str | None, username: str = "git",
            environ: Mapping[str, str] | None = None, ssh_configured: bool = False
            ) -> dict[str, str]:
    """What every git command of the controller runs with, added to the process environment:
    no prompts, the credentials and the network limits as GIT_CONFIG_* entries (numbered after
    any the environment already has, so those still apply), and ssh keep-alives unless the
    user chose an ssh command (GIT_SSH_COMMAND, GIT_SSH or core.sshCommand)."""
    environ = os.environ if environ is None else environ
    try:
        first = max(0, int(environ.get("GIT_CONFIG_COUNT", "0") or 0))
    except ValueError:
        first = 0  # git refuses a bad count anyway; ours then stand alone
    entries = [*NETWORK_CONFIG, *credentials_config(token, username)]
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_COUNT": str(first + len(entries))}
    for index, (key, value) in enumerate(entries, start=first):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    if not (ssh_configured or environ.get("GIT_SSH_COMMAND") or environ.get("GIT_SSH")):
        env["GIT_SSH_COMMAND"] = SSH_COMMAND
    return env


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=5)  # every writer of the pipes is gone: returns at once
    except subprocess.TimeoutExpired:  # one left the group (setsid): not ours to wait for
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()


def _command(args: tuple[str, ...]) -> str:
    """The git subcommand of an argument list ("log" in `-c k=v log -1`)."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "-c" else rest[1:]
    return rest[0] if rest else ""


URL_CREDENTIALS = re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def _redact(text: str, secret: str | None) -> str:
    """The text without the token, nor any credentials written into a URL."""
    text = URL_CREDENTIALS.sub(r"\1***@", text)
    return text.replace(secret, "***") if secret else text


def refuse_credentials(url: str) -> None:
    """A token in a URL would be stored in the mirror's config and printed by every error that
    names the remote: credentials come from --git-token-file or the environment only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        raise ApiError(f"--repo {_redact(url, None)}: the URL carries credentials; give the "
                       f"token with --git-token-file or $GITOPS_CANARY_GIT_TOKEN instead")
    if parts.scheme and parts.scheme not in ("http", "https") and parts.password:
        raise ApiError(f"--repo {_redact(url, None)}: the URL carries a password; use an SSH "
                       f"key or --git-token-file instead")


@dataclass(frozen=True)
class Signature:
    good: bool  # a valid signature by a key of the allowed-signers file
    principal: str  # who that key belongs to in the file ("" when not good)


P = ParamSpec("P")
R = TypeVar("R")


def synchronized(method: Callable[P, R]) -> Callable[P, R]:
    """The method holds its object's `_lock` (an RLock). GitPython reads objects through one
    long-lived `git cat-file` per repository, which two threads must not share: the methods
    that use it are synchronized."""
    def locked(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)
    locked.__doc__, locked.__name__ = method.__doc__, method.__name__
    return locked


class GitRepo:
    """Read access to a repository's commits and trees (a mirror or a person's clone).
    Safe to share between threads (apps are reconciled side by side)."""

    def __init__(self, repo: git.Repo, token: str | None = None, username: str = "git", *,
                 network_timeout: float = NETWORK_TIMEOUT,
                 local_timeout: float = LOCAL_TIMEOUT) -> None:
        self.repo = repo
        self.where = str(repo.working_dir or repo.git_dir)  # named in error messages
        self.network_timeout, self.local_timeout = network_timeout, local_timeout
        self._token = token
        self._env = git_env(token, username, ssh_configured=self._ssh_configured())
        self._apps_cache: dict[str, list[AppFolder]] = {}
        self._lock = threading.RLock()

    def _ssh_configured(self) -> bool:
        try:
            return bool(self.repo.config_reader().get_value("core", "sshCommand", ""))
        except Exception:  # an unreadable config: git will say so on the first command
            return False

    @classmethod
    def open(cls, path: Path) -> GitRepo:
        try:
            return cls(git.Repo(path, search_parent_directories=True))
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ApiError(f"{path} is not inside a git repository") from None

    def _git(self, *args: str, env: Mapping[str, str] | None = None,
             istream: BinaryIO | None = None) -> str:
        """Run git under its deadline. A network command's failure is transient (the remote
        may answer later); so is any command killed at its deadline (a loaded machine, not a
        wrong commit); other failures are the server's or the repository's answer."""
        command = _command(args)
        network = command in NETWORK_COMMANDS
        deadline = self.network_timeout if network else self.local_timeout
        where = _redact(self.where, self._token)
        status, out, err = self._run(args, env, istream, deadline)
        if status is None:
            raise TransientError(f"git {command} {where}: no answer within {deadline:g} s; "
                                 f"stopped")
        if status == 0:
            return out
        message = _redact(err.strip() or f"exit status {status}", self._token)
        if network:
            raise TransientError(f"git {command} {where}: {message}")
        raise ApiError(_redact(f"git {' '.join(args[:2])}: {message}", self._token))

    def _run(self, args: tuple[str, ...], env: Mapping[str, str] | None,
             istream: BinaryIO | None, deadline: float) -> tuple[int | None, str, str]:
        """(exit status, stdout, stderr) of git, the status None when it was killed at the
        deadline. Git runs in a process group of its own, and the whole group is killed: its
        remote helper (git-remote-https) or ssh holds the output pipes too, and would keep
        the call waiting after git itself died. (GitPython's kill_after_timeout finds the
        children with pgrep or ps, which a slim image does not have.) The environment is
        GitPython's, so `repo.git.custom_environment` (the CLI's temporary index) applies."""
        full_env = {**os.environ, "LANGUAGE": "C", "LC_ALL": "C",
                    **self.repo.git.environment(), **self._env, **(env or {})}
        cwd = self.repo.git.working_dir or self.repo.git_dir
        process = subprocess.Popen(["git", *args], cwd=cwd, env=full_env,
                                   stdin=istream or subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return None, "", ""
        except BaseException:  # interrupted: leave nothing running behind
            _kill_group(process)
            raise
        text = out.decode(errors="surrogateescape")
        return (process.returncode, text.removesuffix("\n"),
                err.decode(errors="surrogateescape"))

    def apps(self, head: Sha) -> list[AppFolder]:
        """Every folder of the commit that holds a canary.yaml, with its tree id: one walk of
        the commit's tree (`git ls-tree -r -t`), cached by the root tree."""
        root = self._git("rev-parse", f"{head}^{{tree}}")
        if root not in self._apps_cache:
            trees, policies, kustomized = {"": root}, [], set()
            for record in self._git("ls-tree", "-r", "-t", "-z", root).split("\0"):
                meta, tab, path = record.partition("\t")
                fields = meta.split()
                if not tab or len(fields) != 3:
                    continue
                if fields[1] == "tree":
                    trees[path] = fields[2]
                elif fields[1] == "blob":
                    folder, name = os.path.dirname(path), os.path.basename(path)
                    if name == POLICY_FILE:
                        policies.append(folder)
                    elif name in KUSTOMIZATION_FILES:
                        kustomized.add(folder)
            found = [AppFolder(folder, trees[folder], root, folder in kustomized)
                     for folder in policies]
            self._apps_cache = {root: sorted(found, key=lambda a: a.path)}
        return self._apps_cache[root]

    @synchronized
    def folder_tree(self, commit: Sha, path: str) -> str | None:
        tree = self.repo.commit(commit).tree
        try:
            return (tree / path).hexsha if path else tree.hexsha
        except KeyError:
            return None

    def list_folder(self, tree_sha: str) -> list[FileEntry]:
        """Every file under a folder's tree with its mode and size, from the tree alone:
        nothing of the files is read (submodules are not files, and are left out)."""
        entries = []
        for record in self._git("ls-tree", "-r", "-l", "-z", tree_sha).split("\0"):
            meta, tab, path = record.partition("\t")
            fields = meta.split()
            if tab and len(fields) == 4 and fields[1] == "blob":
                mode, _, sha, size = fields
                entries.append(FileEntry(path, mode, sha, int(size)))
        return entries

    @synchronized
    def read_bytes(self, entry: FileEntry) -> bytes:
        data: bytes = self.repo.odb.stream(bytes.fromhex(entry.sha)).read()
        return data

    @synchronized
    def subtree(self, root: str, path: str) -> str | None:
        """The tree of `path` within the root tree `root` (None: no such folder)."""
        if not path:
            return root
        try:
            found = self._git("rev-parse", "--verify", "--quiet", f"{root}:{path}^{{tree}}")
        except ApiError:
            return None
        return found.strip() or None

    @synchronized
    def read_blob(self, entry: FileEntry) -> str:
        """A listed file's text: the caller checked its size against the limits."""
        data: bytes = self.repo.odb.stream(bytes.fromhex(entry.sha)).read()
        return data.decode("utf-8", errors="replace")

    def changes(self, head: Sha, path: str) -> Iterator[tuple[Sha, str | None]]:
        """Commits that changed the folder, newest first, with the folder's tree in each one's
        first parent (None when the folder did not exist there)."""
        shas = self._git("rev-list", head, "--", path or ".").split()
        for sha in shas:
            with self._lock:  # a generator: held for each step, never across a yield
                commit = self.repo.commit(sha)
                parent = commit.parents[0].hexsha if commit.parents else None
            yield Sha(sha), self.folder_tree(Sha(parent), path) if parent else None

    def last_change(self, head: Sha, path: str) -> Sha:
        first = self._git("rev-list", "-1", head, "--", path or ".").strip()
        return Sha(first or head)

    @synchronized
    def author_email(self, sha: Sha) -> str:
        return str(self.repo.commit(sha).author.email)

    def first_parent_changes(self, head: Sha, path: str) -> list[Sha]:
        """Commits of the branch's own line (merges, not the merged branches' commits) that
        changed `path`, newest first: who brought a change into the branch."""
        return [Sha(s) for s in
                self._git("rev-list", "--first-parent", head, "--", path).split()]

    @synchronized
    def first_parent(self, sha: Sha) -> Sha | None:
        parents = self.repo.commit(sha).parents
        return Sha(parents[0].hexsha) if parents else None

    def signature(self, sha: Sha, allowed_signers: Path) -> Signature:
        """The commit's SSH signature, checked against the allowed-signers file: `%G?` is G
        only for a good signature by a key listed there, `%GS` the principal it is listed
        for (the person the key belongs to, not whoever the commit claims as author)."""
        out = self._git("-c", "gpg.format=ssh",
                        "-c", f"gpg.ssh.allowedSignersFile={allowed_signers}",
                        "log", "-1", "--format=%G?%x1f%GS", sha)
        status, _, principal = out.strip().partition("\x1f")
        good = status == "G"
        return Signature(good, principal.strip().lower() if good else "")

    def is_ancestor(self, older: Sha, newer: Sha) -> bool:
        """Is `older` in the history of `newer` (and not `newer` itself)?"""
        if older == newer:
            return False
        try:
            self._git("merge-base", "--is-ancestor", older, newer)
        except ApiError:
            return False
        return True


class GitSource(GitRepo):
    """The controller's bare mirror of the tracked branch of a repository URL or path."""

    def __init__(self, url: str, branch: str, workdir: Path, token: str | None = None,
                 username: str = "git", *, network_timeout: float = NETWORK_TIMEOUT,
                 local_timeout: float = LOCAL_TIMEOUT) -> None:
        refuse_credentials(url)
        self.url = url if "://" in url or url.startswith("git@") else str(Path(url).resolve())
        self.branch = branch
        if (workdir / "HEAD").exists():
            repo = git.Repo(workdir)
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(workdir, bare=True)
        super().__init__(repo, token, username, network_timeout=network_timeout,
                         local_timeout=local_timeout)
        self.where = self.url
        # Who the controller's own commits (promote requests, judgment: auto) are by.
        self.author = {"GIT_AUTHOR_NAME": "gitops-canary",
                       "GIT_AUTHOR_EMAIL": "gitops-canary@localhost",
                       "GIT_COMMITTER_NAME": "gitops-canary",
                       "GIT_COMMITTER_EMAIL": "gitops-canary@localhost"}
        self._git("config", "remote.origin.url", self.url)
        # Notes are commits too: they need an author.
        self._git("config", "user.name", "gitops-canary")
        self._git("config", "user.email", "gitops-canary@localhost")

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    def fetch(self) -> Sha:
        """Fetch the branch (and the status notes); return the head commit."""
        self._git("fetch", "--prune", "--no-tags", "origin",
                  f"+refs/heads/{self.branch}:{self.tracking_ref}")
        with self._lock:
            return Sha(self.repo.commit(self.tracking_ref).hexsha)

    def fetch_notes(self) -> None:
        """Make the local notes equal the remote's: notes that never reached it are dropped,
        so a status whose push failed is written (and pushed) again, never taken as done."""
        remote = self._git("ls-remote", "origin", NOTES_REF)
        if remote.strip():
            self._git("fetch", "--no-tags", "origin", f"+{NOTES_REF}:{NOTES_REF}")
        elif self._git("for-each-ref", NOTES_REF).strip():
            self._git("update-ref", "-d", NOTES_REF)

    @synchronized
    def read_file(self, commit: Sha, path: str) -> str:
        blob = self.repo.commit(commit).tree / path
        Budget().spend_bytes(path, int(blob.size))  # one file's limit, before reading it
        return str(blob.data_stream.read().decode("utf-8"))

    def commit_file(self, base: Sha, path: str, text: str, message: str,
                    restore: tuple[str, str] | None = None) -> Sha:
        """A commit on top of `base`, made without a work tree (the mirror is bare) through a
        temporary index: `path` gets `text`; with `restore=(folder, tree)` the folder first
        becomes that tree (the content of another commit), then `path` is written."""
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), **self.author}

            def git_(*args: str, istream: BinaryIO | None = None) -> str:
                return self._git(*args, env=env, istream=istream)

            try:
                git_("read-tree", base)
                if restore is not None:
                    # A bare repository has no `read-tree --prefix`: list the tree's
                    # entries and put them under the folder through --index-info.
                    folder, tree = restore
                    git_("rm", "-r", "--cached", "-q", "--ignore-unmatch", "--", folder)
                    listing = Path(tmp) / "entries"
                    listing.write_text("".join(
                        f"{mode} {sha}\t{folder}/{name}\n"
                        for mode, _, sha, name in (
                            line.replace("\t", " ", 1).split(" ", 3)
                            for line in git_("ls-tree", "-r", tree).splitlines())))
                    with listing.open("rb") as entries:
                        git_("update-index", "--index-info", istream=entries)
                content = Path(tmp) / "content"
                content.write_text(text)
                blob = git_("hash-object", "-w", str(content))
                git_("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
                tree_sha = git_("write-tree")
                commit = git_("commit-tree", tree_sha, "-p", base, "-m", message)
            except ApiError as error:
                raise ApiError(f"git: making a commit on {base[:7]}: {error}") from None
        return Sha(commit)

    def push_to_branch(self, commit: Sha) -> None:
        """Push a commit onto the tracked branch; refused (transient) when the branch moved."""
        self._git("push", "origin", f"{commit}:refs/heads/{self.branch}")

    def push_branch(self, commit: Sha, branch: str) -> None:
        self._git("push", "--force", "origin", f"{commit}:refs/heads/{branch}")

    # Git notes: the default commit-status sink writes through these.
    def read_note(self, sha: Sha) -> str:
        try:
            return self._git("notes", f"--ref={NOTES_REF}", "show", sha)
        except ApiError:
            return ""

    def write_note(self, sha: Sha, text: str) -> None:
        """Through stdin: a commit's note holds a line per app, longer than a command line
        may be (a commit that changed a thousand apps)."""
        with tempfile.TemporaryFile() as content:
            content.write(text.encode())
            content.seek(0)
            self._git("notes", f"--ref={NOTES_REF}", "add", "-f", "-F", "-", sha,
                      istream=content)

    def push_notes(self) -> None:
        self._git("push", "origin", f"{NOTES_REF}:{NOTES_REF}")
