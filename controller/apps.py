"""What git wants for each app: its policy, manifests, fingerprint and canary revision.

Shared by the controller (on its mirror) and the `promote` / `reject` commands (on a person's
clone), so both agree on which commit a canary belongs to. Parsed results are cached by git
tree: equal trees, equal apps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from controller.domain.manifests import Manifest, parse_manifests, select_files
from controller.domain.policy import POLICY_FILE, Policy, parse_policy
from controller.domain.render import fingerprint
from controller.domain.types import Fingerprint, Sha
from controller.edges.git import AppFolder, GitRepo
from controller.errors import CanaryError, InputError


@dataclass(frozen=True)
class Desired:
    folder: AppFolder
    policy: Policy
    manifests: list[Manifest]
    fingerprint: Fingerprint
    revision: Sha  # the commit that last changed what the app's pods run


class AppReader:
    def __init__(self, repo: GitRepo) -> None:
        self.repo = repo
        self._fingerprints: dict[str, Fingerprint | None] = {}
        self._parsed: dict[tuple[str, str], tuple[Policy, list[Manifest]]] = {}
        self._revisions: dict[tuple[Sha, str, Fingerprint], Sha] = {}

    def desired(self, head: Sha, folder: AppFolder) -> Desired:
        policy, manifests = self.parse(folder, folder.tree)
        fp = fingerprint(manifests, policy.governance)
        return Desired(folder, policy, manifests, fp, self.revision(head, folder, fp))

    def parse(self, folder: AppFolder, tree: str) -> tuple[Policy, list[Manifest]]:
        key = (folder.path, tree)
        if key not in self._parsed:
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[key] = self._parse(folder, tree)
        policy, manifests = self._parsed[key]
        # Manifests hold mutable dicts: hand out copies so no caller changes the cache.
        return policy, copy.deepcopy(manifests)

    def _parse(self, folder: AppFolder, tree: str) -> tuple[Policy, list[Manifest]]:
        files = self.repo.read_folder(tree)
        prefix = f"{folder.path}/" if folder.path else ""
        policy = parse_policy(files[POLICY_FILE], f"{prefix}{POLICY_FILE}", folder.name)
        chosen = {f"{prefix}{n}": files[n] for n in select_files(files, policy)}
        return policy, parse_manifests(chosen, policy)

    def find(self, head: Sha, app: str) -> AppFolder:
        """The folder of the app named `app` (by `app:` or folder name) at a commit."""
        names = []
        for folder in self.repo.apps(head):
            try:
                name = self.parse(folder, folder.tree)[0].app
            except InputError:
                name = folder.name
            if name == app:
                return folder
            names.append(name)
        raise InputError(POLICY_FILE, "app", f"no app named {app} (found: "
                                             f"{', '.join(names) or 'none'})")

    def approval_commit(self, head: Sha, folder: AppFolder, approval: str) -> Sha | None:
        """The commit that brought the current `promote:` value into the branch: on the
        branch's first-parent line, the newest change to canary.yaml before which the value was
        something else (for a merged pull request, the merge: the person who merged it)."""
        path = f"{folder.path}/{POLICY_FILE}" if folder.path else POLICY_FILE
        for sha in self.repo.first_parent_changes(head, path):
            parent = self.repo.first_parent(sha)
            if parent is None or self._promote_at(parent, folder) != approval:
                return sha
        return None

    def _promote_at(self, commit: Sha, folder: AppFolder) -> str | None:
        tree = self.repo.folder_tree(commit, folder.path)
        if tree is None:
            return None
        try:
            return self.parse(folder, tree)[0].promote
        except InputError:
            return None

    def policy_at(self, commit: Sha, folder: AppFolder) -> Policy | None:
        """The app's policy as it was at a commit (None when the folder or its canary.yaml was
        not there, or did not parse): the policy of the revision stable runs governs who may
        approve the next canary."""
        try:
            tree = self.repo.folder_tree(commit, folder.path)
        except (ValueError, CanaryError):
            return None  # a commit the repository does not have (rewritten history)
        if tree is None:
            return None
        try:
            return self.parse(folder, tree)[0]
        except InputError:
            return None

    def _fingerprint_of(self, folder: AppFolder, tree: str) -> Fingerprint | None:
        if tree not in self._fingerprints:
            try:
                policy, manifests = self.parse(folder, tree)
                self._fingerprints[tree] = fingerprint(manifests, policy.governance)
            except InputError:
                self._fingerprints[tree] = None
        return self._fingerprints[tree]

    def revision(self, head: Sha, folder: AppFolder, fp: Fingerprint) -> Sha:
        """Walk back the commits that touched the folder until the one whose parent ran
        something else: that commit started the running spec."""
        cache_key = (head, folder.path, fp)
        if cache_key not in self._revisions:
            revision = head
            for sha, parent_tree in self.repo.changes(head, folder.path):
                revision = sha
                if parent_tree is None or self._fingerprint_of(folder, parent_tree) != fp:
                    break
            self._revisions[cache_key] = revision
        return self._revisions[cache_key]
