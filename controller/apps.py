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
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.domain.limits import MAX_APP_BYTES, MAX_FILE_BYTES, Budget
from controller.domain.manifests import Manifest, parse_manifests, select_files
from controller.domain.policy import (
    CHART_FILE,
    KUSTOMIZATION_FILES,
    POLICY_FILE,
    Helm,
    Policy,
    parse_policy,
)
from controller.domain.render import fingerprint
from controller.domain.types import Fingerprint, Sha
from controller.edges.git import AppFolder, FileEntry, GitRepo, synchronized
from controller.edges.renderers import Tools
from controller.errors import CanaryError, InputError

MAX_EXPORT_BYTES = 8 * MAX_APP_BYTES  # a Kustomize build sees the repository: at most this
POLICIES_KEPT = 4096  # parsed canary.yaml files kept, by folder tree (oldest dropped first)
KUSTOMIZE_WALK = 50  # commits walked back to find a Kustomize app's revision

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
    def __init__(self, repo: GitRepo, tools: Tools | None = None) -> None:
        self.repo = repo
        self.tools = tools or Tools.found()
        self._fingerprints: dict[str, Fingerprint | None] = {}
        self._parsed: OrderedDict[tuple[str, str, str],
                                  tuple[Policy, list[Manifest], int]] = OrderedDict()
        self._parsed_bytes = 0
        self._revisions: dict[tuple[Sha, str, Fingerprint], Sha] = {}
        self._policies: dict[tuple[str, str], Policy] = {}
        self._lock = threading.RLock()  # the caches are shared by the apps' worker threads

    @synchronized
    def desired(self, head: Sha, folder: AppFolder) -> Desired:
        policy, manifests = self.parse(folder, folder.tree, folder.root)
        fp = fingerprint(manifests, policy.governance, policy.direct)
        return Desired(folder, policy, manifests, fp, self.revision(head, folder, fp))

    @synchronized
    def parse(self, folder: AppFolder, tree: str, root: str = "") -> tuple[Policy, list[Manifest]]:
        """The app at a folder tree; `root`, the commit's root tree, matters to Kustomize."""
        key = (folder.path, tree, root if folder.kustomize else "")
        if key in self._parsed:
            self._parsed.move_to_end(key)
        else:
            self._parsed[key] = self._parse(folder, tree, root)
            self._parsed_bytes += self._parsed[key][2]
            while self._parsed_bytes > CACHE_BYTES and len(self._parsed) > 1:
                self._parsed_bytes -= self._parsed.popitem(last=False)[1][2]
        policy, manifests, _ = self._parsed[key]
        # Manifests hold mutable dicts: hand out copies so no caller changes the cache.
        return policy, copy.deepcopy(manifests)

    def _parse(self, folder: AppFolder, tree: str,
               root: str) -> tuple[Policy, list[Manifest], int]:
        """The app's policy and manifests, and how many bytes they were read from."""
        prefix = f"{folder.path}/" if folder.path else ""
        entries = {entry.path: entry for entry in self.repo.list_folder(tree)}
        if POLICY_FILE not in entries:
            raise InputError(f"{prefix}{POLICY_FILE}", "", "not found")
        (policy_entry,) = _readable(prefix, [entries[POLICY_FILE]], Budget())
        policy = parse_policy(self.repo.read_blob(policy_entry), f"{prefix}{POLICY_FILE}",
                              folder.name)
        kustomization = next((n for n in KUSTOMIZATION_FILES if n in entries), None)
        if kustomization is not None or CHART_FILE in entries:
            text = self._rendered(folder, tree, root, policy, kustomization is not None)
            manifests = parse_manifests(_documents(prefix, text, "kustomize build"
                                                   if kustomization else "helm template"),
                                        policy)
            if not manifests:
                raise InputError(f"{prefix}{kustomization or CHART_FILE}", "",
                                 "renders no Kubernetes objects")
            return policy, manifests, policy_entry.size + len(text)
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

    def _rendered(self, folder: AppFolder, tree: str, root: str, policy: Policy,
                  kustomize: bool) -> str:
        """The folder's objects as its tool renders them, from files written to a temporary
        folder: for Kustomize the commit's whole tree (bases may be anywhere), for Helm the
        chart folder."""
        prefix = f"{folder.path}/" if folder.path else ""
        with tempfile.TemporaryDirectory(prefix="gitops-canary-export-") as scratch:
            base = Path(scratch)
            if kustomize and root:
                self._export(root, base, prefix)
                return self.tools.kustomize_build(base, folder.path, prefix)
            self._export(tree, base / "app", prefix)
            if kustomize:
                return self.tools.kustomize_build(base / "app", "", prefix)
            helm = policy.helm or Helm(policy.app)
            values = None if helm.values is None else yaml.safe_dump(helm.values)
            return self.tools.helm_template(base / "app", helm.release, policy.namespace,
                                            helm.values_files, values, prefix)

    def _export(self, tree: str, into: Path, shown: str) -> None:
        """Write the files of a tree (regular files only: a symlink could point anywhere),
        within MAX_EXPORT_BYTES."""
        entries = self.repo.list_folder(tree)
        size = sum(e.size for e in entries if not e.symlink)
        if size > MAX_EXPORT_BYTES:
            raise InputError(shown or "/", "", f"{size:,} bytes to render from, over the limit "
                                               f"of {MAX_EXPORT_BYTES // 2**20} MiB")
        for entry in entries:
            if entry.symlink:
                continue
            target = into / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.repo.read_bytes(entry))

    @synchronized
    def find(self, head: Sha, app: str) -> AppFolder:
        """The folder of the app named `app` (by `app:` or folder name) at a commit."""
        names = []
        for folder in self.repo.apps(head):
            try:
                name = self.policy(folder, folder.tree).app
            except InputError:
                name = folder.name
            if name == app:
                return folder
            names.append(name)
        raise InputError(POLICY_FILE, "app", f"no app named {app} (found: "
                                             f"{', '.join(names) or 'none'})")

    @synchronized
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
            return self.policy(folder, tree).promote
        except InputError:
            return None

    @synchronized
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
            return self.policy(folder, tree)
        except InputError:
            return None

    @synchronized
    def manifests_at(self, commit: Sha, folder: AppFolder) -> list[Manifest] | None:
        """The app's objects as they were at a commit (None when the commit, the folder or
        its objects are not to be had): what stable runs, as git says it, for the baseline."""
        try:
            tree = self.repo.folder_tree(commit, folder.path)
            root = self.repo.folder_tree(commit, "") if folder.kustomize else ""
        except (ValueError, CanaryError):
            return None  # a commit the repository does not have (rewritten history)
        if tree is None:
            return None
        try:
            return self.parse(folder, tree, root or "")[1]
        except InputError:
            return None

    @synchronized
    def policy(self, folder: AppFolder, tree: str) -> Policy:
        """Only the folder's canary.yaml, parsed: nothing rendered. Cached by tree (the
        governing policy is asked for on every reconcile of an app in flight)."""
        key = (folder.path, tree)
        if key not in self._policies:
            if len(self._policies) >= POLICIES_KEPT:
                self._policies.pop(next(iter(self._policies)))
            self._policies[key] = self._policy(folder, tree)
        return self._policies[key]

    def _policy(self, folder: AppFolder, tree: str) -> Policy:
        prefix = f"{folder.path}/" if folder.path else ""
        entry = next((e for e in self.repo.list_folder(tree) if e.path == POLICY_FILE), None)
        if entry is None:
            raise InputError(f"{prefix}{POLICY_FILE}", "", "not found")
        (entry,) = _readable(prefix, [entry], Budget())
        return parse_policy(self.repo.read_blob(entry), f"{prefix}{POLICY_FILE}", folder.name)

    def _fingerprint_of(self, folder: AppFolder, tree: str, root: str) -> Fingerprint | None:
        key = f"{tree}+{root}" if folder.kustomize else tree
        if key not in self._fingerprints:
            try:
                policy, manifests = self.parse(folder, tree, root)
                self._fingerprints[key] = fingerprint(manifests, policy.governance, policy.direct)
            except InputError:
                self._fingerprints[key] = None
        return self._fingerprints[key]

    @synchronized
    def revision(self, head: Sha, folder: AppFolder, fp: Fingerprint) -> Sha:
        """Walk back the commits that touched the folder until the one whose parent ran
        something else: that commit started the running spec. A Kustomize app may change by
        a commit to a base anywhere: every commit counts, up to KUSTOMIZE_WALK of them."""
        cache_key = (head, folder.path, fp)
        if cache_key not in self._revisions:
            revision = head
            path = "" if folder.kustomize else folder.path
            for walked, (sha, parent) in enumerate(self.repo.changes(head, path)):
                revision = sha
                if parent is None or (folder.kustomize and walked >= KUSTOMIZE_WALK):
                    break
                if folder.kustomize:
                    tree = self.repo.subtree(parent, folder.path)
                    parent_fp = None if tree is None else \
                        self._fingerprint_of(folder, tree, parent)
                else:
                    parent_fp = self._fingerprint_of(folder, parent, "")
                if parent_fp != fp:
                    break
            self._revisions[cache_key] = revision
        return self._revisions[cache_key]


