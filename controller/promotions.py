"""Promote pull requests: when a canary waits for a verdict from a person, the controller
proposes the approval as a pull (merge) request — a branch whose only change is
`promote: "<sha>"` in the app's canary.yaml, with the analysis in its description. Merging it
promotes; when the canary is superseded or rejected the request is closed with a comment.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import httpx

from controller.domain.policy import POLICY_FILE, with_approval
from controller.domain.types import Sha
from controller.edges.forges import Forge, PullRequest
from controller.edges.git import GitSource

log = logging.getLogger(__name__)


def branch_for(app: str) -> str:
    return f"gitops-canary/promote-{app}"


def analysis_table(analysis: str | None) -> str:
    """The last judgement (record JSON) as a Markdown table."""
    if not analysis:
        return "_No analysis: nothing to compare against, or no Prometheus configured._"
    judgement = json.loads(analysis)
    rows = ["| metric | result | baseline | canary | canary - baseline (95% CS) | e-value |",
            "| --- | --- | --- | --- | --- | --- |"]
    for m in judgement["metrics"]:
        rows.append(f"| {m['name']} | {m['result']} | {_num(m.get('baseline'))} | "
                    f"{_num(m.get('canary'))} | {_num(m.get('estimate'))} "
                    f"[{_num(m.get('lower'))}, {_num(m.get('upper'))}] | "
                    f"{_num(m.get('e_value'))} |")
    verdict = f"**Verdict: {judgement['verdict']}**, score {judgement['score']:g}"
    return verdict + "\n\n" + "\n".join(rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{float(value):.4g}"


@dataclass
class PromotionRequests:
    forge: Forge
    client: httpx.Client
    source: GitSource

    def propose(self, app: str, folder: str, head: Sha, revision: Sha, status: str,
                analysis: str | None) -> PullRequest:
        path = f"{folder}/{POLICY_FILE}" if folder else POLICY_FILE
        text = with_approval(self.source.read_file(head, path), revision)
        title = f"Promote {app} canary {revision[:7]}"
        commit = self.source.commit_file(head, path, text, f"{title}\n\nApproves the canary of "
                                                           f"{revision} (gitops-canary).")
        self.source.push_branch(commit, branch_for(app))
        body = (f"The canary of `{revision}` waits for a verdict: **{status}**\n\n"
                f"{analysis_table(analysis)}\n\nMerging this adds `promote: \"{revision}\"` to "
                f"`{path}`: the controller then applies the canary's spec to stable and deletes "
                f"baseline and canary. To reject instead, revert the change in git.")
        pr = self.forge.find_pr(self.client, branch_for(app))
        if pr is None:
            pr = self.forge.open_pr(self.client, branch_for(app), self.source.branch, title, body)
            log.info("opened promote request #%d for %s", pr.number, app)
        else:
            self.forge.update_pr(self.client, pr, title, body)
            log.info("updated promote request #%d for %s", pr.number, app)
        return pr

    def withdraw(self, app: str, reason: str) -> PullRequest | None:
        pr = self.forge.find_pr(self.client, branch_for(app))
        if pr is not None:
            self.forge.close_pr(self.client, pr, f"Closed by gitops-canary: {reason}")
            log.info("closed promote request #%d for %s: %s", pr.number, app, reason)
        return pr
