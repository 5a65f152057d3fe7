"""The per-app state machine: `advance(record, observation, now) -> (record, actions)`.

Pure: it reads what git wants and what the cluster runs, and says what to do. The record it
returns is stored in the cluster, so a restarted controller resumes where it stopped: a
promotion half done is finished, never mistaken for a reject.

The decisions, in order (SPEC §2-3):
- invalid input: an error status, nothing applied;
- a promotion in flight: finish it (apply stable, wait for its rollout, delete the variants);
- no stable yet: canary only (first deployment), or straight to stable with `bootstrap: direct`;
- git equals stable: delete the variants if any (a reject); stable is never touched by it;
- git equals what stable ran before: a rollback, applied directly;
- an approval (`promote: <sha>`) of exactly this canary revision: promote;
- otherwise git holds a new spec: baseline and canary, replacing any older canary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from controller.domain.types import AppName, Fingerprint, Phase, Sha, StatusState

NO_FINGERPRINT = Fingerprint("")
NO_SHA = Sha("")


@dataclass(frozen=True)
class StatusNote:
    sha: Sha
    state: StatusState
    description: str


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
    observed_tree: str | None = None  # the app folder's git tree last reconciled
    error: str | None = None
    last_status: StatusNote | None = None


@dataclass(frozen=True)
class Observation:
    """What git wants and what the cluster runs, as the edges saw it just now."""

    tree: str  # git tree of the app folder at the tracked branch's head
    problem: str | None = None  # invalid or refused input: the message for the status
    problem_sha: Sha | None = None
    fingerprint: Fingerprint = NO_FINGERPRINT  # empty when there is a problem
    revision: Sha = NO_SHA  # the commit that last changed the workloads
    approval: str | None = None  # `promote:` of canary.yaml
    bootstrap_direct: bool = False
    stable_exists: bool = False
    stable_fingerprint: str | None = None
    stable_previous_fingerprint: str | None = None
    stable_ready: bool = False
    stable_replicas: int = 0
    variants_present: bool = False
    variants_fingerprint: str | None = None
    variants_ready: bool = False
    variant_replicas: int = 0


class Action(StrEnum):
    APPLY_STABLE = "apply-stable"  # pass-through objects, deferred configs and stable workloads
    APPLY_VARIANTS = "apply-variants"  # pass-through objects, baseline and canary
    DELETE_VARIANTS = "delete-variants"


@dataclass(frozen=True)
class Decision:
    record: Record
    actions: tuple[Action, ...] = ()
    statuses: tuple[StatusNote, ...] = ()

    @property
    def waiting(self) -> bool:
        """True while the app is in a transition that the next reconcile should check soon."""
        return self.record.phase in (Phase.PROGRESSING, Phase.PROMOTING)


def _short(sha: str | None) -> str:
    return (sha or "?")[:7]


def advance(record: Record, obs: Observation, now: float) -> Decision:
    decision = _decide(record, obs, now)
    new = dataclasses.replace(decision.record, observed_tree=obs.tree)
    if decision.statuses:
        new = dataclasses.replace(new, last_status=decision.statuses[-1])
    return dataclasses.replace(decision, record=new)


def _decide(record: Record, obs: Observation, now: float) -> Decision:
    if obs.problem is not None:
        sha = obs.problem_sha or obs.revision
        return Decision(dataclasses.replace(record, error=obs.problem),
                        statuses=(StatusNote(sha, StatusState.ERROR, obs.problem),) if sha else ())
    record = dataclasses.replace(record, error=None)
    fp, rev = obs.fingerprint, obs.revision

    if record.phase is Phase.PROMOTING and record.canary_fingerprint == fp:
        return _finish_promotion(record, obs)

    approved = obs.approval is not None and rev.startswith(obs.approval)
    if not obs.stable_exists:
        if obs.bootstrap_direct:
            return _promote(record, obs, "direct")
        if approved:
            return _promote(record, obs, "promote")
        return _canary(record, obs, now, first=True)
    if obs.stable_fingerprint == fp:
        return _at_stable(record, obs)
    if obs.stable_previous_fingerprint == fp:
        return _promote(record, obs, "rollback")
    if approved:
        return _promote(record, obs, "promote")
    return _canary(record, obs, now, first=False)


def _promote(record: Record, obs: Observation, how: str) -> Decision:
    actions = [Action.APPLY_STABLE]
    statuses = []
    old = record.canary_revision
    if how == "rollback" and old is not None and record.canary_fingerprint != obs.fingerprint:
        actions.append(Action.DELETE_VARIANTS)
        statuses.append(StatusNote(old, StatusState.ERROR,
                                   f"superseded: {_short(obs.revision)} rolled stable back"))
    words = {"promote": "promoting: applying the canary's spec to stable",
             "rollback": "rolling back: stable returns to the spec it ran before",
             "direct": "deploying straight to stable (bootstrap: direct)"}
    statuses.append(StatusNote(obs.revision, StatusState.PENDING, words[how]))
    return Decision(
        dataclasses.replace(record, phase=Phase.PROMOTING, promoting=how,
                            canary_revision=obs.revision, canary_fingerprint=obs.fingerprint),
        tuple(actions), tuple(statuses))


def _finish_promotion(record: Record, obs: Observation) -> Decision:
    if obs.stable_fingerprint != obs.fingerprint:
        return Decision(record, (Action.APPLY_STABLE,))  # stopped before the apply: redo it
    if not obs.stable_ready:
        return Decision(record)
    revision = record.canary_revision or obs.revision
    words = {"promote": f"promoted: stable runs {_short(revision)} ({obs.stable_replicas} "
                        f"replicas); baseline and canary deleted",
             "rollback": f"rolled back: stable runs {_short(revision)} again "
                         f"({obs.stable_replicas} replicas)",
             "direct": f"deployed to stable ({obs.stable_replicas} replicas)"}
    done = dataclasses.replace(
        record, phase=Phase.STABLE, promoting=None, canary_revision=None, canary_fingerprint=None,
        canary_started=None, first_deployment=False, stable_revision=revision)
    actions = (Action.DELETE_VARIANTS,) if obs.variants_present else ()
    return Decision(done, actions, (StatusNote(revision, StatusState.SUCCESS,
                                               words[record.promoting or "promote"]),))


def _at_stable(record: Record, obs: Observation) -> Decision:
    stable = dataclasses.replace(record, phase=Phase.STABLE, promoting=None, canary_revision=None,
                                 canary_fingerprint=None, canary_started=None,
                                 first_deployment=False)
    if obs.variants_present or record.canary_revision is not None:
        statuses: tuple[StatusNote, ...] = ()
        if record.canary_revision is not None and record.canary_fingerprint != obs.fingerprint:
            statuses = (StatusNote(record.canary_revision, StatusState.FAILURE,
                                   f"rejected: git is back at stable's spec "
                                   f"({_short(obs.revision)}); baseline and canary deleted"),)
        actions = (Action.DELETE_VARIANTS,) if obs.variants_present else ()
        return Decision(stable, actions, statuses)
    # Git changed only what does not restart pods (replicas, pass-through objects): apply it.
    changed = record.observed_tree != obs.tree
    return Decision(stable, (Action.APPLY_STABLE,) if changed else ())


def _canary(record: Record, obs: Observation, now: float, first: bool) -> Decision:
    statuses: list[StatusNote] = []
    deployed = obs.variants_present and obs.variants_fingerprint == obs.fingerprint
    if not deployed or record.canary_fingerprint != obs.fingerprint:
        if record.canary_revision is not None and record.canary_fingerprint != obs.fingerprint:
            statuses.append(StatusNote(record.canary_revision, StatusState.ERROR,
                                       f"superseded by {_short(obs.revision)} before a verdict"))
        what = (f"canary {obs.variant_replicas} replica(s), no baseline: first deployment"
                if first else f"baseline and canary {obs.variant_replicas} replica(s) each next "
                              f"to stable {obs.stable_replicas}")
        statuses.append(StatusNote(obs.revision, StatusState.PENDING, f"canary deployed: {what}"))
        started = record.canary_started if record.canary_fingerprint == obs.fingerprint else now
        return Decision(
            dataclasses.replace(record, phase=Phase.PROGRESSING, canary_revision=obs.revision,
                                canary_fingerprint=obs.fingerprint, canary_started=started,
                                first_deployment=first),
            (Action.APPLY_VARIANTS,), tuple(statuses))

    actions = (Action.APPLY_VARIANTS,) if record.observed_tree != obs.tree else ()
    record = dataclasses.replace(record, canary_revision=obs.revision, first_deployment=first)
    if record.phase is Phase.PROGRESSING and not obs.variants_ready:
        return Decision(record, actions)
    if record.phase is Phase.AWAITING and record.last_status is not None and \
            record.last_status.sha == obs.revision:
        return Decision(record, actions)
    # Ready (or the same canary under a rewritten sha): it waits for a person's judgment.
    why = ("first deployment, nothing to compare against" if first
           else "baseline and canary ready")
    return Decision(dataclasses.replace(record, phase=Phase.AWAITING), actions,
                    (StatusNote(obs.revision, StatusState.SUCCESS,
                                f"awaiting promotion: {why}; add `promote: "
                                f"{_short(obs.revision)}` to canary.yaml"),))
