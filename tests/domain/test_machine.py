"""The per-app state machine as tables: record + observation in, record + actions out."""

from __future__ import annotations

import dataclasses

import pytest

from controller.domain.machine import (
    Action,
    Observation,
    Record,
    StatusNote,
    advance,
    analysis_due,
    outbox,
)
from controller.domain.policy import Analysis
from controller.domain.sequential import Assessment, Counts, Spec, Step, assess
from controller.domain.types import AppName, Fingerprint, Phase, Sha, StatusState

APP = AppName("sampleapp")
OLD, NEW, NEWER = Fingerprint("f-old"), Fingerprint("f-new"), Fingerprint("f-newer")
R1, R2, R3 = Sha("1" * 40), Sha("2" * 40), Sha("3" * 40)
NOW = 1000.0


def obs(**fields: object) -> Observation:
    base = Observation(tree="t2", fingerprint=NEW, revision=R2, stable_exists=True,
                       stable_fingerprint=OLD, stable_ready=True, stable_replicas=4,
                       variant_replicas=1)
    return dataclasses.replace(base, **fields)


def states(decision: object) -> list[tuple[str, str, str]]:
    return [(n.sha[:1], str(n.state), n.description.split(":")[0].split(";")[0])
            for n in decision.statuses]


def judged(baseline_good: int | None, canary_good: int | None) -> Assessment:
    def counts(good: int | None) -> Counts | None:
        return None if good is None else Counts(good, 1000)
    return assess([Spec("success-rate", critical=True)],
                  [[Step(counts(baseline_good), counts(canary_good))]])


CANARY = Record(APP, Phase.PROGRESSING, canary_revision=R2, canary_fingerprint=NEW,
                canary_started=NOW, observed_tree="t2")
AWAITING = dataclasses.replace(CANARY, phase=Phase.AWAITING,
                               last_status=StatusNote(R2, StatusState.SUCCESS, "awaiting"))
ANALYZING = dataclasses.replace(CANARY, phase=Phase.ANALYZING, ready_at=NOW - 100)


