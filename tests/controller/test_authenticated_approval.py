"""approvers and requireSignedApproval: an approval by anyone else, or unsigned, changes nothing
but an error status; the right person's (signed) approval promotes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.controller.conftest import Harness, deployment, git, new_reconciler, service
from tests.controller.test_canary_flow import APP, only, rate, variants_ready

pytestmark = pytest.mark.cluster

LEAD = "lead@example.com"


def stable_then_canary(harness: Harness, **policy: Any) -> str:
    repo = harness.repo
    fields = {"namespace": harness.namespace, "bootstrap": "direct", **policy}
    repo.write(f"{APP}/canary.yaml", fields)
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "10"))
    repo.write(f"{APP}/service.yml", service("sampleapp"))
    repo.commit("first version")
    harness.settle(lambda: (d := only(harness, "sampleapp")) and d, "stable")
    repo.write(f"{APP}/deployment.yml", deployment("sampleapp", "20"))
    change = repo.commit("rate 20")
    harness.settle(lambda: variants_ready(harness), "baseline and canary")
    return change


def approve(harness: Harness, change: str, email: str, *sign: str, **policy: Any) -> str:
    """Commit `promote: <change>` as `email` (the approval counts for the commit that sets the
    value: to approve again, spell the sha differently, e.g. short, then full)."""
    fields = {"namespace": harness.namespace, "bootstrap": "direct", "promote": change, **policy}
    harness.repo.write(f"{APP}/canary.yaml", fields)
    git(harness.repo.clone, "add", "-A")
    git(harness.repo.clone, "-c", f"user.email={email}", *sign, "commit", "-q",
        *(["-S"] if sign else []), "-m", f"approve {change[:7]}")
    harness.repo.push()
    return git(harness.repo.clone, "rev-parse", "HEAD")


def test_an_approval_by_a_non_approver_does_nothing_but_an_error_status(
        harness: Harness) -> None:
    change = stable_then_canary(harness, approvers=[LEAD])
    approve(harness, change[:8], "dev@example.com", approvers=[LEAD])
    note = harness.settle(lambda: "approval refused" in harness.repo.note(change)
                          and harness.repo.note(change), "the refusal")
    assert "error: approval refused" in note
    assert "dev@example.com, not one of the approvers" in note
    for _ in range(3):
        harness.reconcile()
    assert rate(harness.deployments()["sampleapp"]) == "10"
    assert "sampleapp-canary" in harness.deployments()

    approve(harness, change, LEAD, approvers=[LEAD])
    found = harness.settle(lambda: (d := only(harness, "sampleapp")) and
                           rate(d["sampleapp"]) == "20" and d, "the lead's approval promotes")
    assert found
    assert "success: promoted" in harness.settle(
        lambda: "promoted" in harness.repo.note(change) and harness.repo.note(change), "status")


def test_require_signed_approval_checks_the_signature_against_allowed_keys(
        harness: Harness, tmp_path: Path) -> None:
    key = tmp_path / "lead_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", LEAD, "-f", str(key)],
                   check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"{LEAD} {key.with_suffix('.pub').read_text().strip()}\n")
    harness.reconciler = new_reconciler(harness.repo.remote, tmp_path / "signed-mirror",
                                        harness.api, harness.namespace, allowed_signers=allowed)
    change = stable_then_canary(harness, requireSignedApproval=True)

    approve(harness, change[:8], LEAD, requireSignedApproval=True)  # unsigned
    note = harness.settle(lambda: "approval refused" in harness.repo.note(change)
                          and harness.repo.note(change), "the refusal of an unsigned approval")
    assert "has no valid signature of an allowed key" in note
    assert rate(harness.deployments()["sampleapp"]) == "10"

    signing = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}")
    approve(harness, change, LEAD, *signing, requireSignedApproval=True)
    harness.settle(lambda: (d := only(harness, "sampleapp")) and rate(d["sampleapp"]) == "20",
                   "the signed approval promotes")
