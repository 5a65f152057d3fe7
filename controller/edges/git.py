"""The git edge: a bare mirror of the tracked branch, read through GitPython.

It fetches, lists the apps (folders holding canary.yaml), reads an app folder at a commit, and
walks the commits that changed a folder. Trees, not ancestry, decide what changed, so force
pushes and rewritten history need no special case. Credentials come from a file or the
environment and reach git through GIT_CONFIG_* variables, never a command line or a log.
"""

from __future__ import annotations

import base64
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git

from controller.domain.policy import POLICY_FILE
from controller.domain.types import Sha
from controller.errors import ApiError, TransientError

NOTES_REF = "refs/notes/gitops-canary"


@dataclass(frozen=True)
class AppFolder:
    path: str  # relative to the repository root; "" for the root itself
    tree: str  # the folder's git tree sha: equal trees, equal apps

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] if self.path else "root"


def credentials_env(token: str | None, username: str = "git") -> dict[str, str]:
    """Environment that makes git send HTTP basic auth without putting the token on a
    command line (visible in `ps`) or in a config file."""
    if not token:
        return {}
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


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


class GitRepo:
    """Read access to a repository's commits and trees (a mirror or a person's clone)."""

    def __init__(self, repo: git.Repo, token: str | None = None, username: str = "git") -> None:
        self.repo = repo
        self.where = str(repo.working_dir or repo.git_dir)  # named in error messages
        self._token = token
        self._env = {"GIT_TERMINAL_PROMPT": "0", **credentials_env(token, username)}
        self._apps_cache: dict[str, list[AppFolder]] = {}

    @classmethod
    def open(cls, path: Path) -> GitRepo:
        try:
            return cls(git.Repo(path, search_parent_directories=True))
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise ApiError(f"{path} is not inside a git repository") from None

    def _git(self, *args: str) -> str:
        try:
            with self.repo.git.custom_environment(**self._env):
                out: str = self.repo.git.execute(["git", *args])
                return out
        except git.GitCommandError as error:
            message = _redact(str(error.stderr or error).strip(), self._token)
            if args and args[0] in ("fetch", "push", "ls-remote"):
                where = _redact(self.where, self._token)
                raise TransientError(f"git {args[0]} {where}: {message}") from None
            raise ApiError(_redact(f"git {' '.join(args[:2])}: {message}", self._token)) \
                from None

    def apps(self, head: Sha) -> list[AppFolder]:
        """Every folder of the commit that holds a canary.yaml, cached by the root tree."""
        root = self.repo.commit(head).tree
        if root.hexsha not in self._apps_cache:
            found = [
                AppFolder(os.path.dirname(str(item.path)),
                          (root / os.path.dirname(str(item.path))).hexsha
                          if os.path.dirname(str(item.path)) else root.hexsha)
                for item in root.traverse()
                if isinstance(item, git.Blob) and item.name == POLICY_FILE
            ]
            self._apps_cache = {root.hexsha: sorted(found, key=lambda a: a.path)}
        return self._apps_cache[root.hexsha]

    def folder_tree(self, commit: Sha, path: str) -> str | None:
        tree = self.repo.commit(commit).tree
        try:
            return (tree / path).hexsha if path else tree.hexsha
        except KeyError:
            return None

    def read_folder(self, tree_sha: str) -> dict[str, str]:
        """{relative path: text} of every file under a folder's tree."""
        files = {}
        # Rooted at "", so item paths are relative to the folder.
        tree = git.Tree(self.repo, bytes.fromhex(tree_sha), git.Tree.tree_id << 12, "")
        for item in tree.traverse():
            if isinstance(item, git.Blob):
                files[str(item.path)] = item.data_stream.read().decode("utf-8", errors="replace")
        return files

    def changes(self, head: Sha, path: str) -> Iterator[tuple[Sha, str | None]]:
        """Commits that changed the folder, newest first, with the folder's tree in each one's
        first parent (None when the folder did not exist there)."""
        shas = self._git("rev-list", head, "--", path or ".").split()
        for sha in shas:
            commit = self.repo.commit(sha)
            parent = commit.parents[0].hexsha if commit.parents else None
            yield Sha(sha), self.folder_tree(Sha(parent), path) if parent else None

    def last_change(self, head: Sha, path: str) -> Sha:
        first = self._git("rev-list", "-1", head, "--", path or ".").strip()
        return Sha(first or head)

    def author_email(self, sha: Sha) -> str:
        return str(self.repo.commit(sha).author.email)

    def first_parent_changes(self, head: Sha, path: str) -> list[Sha]:
        """Commits of the branch's own line (merges, not the merged branches' commits) that
        changed `path`, newest first: who brought a change into the branch."""
        return [Sha(s) for s in
                self._git("rev-list", "--first-parent", head, "--", path).split()]

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
                 username: str = "git") -> None:
        refuse_credentials(url)
        self.url = url if "://" in url or url.startswith("git@") else str(Path(url).resolve())
        self.branch = branch
        if (workdir / "HEAD").exists():
            repo = git.Repo(workdir)
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(workdir, bare=True)
        super().__init__(repo, token, username)
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
        return Sha(self.repo.commit(self.tracking_ref).hexsha)

    def fetch_notes(self) -> None:
        """Make the local notes equal the remote's: notes that never reached it are dropped,
        so a status whose push failed is written (and pushed) again, never taken as done."""
        remote = self._git("ls-remote", "origin", NOTES_REF)
        if remote.strip():
            self._git("fetch", "--no-tags", "origin", f"+{NOTES_REF}:{NOTES_REF}")
        elif self._git("for-each-ref", NOTES_REF).strip():
            self._git("update-ref", "-d", NOTES_REF)

    def read_file(self, commit: Sha, path: str) -> str:
        blob = self.repo.commit(commit).tree / path
        return str(blob.data_stream.read().decode("utf-8"))

    def commit_file(self, base: Sha, path: str, text: str, message: str,
                    restore: tuple[str, str] | None = None) -> Sha:
        """A commit on top of `base`, made without a work tree (the mirror is bare) through a
        temporary index: `path` gets `text`; with `restore=(folder, tree)` the folder first
        becomes that tree (the content of another commit), then `path` is written."""
        with tempfile.TemporaryDirectory() as tmp:
            env = {**self._env, "GIT_INDEX_FILE": str(Path(tmp) / "index"), **self.author}
            try:
                with self.repo.git.custom_environment(**env):
                    git_ = self.repo.git
                    git_.read_tree(base)
                    if restore is not None:
                        # A bare repository has no `read-tree --prefix`: list the tree's
                        # entries and put them under the folder through --index-info.
                        folder, tree = restore
                        git_.rm("-r", "--cached", "-q", "--ignore-unmatch", "--", folder)
                        listing = Path(tmp) / "entries"
                        listing.write_text("".join(
                            f"{mode} {sha}\t{folder}/{name}\n"
                            for mode, _, sha, name in (
                                line.replace("\t", " ", 1).split(" ", 3)
                                for line in git_.ls_tree("-r", tree).splitlines())))
                        with listing.open("rb") as entries:
                            git_.update_index("--index-info", istream=entries)
                    content = Path(tmp) / "content"
                    content.write_text(text)
                    blob = git_.hash_object("-w", str(content))
                    git_.update_index("--add", "--cacheinfo", f"100644,{blob},{path}")
                    tree_sha = git_.write_tree()
                    commit = git_.commit_tree(tree_sha, "-p", base, "-m", message)
            except git.GitCommandError as error:
                raise ApiError(f"git: making a commit on {base[:7]}: "
                               f"{str(error.stderr or error).strip()}") from None
        return Sha(str(commit))

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
        self._git("notes", f"--ref={NOTES_REF}", "add", "-f", "-m", text, sha)

    def push_notes(self) -> None:
        self._git("push", "origin", f"{NOTES_REF}:{NOTES_REF}")
