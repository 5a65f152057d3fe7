"""What git wants for each app: its policy, manifests, fingerprint and canary revision.

Shared by the controller (on its mirror) and the `promote` / `reject` commands (on a person's
clone), so both agree on which commit a canary belongs to. Parsed results are cached by git
tree: equal trees, equal apps.

A folder is listed before it is read: only canary.yaml and the files its manifest globs match
are read, and only once their sizes (known from the listing) are within the limits, so a large
file in docs/ costs nothing and a large manifest is refused unread.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from controller.domain.limits import MAX_FILE_BYTES, Budget
from controller.domain.manifests import Manifest, parse_manifests, select_files
from controller.domain.policy import POLICY_FILE, Policy, parse_policy
from controller.domain.render import fingerprint
from controller.domain.types import Fingerprint, Sha
from controller.edges.git import AppFolder, FileEntry, GitRepo
from controller.errors import CanaryError, InputError

# The parsed apps kept, counted in the bytes of the files they were parsed from (the parsed
# objects take a few times that): many small apps, or a few at the limits, never more.
CACHE_BYTES = 16 * MAX_FILE_BYTES


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
        self._parsed: OrderedDict[tuple[str, str], tuple[Policy, list[Manifest], int]] = \
            OrderedDict()
        self._parsed_bytes = 0
        self._revisions: dict[tuple[Sha, str, Fingerprint], Sha] = {}

    def desired(self, head: Sha, folder: AppFolder) -> Desired:
        policy, manifests = self.parse(folder, folder.tree)
        fp = fingerprint(manifests, policy.governance)
        return Desired(folder, policy, manifests, fp, self.revision(head, folder, fp))

    def parse(self, folder: AppFolder, tree: str) -> tuple[Policy, list[Manifest]]:
        key = (folder.path, tree)
        if key in self._parsed:
            self._parsed.move_to_end(key)
        else:
            self._parsed[key] = self._parse(folder, tree)
            self._parsed_bytes += self._parsed[key][2]
            while self._parsed_bytes > CACHE_BYTES and len(self._parsed) > 1:
                self._parsed_bytes -= self._parsed.popitem(last=False)[1][2]
        policy, manifests, _ = self._parsed[key]
        # Manifests hold mutable dicts: hand out copies so no caller changes the cache.
        return policy, copy.deepcopy(manifests)

    def _parse(self, folder: AppFolder, tree: str) -> tuple[Policy, list[Manifest], int]:
        """The app's policy and manifests, and how many bytes they were read from."""
        prefix = f"{folder.path}/" if folder.path else ""
        entries = {entry.path: entry for entry in self.repo.list_folder(tree)}
        if POLICY_FILE not in entries:
            raise InputError(f"{prefix}{POLICY_FILE}", "", "not found")
        (policy_entry,) = _readable(prefix, [entries[POLICY_FILE]], Budget())
        policy = parse_policy(self.repo.read_blob(policy_entry), f"{prefix}{POLICY_FILE}",
                              folder.name)
        chosen = _readable(prefix, (entries[n] for n in select_files(entries, policy)),
                           Budget())
        texts = {f"{prefix}{entry.path}": self.repo.read_blob(entry) for entry in chosen}
        manifests = parse_manifests(texts, policy)
        if not manifests:
            globs = ", ".join(policy.manifests)
            raise InputError(f"{prefix}{POLICY_FILE}", "manifests",
                             f"no Kubernetes objects in this folder: no file matches {globs}"
                             if not chosen else f"the files matching {globs} hold no objects")
        return policy, manifests, policy_entry.size + sum(e.size for e in chosen)

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


def _readable(prefix: str, entries: Iterable[FileEntry], budget: Budget) -> list[FileEntry]:
    """The entries, once each is known to be a file within the limits: checked from the
    listing, before anything is read. A symlink's text is a path, not the file it names."""
    checked = []
    for entry in entries:
        name = f"{prefix}{entry.path}"
        if entry.symlink:
            raise InputError(name, "", "symlinks are not followed; commit the file itself")
        budget.spend_bytes(name, entry.size)
        checked.append(entry)
    return checked
