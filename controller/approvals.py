"""Is `promote:` a judgment git really records? The gate between a canary and stable.

An approval counts when:
- it is the full hash of exactly this canary revision (the policy parser refuses prefixes),
  set by a commit that comes after that revision on the branch's first-parent line;
- it satisfies the policy of the revision stable runs — not the policy being approved, so one
  commit cannot both drop `approvers:` and approve itself. (Changing who may approve is itself
  a change that needs approval: the governance is part of the fingerprint.)
- with `approvers:`, the approving commit is authenticated as one of them: an SSH signature whose
  key the allowed-signers file lists for an approver, or (with a forge) the promote pull
  request merged or approved in review by one. A commit's author email is never evidence.
- with `requireSignedApproval: true`, a valid signature is required, by an approver's key when
  there are approvers.
The state machine adds the last rule: an approval is used once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.apps import AppReader, Desired
from controller.domain.policy import Policy
from controller.domain.types import Sha
from controller.edges.git import GitRepo
from controller.errors import CanaryError

# Who merged or approved the pull request merged as a commit (forge logins and emails).
ForgeApprovers = Callable[[Sha], frozenset[str]]


@dataclass(frozen=True)
class Verdict:
    approval: Sha | None  # the approved revision, when the approval counts
    refusal: str | None = None  # why an approval of this canary does not count


NONE = Verdict(None)


@dataclass
class Gate:
    source: GitRepo
    reader: AppReader
    allowed_signers: Path | None = None
    forge_approvers: ForgeApprovers | None = None
    # Who signed or merged a commit never changes: an answer is asked of git and the forge
    # once, not on every reconcile while the canary waits (a refused approval can wait long).
    _answers: dict[tuple[Sha, frozenset[str], bool], str | None] = field(default_factory=dict)

    def check(self, head: Sha, desired: Desired, governing: Policy | None,
              stable_revision: Sha | None) -> Verdict:
        promote, revision = desired.policy.promote, desired.revision
        if promote is None or promote != revision:
            return NONE  # no approval, or one of another canary: nothing to judge
        if governing is None:
            return Verdict(None, f"approval refused: the policy of stable's revision "
                                 f"{(stable_revision or '?')[:7]} is not in the repository")
        commit = self.reader.approval_commit(head, desired.folder, promote)
        if commit is None or not self.source.is_ancestor(revision, commit):
            return Verdict(None, "approval refused: the commit that set it must come after the "
                                 "canary revision on the branch")
        key = (commit, frozenset(a.lower() for a in governing.approvers),
               governing.require_signed_approval)
        if key not in self._answers:
            self._answers[key] = self._authenticate(commit, governing)
        refusal = self._answers[key]
        return Verdict(None, refusal) if refusal else Verdict(revision)

    def _authenticate(self, commit: Sha, policy: Policy) -> str | None:
        approvers = {a.lower() for a in policy.approvers}
        if not (approvers or policy.require_signed_approval):
            return None  # anyone who may push approves, as with any other change
        short = commit[:7]
        signature = self.source.signature(commit, self.allowed_signers) \
            if self.allowed_signers is not None else None
        if policy.require_signed_approval:
            if signature is None:
                return ("approval refused: requireSignedApproval, but the controller has no "
                        "--allowed-signers file")
            if not signature.good:
                return f"approval refused: {short} has no valid signature of an allowed key"
            if approvers and signature.principal not in approvers:
                return (f"approval refused: {short} is signed by {signature.principal}, not one "
                        f"of the approvers")
            return None
        if signature is not None and signature.good and signature.principal in approvers:
            return None
        if self.forge_approvers is not None:
            try:
                if self.forge_approvers(commit) & approvers:
                    return None
            except CanaryError as error:
                if error.transient:
                    raise
                return f"approval refused: the forge could not say who merged {short}: {error}"
        if signature is not None and signature.good:
            return (f"approval refused: {short} is signed by {signature.principal}, not an "
                    f"approver, and no approver merged or approved it on a forge")
        return (f"approval refused: {short} is neither signed by an approver's key nor a pull "
                f"request merged or approved by an approver")