@pytest.mark.parametrize(("name", "record", "observation", "phase", "actions", "statuses"), [
    ("a new spec deploys baseline and canary",
     Record(APP, observed_tree="t1"), obs(),
     Phase.PROGRESSING, [Action.APPLY_VARIANTS], [("2", "pending", "canary deployed")]),
    ("first deployment: canary only",
     Record(APP), obs(stable_exists=False, stable_fingerprint=None),
     Phase.PROGRESSING, [Action.APPLY_VARIANTS], [("2", "pending", "canary deployed")]),
    ("bootstrap direct goes to stable",
     Record(APP), obs(stable_exists=False, stable_fingerprint=None, bootstrap_direct=True),
     Phase.PROMOTING, [Action.APPLY_STABLE], [("2", "pending", "deploying straight to stable "
                                                             "(bootstrap")]),
    ("variants not ready yet: wait",
     CANARY, obs(variants_present=True, variants_fingerprint=NEW),
     Phase.PROGRESSING, [], []),
    ("variants ready: the analysis starts after the warm-up",
     CANARY, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True),
     Phase.ANALYZING, [], [("2", "pending", "canary ready")]),
    ("variants ready, no Prometheus: a person judges, unanalysed",
     CANARY, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                 analysis_enabled=False),
     Phase.AWAITING, [Action.PROPOSE_PROMOTION],
     [("2", "pending", "baseline and canary ready, unanalysed (no Prometheus configured)")]),
    ("first deployment ready: awaiting promotion, nothing to compare",
     dataclasses.replace(CANARY, first_deployment=True),
     obs(stable_exists=False, stable_fingerprint=None, variants_present=True,
         variants_fingerprint=NEW, variants_ready=True),
     Phase.AWAITING, [Action.PROPOSE_PROMOTION], [("2", "success", "awaiting promotion")]),
    ("analysis passes: awaiting promotion",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(100, 200)),
     Phase.AWAITING, [Action.PROPOSE_PROMOTION],
     [("2", "success", "canary 20.0% vs 10.0% good (1,000/1,000 req)")]),
    ("analysis fails, promote requests on failure configured: one is proposed",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(200, 100), propose_on_failure=True),
     Phase.FAILED, [Action.PROPOSE_PROMOTION],
     [("2", "failure", "canary 10.0% vs 20.0% good (1,000/1,000 req)")]),
    ("analysis fails: failure, the canary stays until git says",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(200, 100)),
     Phase.FAILED, [], [("2", "failure", "canary 10.0% vs 20.0% good (1,000/1,000 req)")]),
    ("judgment auto, pass: the controller commits the approval",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(100, 200), judgment_auto=True),
     Phase.AWAITING, [Action.PROPOSE_PROMOTION, Action.COMMIT_APPROVAL],
     [("2", "success", "canary 20.0% vs 10.0% good (1,000/1,000 req)")]),
    ("judgment auto, fail: the controller commits the revert",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(200, 100), judgment_auto=True),
     Phase.FAILED, [Action.COMMIT_REVERT],
     [("2", "failure", "canary 10.0% vs 20.0% good (1,000/1,000 req)")]),
    ("judgment auto, still awaiting (the push lost a race): commit the approval again",
     dataclasses.replace(AWAITING, analysis="{}"),
     obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
         judgment_auto=True),
     Phase.AWAITING, [Action.COMMIT_APPROVAL], []),
    ("no data before the deadline: keep analysing",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(None, None), warmup=60, deadline=600),
     Phase.ANALYZING, [], [("2", "pending", "no data")]),
    ("no data at the deadline: an error status",
     ANALYZING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                    analysis=judged(None, None), warmup=60, deadline=30),
     Phase.FAILED, [], [("2", "error", "no data")]),
    ("awaiting and nothing new: quiet",
     AWAITING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True),
     Phase.AWAITING, [], []),
    ("the approval of this canary promotes",
     AWAITING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                   approval=R2),
     Phase.PROMOTING, [Action.APPLY_STABLE], [("2", "pending", "promoting")]),
    ("an approval by someone not allowed: an error status, no promotion",
     AWAITING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                   approval=R2, approval_refused="approval refused: not an approver"),
     Phase.AWAITING, [], [("2", "error", "approval refused")]),
    ("an approval of another revision is ignored",
     AWAITING, obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True,
                   approval=R1),
     Phase.AWAITING, [], []),
    ("a second change replaces the canary",
     AWAITING, obs(fingerprint=NEWER, revision=R3, tree="t3", variants_present=True,
                   variants_fingerprint=NEW),
     Phase.PROGRESSING, [Action.APPLY_VARIANTS, Action.WITHDRAW_PROMOTION],
     [("2", "error", "superseded by 3333333"), ("3", "pending",
                                                                  "canary deployed")]),
    ("a revert to stable's spec rejects: variants deleted, stable untouched",
     AWAITING, obs(fingerprint=OLD, revision=R1, tree="t1", variants_present=True,
                   variants_fingerprint=NEW),
     Phase.STABLE, [Action.DELETE_VARIANTS, Action.WITHDRAW_PROMOTION],
     [("2", "failure", "rejected")]),
    ("promotion applied but stable not ready: wait",
     dataclasses.replace(AWAITING, phase=Phase.PROMOTING, promoting="promote"),
     obs(stable_fingerprint=NEW, stable_ready=False, variants_present=True),
     Phase.PROMOTING, [], []),
    ("a commit during the rollout that changes no pod (replicas) is applied, not lost",
     dataclasses.replace(AWAITING, phase=Phase.PROMOTING, promoting="promote"),
     obs(stable_fingerprint=NEW, variants_present=True, tree="t9"),
     Phase.PROMOTING, [Action.APPLY_STABLE], []),
    ("promotion rolled out: delete variants, promoted",
     dataclasses.replace(AWAITING, phase=Phase.PROMOTING, promoting="promote"),
     obs(stable_fingerprint=NEW, variants_present=True),
     Phase.STABLE, [Action.DELETE_VARIANTS, Action.WITHDRAW_PROMOTION],
     [("2", "success", "promoted")]),
    ("restarted before the promotion's apply: apply again",
     dataclasses.replace(AWAITING, phase=Phase.PROMOTING, promoting="promote"),
     obs(variants_present=True, approval=R2),
     Phase.PROMOTING, [Action.APPLY_STABLE], []),
    # The record is memory, never authority (issue 9): a record edited to Promoting promotes
    # nothing git has not approved.
    ("a record saying Promoting without an approval in git: no stable apply",
     dataclasses.replace(AWAITING, phase=Phase.PROMOTING, promoting="promote"),
     obs(variants_present=True, variants_fingerprint=NEW, variants_ready=True),
     Phase.ANALYZING, [], [("2", "pending", "canary ready")]),
    ("a record saying 'rollback' to a spec stable never ran: no stable apply",
     dataclasses.replace(CANARY, phase=Phase.PROMOTING, promoting="rollback"),
     obs(variants_present=True, variants_fingerprint=NEW, stable_previous_fingerprint=NEWER),
     Phase.PROGRESSING, [], []),
    ("a record saying 'direct' while stable runs another spec: no stable apply",
     dataclasses.replace(CANARY, phase=Phase.PROMOTING, promoting="direct"),
     obs(variants_present=True, variants_fingerprint=NEW, bootstrap_direct=True),
     Phase.PROGRESSING, [], []),
    ("an interrupted direct deploy of two workloads is finished",
     dataclasses.replace(CANARY, phase=Phase.PROMOTING, promoting="direct"),
     obs(stable_fingerprint=None, bootstrap_direct=True, stable_partly_desired=True),
     Phase.PROMOTING, [Action.APPLY_STABLE], []),
    ("an approval is used once: the same revision again is a canary, not a promotion",
     dataclasses.replace(Record(APP, observed_tree="t1"), approvals_used=(R2,)),
     obs(approval=R2),
     Phase.PROGRESSING, [Action.APPLY_VARIANTS], [("2", "pending", "canary deployed")]),
    ("git back at what stable ran before: a direct rollback",
     Record(APP, observed_tree="t2"),
     obs(fingerprint=OLD, revision=R3, stable_fingerprint=NEW, stable_previous_fingerprint=OLD),
     Phase.PROMOTING, [Action.APPLY_STABLE], [("3", "pending", "rolling back")]),
    ("unchanged tree at stable: nothing to do",
     Record(APP, observed_tree="t2"), obs(fingerprint=OLD, stable_fingerprint=OLD),
     Phase.STABLE, [], []),
    ("replicas changed only: applied to stable directly",
     Record(APP, observed_tree="t1"), obs(fingerprint=OLD, stable_fingerprint=OLD),
     Phase.STABLE, [Action.APPLY_STABLE], []),
    ("invalid input: an error status, nothing applied",
     AWAITING, obs(problem="apps/x/canary.yaml: percentage: must be in (0, 100]",
                   problem_sha=R3),
     Phase.AWAITING, [], [("3", "error", "apps/x/canary.yaml")]),
])
def test_advance(name: str, record: Record, observation: Observation, phase: Phase,
                 actions: list[Action], statuses: list[tuple[str, str, str]]) -> None:
    decision = advance(record, observation, NOW)
    assert decision.record.phase == phase, name
    assert list(decision.actions) == actions, name
    assert states(decision) == statuses, name
    assert decision.record.observed_tree == observation.tree
    if statuses:
        assert decision.record.last_status == decision.statuses[-1]


