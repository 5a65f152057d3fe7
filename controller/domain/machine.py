"""The per-app state machine: `advance(record, observation, now) -> (record, actions)`.

Pure: it reads what git wants and what the cluster runs, and says what to do. The record it
returns is stored in the cluster, so a restarted controller resumes where it stopped: a
promotion half done is finished, never mistaken for a reject.

The decisions, in order (SPEC §2-3):
- invalid input: an error status, nothing applied;
- a promotion in flight: finish it (apply stable, wait for its rollout, delete the variants);
- no stable yet: canary only (first deployment), or straight to stable with `bootstrap: direct`;
- live workloads another tool applied that already run git's spec (`adopt: true`): adopted;
- git equals stable: delete the variants if any (a reject); stable is never touched by it;
- git equals what stable ran before: a rollback, applied directly;
- an approval (`promote: <sha>`, the full hash) of exactly this canary revision, valid and
  not used before: promote;
- otherwise git holds a new spec: baseline and canary of the workloads that changed (refused
  when they would share state), replacing any older canary; not ready within `readyTimeout`,
  a failure with the pods' reason; once ready and past the warm-up, the analysis looks every
  interval until a pass (awaiting promotion), a fail, or the deadline (inconclusive).

The record is memory, never authority: a record that says Promoting (edited by hand, or left
by a promotion that git has since withdrawn) applies nothing to stable unless git still
justifies it — an approval, a rollback, or `bootstrap: direct`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum

from controller.domain.policy import Analysis
from controller.domain.sequential import Assessment, Verdict, summary, to_json
from controller.domain.types import AppName, Fingerprint, Phase, Sha, StatusState

NO_FINGERPRINT = Fingerprint("")
NO_SHA = Sha("")
USED_APPROVALS_KEPT = 32
OUTBOX_LIMIT = 64  # statuses kept for a sink that is down: the newest per commit


@dataclass(frozen=True)
class StatusNote:
    sha: Sha
    state: StatusState
    description: str


@dataclass(frozen=True)
class Owned:
    """An object the controller applied for an app: the only kind of object it deletes."""

    api_version: str
    kind: str
    namespace: str
    name: str
    role: str  # "stable", "variant", or "early" (created for a canary before its promotion)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Record:
    """What the controller remembers about an app, kept in the cluster between reconciles."""

    app: AppName
    phase: Phase = Phase.STABLE
    canary_revision: Sha | None = None  # the commit whose canary runs (statuses go there)
    canary_fingerprint: Fingerprint | None = None
    canary_started: float | None = None
    first_deployment: bool = False
    promoting: str | None = None  # "promote", "rollback" or "direct" while phase is Promoting
    stable_revision: Sha | None = None
    ready_at: float | None = None  # when the variants became ready: the warm-up starts
    last_analysis: float | None = None
    analysis: str | None = None  # the last assessment, as JSON (shown by status and metrics)
    evidence: str | None = None  # every look's increments, as `gitops-canary replay` input
    observed_tree: str | None = None  # the app folder's git tree last reconciled
    error: str | None = None
    last_status: StatusNote | None = None
    unposted: tuple[StatusNote, ...] = ()  # decided, not yet accepted by the status sink
    path: str | None = None  # the app's folder in the repository: it owns the app's name
    approvals_used: tuple[Sha, ...] = ()  # canary revisions promoted: an approval counts once
    # Every object the controller applied for the app; it deletes nothing else. None for a
    # record written before inventories existed (its objects are adopted on the next apply).
    inventory: tuple[Owned, ...] | None = ()
    drift: str | None = None  # the drift last said on a status: said once, not per resync


@dataclass(frozen=True)
class Observation:
    """What git wants and what the cluster runs, as the edges saw it just now."""

    tree: str  # git tree of the app folder at the tracked branch's head
    problem: str | None = None  # invalid or refused input: the message for the status
    problem_sha: Sha | None = None
    fingerprint: Fingerprint = NO_FINGERPRINT  # empty when there is a problem
    revision: Sha = NO_SHA  # the commit that last changed the workloads
    approval: str | None = None  # `promote:` of canary.yaml, when it names this revision
    bootstrap_direct: bool = False
    stable_exists: bool = False
    stable_fingerprint: str | None = None
    stable_previous_fingerprint: str | None = None
    stable_partly_desired: bool = False  # every stable workload missing or at `fingerprint`
    stable_ready: bool = False
    stable_replicas: int = 0
    variants_present: bool = False
    variants_fingerprint: str | None = None
    variants_ready: bool = False
    variant_replicas: int = 0
    analysis: Assessment | None = None  # made just now (when analysis_due said so)
    analysed_until: float | None = None  # the end of the look it adds (its queries' time)
    evidence: str | None = None  # the evidence it was made on (replay input, JSON)
    analysis_enabled: bool = True  # False when the controller has no Prometheus to ask
    propose_on_failure: bool = False  # open a promote request for a failed canary too
    approval_refused: str | None = None  # the approval is not by an approver / not signed
    judgment_auto: bool = False  # the controller commits the approval or the revert itself
    adoptable: bool = False  # live stable, not yet the controller's, equals git (adopt: true)
    uncanaried: str = ""  # objects that hide a workload (a HelmRelease): applied as written
    ready_timeout: float = 600.0  # variants not ready this long after their start: failure
    bare_pods: bool = False  # stable has bare Pods: a new spec replaces them (delete, create)
    variants_refused: str | None = None  # why the changed workloads may not get variants
    not_ready: str | None = None  # why, from their pods (read once the timeout has passed)
    warmup: float = 0.0
    deadline: float = 0.0
    # Where stable differs from git (None: not compared this time; empty: compared, in sync).
    drift: tuple[str, ...] | None = None
    drift_correct: bool = True  # `drift: correct` (else `report`)
    variants_drift: tuple[str, ...] = ()  # a variant deleted (or changed) by hand: re-applied


class Action(StrEnum):
    APPLY_STABLE = "apply-stable"  # pass-through objects, deferred configs and stable workloads
    APPLY_VARIANTS = "apply-variants"  # pass-through objects, baseline and canary
    DELETE_VARIANTS = "delete-variants"
    PROPOSE_PROMOTION = "propose-promotion"  # open/update the promote pull request (forges)
    WITHDRAW_PROMOTION = "withdraw-promotion"  # close it: superseded, rejected, or done
    COMMIT_APPROVAL = "commit-approval"  # judgment: auto, the analysis passed
    COMMIT_REVERT = "commit-revert"  # judgment: auto, the analysis failed


@dataclass(frozen=True)
class Decision:
    record: Record
    actions: tuple[Action, ...] = ()
    statuses: tuple[StatusNote, ...] = ()

    @property
    def waiting(self) -> bool:
        """True while the app is in a transition that the next reconcile should check soon."""
        return self.record.phase in (Phase.PROGRESSING, Phase.PROMOTING)


def analysis_due_at(record: Record, analysis: Analysis) -> float | None:
    """When the next analysis is due: after the warm-up, then once per interval."""
    if record.phase is not Phase.ANALYZING or record.ready_at is None:
        return None
    if record.last_analysis is None:
        return record.ready_at + analysis.warmup
    return record.last_analysis + analysis.interval


def analysis_due(record: Record, analysis: Analysis, now: float) -> bool:
    due = analysis_due_at(record, analysis)
    return due is not None and now >= due


def _short(sha: str | None) -> str:
    return (sha or "?")[:7]


def advance(record: Record, obs: Observation, now: float) -> Decision:
    decision = _decide(record, obs, now)
    refusal = obs.approval_refused
    moot = obs.stable_fingerprint == obs.fingerprint  # stable runs it already
    if refusal and obs.problem is None and not moot and (
            record.last_status is None or record.last_status.description != refusal):
        # An unauthorised approval changes nothing but the status that says so.
        decision = dataclasses.replace(decision, statuses=(
            *decision.statuses, StatusNote(obs.revision, StatusState.ERROR, refusal)))
    if obs.uncanaried and obs.problem is None:
        said = f" ({obs.uncanaried}: applied as written, not canaried)"
        decision = dataclasses.replace(decision, statuses=tuple(
            note if note.state is StatusState.ERROR or said in note.description
            else dataclasses.replace(note, description=note.description + said)
            for note in decision.statuses))
    new = dataclasses.replace(decision.record, observed_tree=obs.tree)
    if decision.statuses:
        new = dataclasses.replace(new, last_status=decision.statuses[-1])
    return dataclasses.replace(decision, record=new)


def _decide(record: Record, obs: Observation, now: float) -> Decision:
    if obs.problem is not None:
        sha = obs.problem_sha or obs.revision
        note = StatusNote(sha, StatusState.ERROR, obs.problem) if sha else None
        if record.error == obs.problem and record.last_status == note:
            return Decision(record)  # said once already: not again on every reconcile
        return Decision(dataclasses.replace(record, error=obs.problem),
                        statuses=(note,) if note else ())
    record = dataclasses.replace(record, error=None)
    fp, rev = obs.fingerprint, obs.revision

    approved = obs.approval == rev and obs.approval_refused is None and \
        rev not in record.approvals_used
    if record.phase is Phase.PROMOTING and record.canary_fingerprint == fp:
        if obs.stable_fingerprint == fp:
            return _finish_promotion(record, obs)
        if _justified(record.promoting, obs, approved):
            return Decision(record, (Action.APPLY_STABLE,))  # stopped before the apply: redo
        # Git does not (or no longer) justify it: decide afresh, as for any other record.
        record = dataclasses.replace(record, phase=Phase.PROGRESSING, promoting=None)
    if not obs.stable_exists:
        if obs.bootstrap_direct:
            return _promote(record, obs, "direct")
        if approved:
            return _promote(record, obs, "promote")
        return _canary(record, obs, now, first=True)
    if obs.adoptable and obs.stable_fingerprint is None:
        return _promote(record, obs, "adopt")  # already runs git's spec: take it as stable
    if obs.stable_fingerprint == fp:
        return _at_stable(record, obs)
    if obs.stable_previous_fingerprint == fp:
        return _promote(record, obs, "rollback")
    if approved:
        return _promote(record, obs, "promote")
    return _canary(record, obs, now, first=False)


def _justified(how: str | None, obs: Observation, approved: bool) -> bool:
    """Does git still justify a promotion the record says is under way?"""
    if how == "promote":
        return approved
    if how == "rollback":
        return obs.stable_previous_fingerprint == obs.fingerprint
    if how == "direct":
        return obs.bootstrap_direct and (not obs.stable_exists or obs.stable_partly_desired)
    if how == "adopt":
        return obs.adoptable
    return False


def _promote(record: Record, obs: Observation, how: str) -> Decision:
    actions = [Action.APPLY_STABLE]
    statuses = []
    old = record.canary_revision
    if how == "rollback" and old is not None and record.canary_fingerprint != obs.fingerprint:
        actions += [Action.DELETE_VARIANTS, Action.WITHDRAW_PROMOTION]
        statuses.append(StatusNote(old, StatusState.ERROR,
                                   f"superseded: {_short(obs.revision)} rolled stable back"))
    words = {"promote": "promoting: applying the canary's spec to stable",
             "rollback": "rolling back: stable returns to the spec it ran before",
             "direct": "deploying straight to stable (bootstrap: direct)",
             "adopt": "adopting: the live workloads already run this spec"}
    statuses.append(StatusNote(obs.revision, StatusState.PENDING, words[how]))
    return Decision(
        dataclasses.replace(record, phase=Phase.PROMOTING, promoting=how,
                            canary_revision=obs.revision, canary_fingerprint=obs.fingerprint),
        tuple(actions), tuple(statuses))


def _finish_promotion(record: Record, obs: Observation) -> Decision:
    if record.observed_tree != obs.tree:
        # Git moved on during the rollout without changing the pods (replicas, a Service):
        # apply that too before calling the promotion done, or it would be lost.
        return Decision(record, (Action.APPLY_STABLE,))
    if not obs.stable_ready:
        return Decision(record)
    revision = record.canary_revision or obs.revision
    replaced = "; its pods replaced (deleted and created)" if obs.bare_pods else ""
    words = {"promote": f"promoted: stable runs {_short(revision)} ({obs.stable_replicas} "
                        f"replicas){replaced}; baseline and canary deleted",
             "rollback": f"rolled back: stable runs {_short(revision)} again "
                         f"({obs.stable_replicas} replicas)",
             "direct": f"deployed to stable ({obs.stable_replicas} replicas)",
             "adopt": f"adopted: stable runs {_short(revision)} as it did "
                      f"({obs.stable_replicas} replicas), managed from now on"}
    used = record.approvals_used
    if record.promoting == "promote" and revision not in used:
        used = (*used, revision)[-USED_APPROVALS_KEPT:]
    done = dataclasses.replace(
        record, phase=Phase.STABLE, promoting=None, canary_revision=None, canary_fingerprint=None,
        canary_started=None, first_deployment=False, stable_revision=revision, ready_at=None,
        last_analysis=None, approvals_used=used)
    actions = ((Action.DELETE_VARIANTS,) if obs.variants_present else ()) + (
        Action.WITHDRAW_PROMOTION,)
    return Decision(done, actions, (StatusNote(revision, StatusState.SUCCESS,
                                               words[record.promoting or "promote"]),))


def _at_stable(record: Record, obs: Observation) -> Decision:
    stable = dataclasses.replace(record, phase=Phase.STABLE, promoting=None, canary_revision=None,
                                 canary_fingerprint=None, canary_started=None,
                                 first_deployment=False, ready_at=None, last_analysis=None)
    if obs.variants_present or record.canary_revision is not None:
        statuses: tuple[StatusNote, ...] = ()
        if record.canary_revision is not None and record.canary_fingerprint != obs.fingerprint:
            statuses = (StatusNote(record.canary_revision, StatusState.FAILURE,
                                   f"rejected: git is back at stable's spec "
                                   f"({_short(obs.revision)}); baseline and canary deleted"),)
        actions = ((Action.DELETE_VARIANTS,) if obs.variants_present else ()) + (
            Action.WITHDRAW_PROMOTION,)
        return Decision(stable, actions, statuses)
    # Git changed only what does not restart pods (replicas, pass-through objects): apply it.
    apply = (Action.APPLY_STABLE,) if record.observed_tree != obs.tree else ()
    if obs.drift is None:  # not compared with the cluster this time
        return Decision(stable, apply)
    return _drifted(stable, obs, apply)


def _drifted(record: Record, obs: Observation, apply: tuple[Action, ...]) -> Decision:
    """Stable compared with git: drift corrected (or only reported, `drift: report`), and
    said on the commit stable runs once per drift, not on every resync."""
    rev = _short(obs.revision)
    if not obs.drift:
        back = record.drift is not None and not obs.drift_correct  # someone fixed it by hand
        note = StatusNote(obs.revision, StatusState.SUCCESS,
                          f"in sync: stable runs {rev} as git says again")
        return Decision(dataclasses.replace(record, drift=None), apply, (note,) if back else ())
    what = "; ".join(obs.drift)
    said = record.drift == what
    record = dataclasses.replace(record, drift=what)
    if obs.drift_correct:
        note = StatusNote(obs.revision, StatusState.SUCCESS,
                          f"drift corrected to {rev}: {what}")
        return Decision(record, (Action.APPLY_STABLE,), () if said else (note,))
    note = StatusNote(obs.revision, StatusState.ERROR,
                      f"drift (drift: report, not corrected): {what}")
    return Decision(record, apply, () if said else (note,))


def _canary(record: Record, obs: Observation, now: float, first: bool) -> Decision:
    if obs.variants_refused is not None:  # shared state: nothing applied, said once
        note = StatusNote(obs.revision, StatusState.ERROR, obs.variants_refused)
        return Decision(record) if record.last_status == note else Decision(record, (), (note,))
    statuses: list[StatusNote] = []
    # A variant deleted or changed by hand is re-applied where it stands: the evidence so far
    # is of the same spec, so the analysis goes on.
    recreate = bool(obs.variants_drift) and record.canary_fingerprint == obs.fingerprint and \
        record.phase in (Phase.PROGRESSING, Phase.ANALYZING, Phase.AWAITING, Phase.FAILED)
    deployed = recreate or (obs.variants_present and
                            obs.variants_fingerprint == obs.fingerprint)
    if not deployed or record.canary_fingerprint != obs.fingerprint:
        if record.canary_revision is not None and record.canary_fingerprint != obs.fingerprint:
            pending = record.phase in (Phase.PROGRESSING, Phase.ANALYZING)
            statuses.append(StatusNote(record.canary_revision, StatusState.ERROR,
                                       f"superseded by {_short(obs.revision)}"
                                       + (" before a verdict" if pending else "")))
        what = (f"canary {obs.variant_replicas} replica(s), no baseline: first deployment"
                if first else f"baseline and canary {obs.variant_replicas} replica(s) each next "
                              f"to stable {obs.stable_replicas}")
        statuses.append(StatusNote(obs.revision, StatusState.PENDING, f"canary deployed: {what}"))
        started = record.canary_started if record.canary_fingerprint == obs.fingerprint else now
        replaced = record.canary_revision is not None and \
            record.canary_fingerprint != obs.fingerprint
        return Decision(
            dataclasses.replace(record, phase=Phase.PROGRESSING, canary_revision=obs.revision,
                                canary_fingerprint=obs.fingerprint, canary_started=started,
                                first_deployment=first, ready_at=None, last_analysis=None,
                                analysis=None, evidence=None),
            (Action.APPLY_VARIANTS, *((Action.WITHDRAW_PROMOTION,) if replaced else ())),
            tuple(statuses))

    actions = (Action.APPLY_VARIANTS,) if record.observed_tree != obs.tree or recreate else ()
    drift = "; ".join(obs.variants_drift) if recreate else None
    said, record = record.drift == drift, dataclasses.replace(record, drift=drift)
    decision = _in_flight(record, obs, now, first, actions)
    # Said on a pending status only: a verdict (awaiting promotion, failed) is never
    # overwritten by housekeeping; the log, an event and a metric say it there.
    if drift is None or said or record.phase not in (Phase.PROGRESSING, Phase.ANALYZING):
        return decision
    note = StatusNote(obs.revision, StatusState.PENDING,
                      f"drift corrected, analysis goes on: {drift}")
    return dataclasses.replace(decision, statuses=(note, *decision.statuses))


def _in_flight(record: Record, obs: Observation, now: float, first: bool,
               actions: tuple[Action, ...]) -> Decision:
    """Variants deployed: wait for them, analyse, judge; a verdict once is kept."""
    moved = record.canary_revision != obs.revision  # same spec under a rewritten sha
    record = dataclasses.replace(record, canary_revision=obs.revision, first_deployment=first)
    if record.phase is Phase.PROGRESSING:
        if not obs.variants_ready:
            started = record.canary_started if record.canary_started is not None else now
            if now < started + obs.ready_timeout:
                return Decision(record, actions)
            # Never ready (unschedulable, image pull, crash loop): a verdict, not a wait.
            what = "canary" if first else "baseline and canary"
            return Decision(dataclasses.replace(record, phase=Phase.FAILED),
                            (*actions, *((Action.COMMIT_REVERT,) if obs.judgment_auto else ())),
                            (StatusNote(obs.revision, StatusState.FAILURE,
                                        f"{what} not ready after {obs.ready_timeout:g}s: "
                                        f"{obs.not_ready or 'no reason reported'}"),))
        if first:
            return Decision(dataclasses.replace(record, phase=Phase.AWAITING),
                            (*actions, Action.PROPOSE_PROMOTION),
                            (_awaiting(obs.revision, "first deployment, nothing to compare "
                                                     "against"),))
        if not obs.analysis_enabled:  # no Prometheus: a person compares, as in the seed
            return Decision(dataclasses.replace(record, phase=Phase.AWAITING),
                            (*actions, Action.PROPOSE_PROMOTION),
                            (StatusNote(obs.revision, StatusState.PENDING,
                                        "baseline and canary ready, unanalysed (no Prometheus "
                                        "configured): compare them, then promote or revert"),))
        return Decision(
            dataclasses.replace(record, phase=Phase.ANALYZING, ready_at=now, last_analysis=None,
                                analysis=None, evidence=None), actions,
            (StatusNote(obs.revision, StatusState.PENDING,
                        f"canary ready: analysis starts after a {obs.warmup:g}s warm-up"),))
    if record.phase is Phase.ANALYZING and obs.analysis is not None:
        return _judged(record, obs, obs.analysis, now, actions)
    if obs.judgment_auto:
        # Until git says so (the commit may have lost a race with another push): again.
        if record.phase is Phase.AWAITING and record.analysis is not None:
            actions = (*actions, Action.COMMIT_APPROVAL)
        elif record.phase is Phase.FAILED:
            actions = (*actions, Action.COMMIT_REVERT)
    if moved and record.last_status is not None:
        note = dataclasses.replace(record.last_status, sha=obs.revision)
        return Decision(record, actions, (note,))
    return Decision(record, actions)


def _awaiting(revision: Sha, why: str) -> StatusNote:
    return StatusNote(revision, StatusState.SUCCESS,
                      f"awaiting promotion: {why}; approve with promote: {revision}")


def _judged(record: Record, obs: Observation, assessment: Assessment, now: float,
            actions: tuple[Action, ...]) -> Decision:
    started = (record.ready_at or now) + obs.warmup
    overdue = now >= started + obs.deadline
    text = summary(assessment, final=overdue)  # as it stands; with what comes next:
    awaiting, analysing = (summary(assessment, suffix=suffix)
                           for suffix in ("; awaiting promotion", "; analysing"))
    until = obs.analysed_until if obs.analysed_until is not None else now
    record = dataclasses.replace(record, last_analysis=until, analysis=_json(assessment),
                                 evidence=obs.evidence)
    auto_yes = (Action.COMMIT_APPROVAL,) if obs.judgment_auto else ()
    auto_no = (Action.COMMIT_REVERT,) if obs.judgment_auto else ()
    if assessment.verdict is Verdict.PASS:
        return Decision(dataclasses.replace(record, phase=Phase.AWAITING),
                        (*actions, Action.PROPOSE_PROMOTION, *auto_yes),
                        (StatusNote(obs.revision, StatusState.SUCCESS,
                                    awaiting),))
    propose = (Action.PROPOSE_PROMOTION,) if obs.propose_on_failure else ()
    if assessment.verdict in (Verdict.FAIL, Verdict.MARGINAL):
        return Decision(dataclasses.replace(record, phase=Phase.FAILED),
                        (*actions, *propose, *auto_no),
                        (StatusNote(obs.revision, StatusState.FAILURE, text),))
    if overdue:  # no decision by the deadline: inconclusive, never a pass
        return Decision(dataclasses.replace(record, phase=Phase.FAILED),
                        (*actions, *propose, *auto_no),
                        (StatusNote(obs.revision, StatusState.ERROR, text),))
    return Decision(record, actions,
                    (StatusNote(obs.revision, StatusState.PENDING, analysing),))


def _json(assessment: Assessment) -> str:
    return json.dumps(to_json(assessment), sort_keys=True)


def outbox(notes: tuple[StatusNote, ...]) -> tuple[StatusNote, ...]:
    """The statuses still to post, bounded: for each commit only its newest (a replay after a
    restart never takes a commit back to an older status), at most OUTBOX_LIMIT commits."""
    newest: dict[Sha, StatusNote] = {}
    for note in notes:
        newest.pop(note.sha, None)
        newest[note.sha] = note  # re-inserted: the order is that of the newest notes
    return tuple(newest.values())[-OUTBOX_LIMIT:]
