"""What follows a decision's statuses, in git and on the forge: promote pull requests, and
with `judgment: auto` the approval or revert commit the controller writes itself, so git still
tells the truth. A forge or push that refuses is logged; the commits are proposed again on the
next reconcile, the canary is not held up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from controller.domain.machine import Action, Decision, Record
from controller.domain.policy import POLICY_FILE, with_approval
from controller.domain.types import AppName, Sha
from controller.edges.git import AppFolder, GitSource
from controller.errors import ApiError, CanaryError
from controller.promotions import PromotionRequests

log = logging.getLogger(__name__)


@dataclass
class FollowUps:
    source: GitSource
    promotions: PromotionRequests | None = None

    def run(self, app: AppName, head: Sha, folder: AppFolder, decision: Decision,
            record: Record) -> None:
        for action in decision.actions:
            try:
                if action is Action.COMMIT_APPROVAL:
                    self._commit_judgment(app, head, folder, record, approve=True)
                elif action is Action.COMMIT_REVERT:
                    self._commit_judgment(app, head, folder, record, approve=False)
                elif self.promotions is None:
                    continue
                elif action is Action.PROPOSE_PROMOTION and record.canary_revision:
                    status = record.last_status.description if record.last_status else ""
                    self.promotions.propose(app, folder.path, head, record.canary_revision,
                                            status, record.analysis)
                elif action is Action.WITHDRAW_PROMOTION:
                    reason = decision.statuses[0].description if decision.statuses \
                        else "the canary is gone"
                    self.promotions.withdraw(app, reason)
            except CanaryError as error:
                log.error("app %s: %s: %s", app, action, error)

    def _commit_judgment(self, app: AppName, head: Sha, folder: AppFolder, record: Record,
                         approve: bool) -> None:
        revision = record.canary_revision
        if revision is None:
            return
        path = f"{folder.path}/{POLICY_FILE}" if folder.path else POLICY_FILE
        policy_text = self.source.read_file(head, path)
        verdict = record.last_status.description if record.last_status else ""
        if approve:
            commit = self.source.commit_file(
                head, path, with_approval(policy_text, revision),
                f"Promote {app} canary {revision[:7]} (judgment: auto)\n\n{verdict}")
        else:
            # Back to what stable runs: its revision's folder (else the canary's parent's),
            # keeping today's canary.yaml.
            base = record.stable_revision or self.source.first_parent(revision)
            tree = self.source.folder_tree(base, folder.path) if base else None
            if tree is None:
                raise ApiError(f"no stable content to revert {app} to")
            commit = self.source.commit_file(
                head, path, policy_text,
                f"Revert {app} canary {revision[:7]} (judgment: auto)\n\n{verdict}",
                restore=(folder.path, tree))
        self.source.push_to_branch(commit)
        log.info("app %s: judgment auto: pushed %s %s", app,
                 "the approval" if approve else "the revert", commit[:7])