def test_an_error_is_cleared_by_the_next_valid_commit() -> None:
    failed = advance(AWAITING, obs(problem="bad", problem_sha=R3), NOW).record
    assert failed.error == "bad"
    fixed = advance(failed, obs(variants_present=True, variants_fingerprint=NEW,
                                variants_ready=True), NOW).record
    assert fixed.error is None


def test_a_rewritten_sha_for_the_same_spec_moves_the_status_without_redeploying() -> None:
    decision = advance(AWAITING, obs(revision=R3, variants_present=True,
                                     variants_fingerprint=NEW, variants_ready=True), NOW)
    assert decision.actions == ()
    assert states(decision) == [("3", "success", "awaiting")]
    assert decision.record.canary_revision == R3


def test_the_analysis_is_due_after_the_warm_up_then_every_interval() -> None:
    timing = Analysis(warmup=60, interval=30)
    ready = dataclasses.replace(ANALYZING, ready_at=NOW)
    assert not analysis_due(ready, timing, NOW + 59)
    assert analysis_due(ready, timing, NOW + 60)
    analysed = advance(ready, obs(variants_present=True, variants_fingerprint=NEW,
                                  variants_ready=True, analysis=judged(100, 200)),
                       NOW + 60).record
    assert analysed.last_analysis == NOW + 60
    assert analysed.analysis is not None
    assert '"verdict": "pass"' in analysed.analysis
    assert not analysis_due(analysed, timing, NOW + 89)
    assert not analysis_due(AWAITING, timing, NOW + 1000)