def on_disk(folder: Path, policy: Policy, tools: Tools) -> list[Manifest]:
    """An app folder on disk (`gitops-canary render`), rendered as the controller would."""
    shown = f"{folder}/"
    if any((folder / name).is_file() for name in KUSTOMIZATION_FILES):
        text = tools.kustomize_build(folder.resolve(), "", shown)
        return parse_manifests(_documents(shown, text, "kustomize build"), policy)
    if (folder / CHART_FILE).is_file():
        helm = policy.helm or Helm(policy.app)
        values = None if helm.values is None else yaml.safe_dump(helm.values)
        text = tools.helm_template(folder.resolve(), helm.release, policy.namespace,
                                   helm.values_files, values, shown)
        return parse_manifests(_documents(shown, text, "helm template"), policy)
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    return parse_manifests({str(folder / n): (folder / n).read_text()
                            for n in select_files(names, policy)}, policy)


def _documents(prefix: str, text: str, tool: str) -> dict[str, str]:
    """A tool's output as {name: one document}, so each object's errors name it (and the
    per-file limit holds per object)."""
    parts = [part for part in re.split(r"(?m)^---[ \t]*$", text) if part.strip()]
    return {f"{prefix}({tool}) object {i:04d}": part for i, part in enumerate(parts, start=1)}


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
