"""approvers and requireSignedApproval: an approval by anyone else, unsigned, or merely claiming
an approver's email, changes nothing but an error status; the right person's signed approval
promotes."""

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
    """Commit `promote: <change>` as `email` (signed when `sign` names a key). The approval
    counts for the commit that sets the value, so the line is first removed: a new judgment."""
    fields = {"namespace": harness.namespace, "bootstrap": "direct", **policy}
    harness.repo.write(f"{APP}/canary.yaml", fields)
    git(harness.repo.clone, "add", "-A")
    git(harness.repo.clone, "commit", "-q", "--allow-empty", "-m", "no approval")
    harness.repo.write(f"{APP}/canary.yaml", {**fields, "promote": change})
    git(harness.repo.clone, "add", "-A")
    git(harness.repo.clone, "-c", f"user.email={email}", *sign, "commit", "-q",
        *(["-S"] if sign else []), "-m", f"approve {change[:7]}")
    harness.repo.push()
    return git(harness.repo.clone, "rev-parse", "HEAD")


def keys(tmp_path: Path, *people: str) -> tuple[Path, dict[str, tuple[str, ...]]]:
    """SSH keys for `people`, an allowed-signers file naming each key's owner, and the git
    options that sign as each."""
    lines: list[str] = []
    signing: dict[str, tuple[str, ...]] = {}
    for person in people:
        key = tmp_path / f"key-{person.split('@')[0]}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", person, "-f",
                        str(key)], check=True)
        lines.append(f"{person} {key.with_suffix('.pub').read_text().strip()}")
        signing[person] = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text("\n".join(lines) + "\n")
    return allowed, signing


def refused(harness: Harness, change: str) -> str:
    note: str = harness.settle(lambda: "approval refused" in harness.repo.note(change)
                               and harness.repo.note(change), "the refusal")
    for _ in range(3):
        harness.reconcile()
    assert rate(harness.deployments()["sampleapp"]) == "10"
    assert "sampleapp-canary" in harness.deployments()
    return note


def test_approvers_are_authenticated_by_their_keys_never_by_an_author_email(
        harness: Harness, tmp_path: Path) -> None:
    allowed, signing = keys(tmp_path, LEAD, "dev@example.com")
    harness.reconciler = new_reconciler(harness.repo.remote, tmp_path / "signed-mirror",
                                        harness.api, harness.namespace, harness.state_namespace,
                                        allowed_signers=allowed)
    change = stable_then_canary(harness, approvers=[LEAD])

    approve(harness, change, LEAD, approvers=[LEAD])  # claims to be the lead, unsigned
    assert "neither signed by an approver's key" in refused(harness, change)

    approve(harness, change, LEAD, *signing["dev@example.com"], approvers=[LEAD])
    note = harness.settle(lambda: "signed by dev@example.com" in harness.repo.note(change)
                          and harness.repo.note(change), "the refusal of a non-approver's key")
    assert "error: approval refused" in note
    assert "not an approver" in note
    assert rate(harness.deployments()["sampleapp"]) == "10"

    approve(harness, change, LEAD, *signing[LEAD], approvers=[LEAD])
    harness.settle(lambda: (d := only(harness, "sampleapp")) and rate(d["sampleapp"]) == "20",
                   "the lead's signed approval promotes")
    assert "success: promoted" in harness.settle(
        lambda: "promoted" in harness.repo.note(change) and harness.repo.note(change), "status")


def test_require_signed_approval_checks_the_signature_against_allowed_keys(
        harness: Harness, tmp_path: Path) -> None:
    allowed, signing = keys(tmp_path, LEAD)
    harness.reconciler = new_reconciler(harness.repo.remote, tmp_path / "signed-mirror",
                                        harness.api, harness.namespace, harness.state_namespace,
                                        allowed_signers=allowed)
    change = stable_then_canary(harness, requireSignedApproval=True)

    approve(harness, change, LEAD, requireSignedApproval=True)  # unsigned
    assert "has no valid signature of an allowed key" in refused(harness, change)

    approve(harness, change, LEAD, *signing[LEAD], requireSignedApproval=True)
    harness.settle(lambda: (d := only(harness, "sampleapp")) and rate(d["sampleapp"]) == "20",
                   "the signed approval promotes")