def test_canary_start_time_is_kept_while_the_same_canary_runs() -> None:
    started = advance(Record(APP), obs(), NOW).record
    assert started.canary_started == NOW
    again = advance(started, obs(variants_present=True, variants_fingerprint=NEW), NOW + 30)
    assert again.record.canary_started == NOW


def test_waiting_phases_ask_for_a_quick_requeue() -> None:
    assert advance(Record(APP), obs(), NOW).waiting
    assert not advance(AWAITING, obs(variants_present=True, variants_fingerprint=NEW,
                                     variants_ready=True), NOW).waiting


def test_the_outbox_keeps_the_newest_status_per_commit_so_a_replay_never_goes_back() -> None:
    promoting = StatusNote(R2, StatusState.PENDING, "promoting")
    promoted = StatusNote(R2, StatusState.SUCCESS, "promoted")
    superseded = StatusNote(R1, StatusState.ERROR, "superseded")
    assert outbox((promoting, superseded, promoted)) == (superseded, promoted)
    assert outbox((promoted, promoting)) == (promoting,)  # the later decision wins


def test_the_outbox_is_bounded_when_the_sink_is_down_for_a_day() -> None:
    notes = tuple(StatusNote(Sha(f"{i:040x}"), StatusState.PENDING, "analysing")
                  for i in range(1000))
    kept = outbox(notes * 3)
    assert len(kept) == 64
    assert kept[-1] == notes[-1]


def test_a_status_says_what_was_applied_without_a_canary() -> None:
    decision = advance(CANARY, obs(uncanaried="HelmRelease podinfo"), NOW)
    assert decision.statuses
    for note in decision.statuses:
        assert note.description.endswith(
            " (HelmRelease podinfo: applied as written, not canaried)"), note
    refused = advance(CANARY, obs(uncanaried="HelmRelease podinfo", problem="bad"), NOW)
    assert all("not canaried" not in n.description for n in refused.statuses)


def test_variants_never_ready_fail_at_the_ready_timeout_with_the_reason() -> None:
    started = dataclasses.replace(CANARY, canary_started=NOW)
    waiting = obs(variants_present=True, variants_fingerprint=NEW, variants_ready=False,
                  ready_timeout=600)
    assert advance(started, waiting, NOW + 599).record.phase is Phase.PROGRESSING
    reason = "0/2 nodes are available: 2 node(s) didn't have free ports"
    failed = advance(started, dataclasses.replace(waiting, not_ready=reason), NOW + 600)
    assert failed.record.phase is Phase.FAILED
    (note,) = failed.statuses
    assert (note.state, note.description) == (
        StatusState.FAILURE, f"baseline and canary not ready after 600s: {reason}")
    auto = advance(started, dataclasses.replace(waiting, judgment_auto=True), NOW + 600)
    assert Action.COMMIT_REVERT in auto.actions
    assert "no reason reported" in auto.statuses[0].description
    # With judgment: auto the revert is asked again until git says so.
    again = advance(auto.record, dataclasses.replace(waiting, judgment_auto=True), NOW + 700)
    assert Action.COMMIT_REVERT in again.actions


def test_variants_refused_for_shared_state_say_why_once_and_apply_nothing() -> None:
    why = "apps/db/db.yml#1: StatefulSet db belongs to the headless Service db: ..."
    refused = advance(Record(APP, stable_revision=R1), obs(variants_refused=why), NOW)
    assert refused.actions == ()
    assert [(n.state, n.description) for n in refused.statuses] == [(StatusState.ERROR, why)]
    again = advance(refused.record, obs(variants_refused=why), NOW + 30)
    assert (again.actions, again.statuses) == ((), ())


STABLE = Record(APP, Phase.STABLE, observed_tree="t2", stable_revision=R2)
AT_STABLE = dict(stable_fingerprint=NEW)


def test_stable_drift_is_corrected_and_said_once_per_drift() -> None:
    seen = obs(**AT_STABLE, drift=("Deployment web spec.replicas 1 → 4",))
    first = advance(STABLE, seen, NOW)
    assert first.actions == (Action.APPLY_STABLE,)
    assert [(n.sha, n.state, n.description) for n in first.statuses] == [
        (R2, StatusState.SUCCESS, "drift corrected to 2222222: Deployment web spec.replicas "
                                  "1 → 4")]
    again = advance(first.record, seen, NOW + 300)  # the same drift back at the next resync
    assert (again.actions, again.statuses) == ((Action.APPLY_STABLE,), ())
    calm = advance(again.record, obs(**AT_STABLE, drift=()), NOW + 600)
    assert (calm.actions, calm.statuses, calm.record.drift) == ((), (), None)
    back = advance(calm.record, seen, NOW + 900)  # a new drift: said again
    assert len(back.statuses) == 1


def test_drift_report_applies_nothing_says_it_once_and_says_when_it_is_gone() -> None:
    seen = obs(**AT_STABLE, drift=("Deployment web spec.replicas 1 → 4",), drift_correct=False)
    first = advance(STABLE, seen, NOW)
    assert first.actions == ()
    assert states(first) == [("2", "error", "drift (drift")]
    assert advance(first.record, seen, NOW + 300).statuses == ()
    fixed = advance(first.record, obs(**AT_STABLE, drift=(), drift_correct=False), NOW + 600)
    assert fixed.actions == ()
    assert [n.description for n in fixed.statuses] == [
        "in sync: stable runs 2222222 as git says again"]


def test_unchecked_stable_is_left_alone() -> None:
    decision = advance(STABLE, obs(**AT_STABLE), NOW)
    assert (decision.actions, decision.statuses) == ((), ())


@pytest.mark.parametrize(("record", "said"), [
    (CANARY, True), (ANALYZING, True), (AWAITING, False)])
def test_a_deleted_variant_is_reapplied_and_the_canary_goes_on(record: Record,
                                                                said: bool) -> None:
    seen = obs(variants_present=True, variants_fingerprint=NEW, variants_ready=False,
               variants_drift=("Deployment web-baseline deleted",))
    decision = advance(record, seen, NOW + 10)
    assert Action.APPLY_VARIANTS in decision.actions
    assert decision.record.phase is record.phase  # nothing restarts: same spec, same evidence
    assert decision.record.evidence == record.evidence
    notes = [n.description for n in decision.statuses]
    assert notes == (["drift corrected, analysis goes on: Deployment web-baseline deleted"]
                     if said else [])  # a verdict is never overwritten by housekeeping
    assert advance(decision.record, seen, NOW + 11).statuses == ()  # once per drift
