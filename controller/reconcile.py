"""One reconcile of every app: observe → decide → act → record, as a straight line.

Observe reads git (the app folder at the branch head) and the cluster (live stable, variants;
every `--resync`, and at once when the watch reports someone else's change (`changed`), also
what differs from git: drift); decide is the pure state machine; act
applies or deletes through the Kubernetes edge; record posts the commit statuses of every app
together at the end of the sweep and saves each app's record in the cluster. A failed stage
records its own reason: input errors and refused writes become an error status, transient
failures are logged and retried on the next reconcile with nothing half-done. Analysis looks
run in the background (`Looks`): the apps whose look ends within LOOK_WAIT are swept again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from controller import failpoints
from controller.analysis import Looks, recording
from controller.approvals import ForgeApprovers, Gate
from controller.apps import AppReader, Desired
from controller.domain.drift import Drift
from controller.domain.inventory import Plan, owned, plan
from controller.domain.machine import (
    Action,
    Decision,
    Observation,
    Record,
    StatusNote,
    advance,
    analysis_due,
    analysis_due_at,
    outbox,
)
from controller.domain.manifests import Manifest
from controller.domain.policy import POLICY_FILE, Policy
from controller.domain.render import (
    Key,
    Rendered,
    canaried,
    forget_previous,
    key_of,
    live_fingerprint,
    render,
    stateful_refusal,
    uncanaried,
    variant_replicas,
)
from controller.domain.replay import resume, to_document
from controller.domain.types import (
    ANNOTATION_FINGERPRINT,
    ANNOTATION_PREVIOUS_FINGERPRINT,
    ANNOTATION_REVISION,
    LABEL_VERSION,
    WORKLOAD_KINDS,
    AppName,
    KubeObject,
    Phase,
    Sha,
    StatusState,
    Variant,
)
from controller.drift import Resync, missing_variants, report, stable_drift, variant_drift
from controller.edges.git import AppFolder, GitSource
from controller.edges.kube import Kube, rollout_ready
from controller.edges.prometheus import Prometheus
from controller.edges.renderers import Tools
from controller.edges.statuses import Posting, StatusSink, post_all
from controller.errors import CanaryError, InputError, TransientError
from controller.followups import FollowUps
from controller.isolation import Claims, Crashes
from controller.promotions import PromotionRequests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    app: str
    record: Record
    actions: tuple[Action, ...] = ()
    skipped: bool = False
    next_analysis: float | None = None
    drift: tuple[Drift, ...] = ()  # corrected just now, or newly reported
    drift_corrected: bool = False
    saved: Record | None = None  # the record as the cluster has it, until the statuses go


class Claimed(NamedTuple):
    """A folder whose app it owns, to be reconciled this sweep."""

    folder: AppFolder
    app: AppName
    desired: Desired | InputError
    check: bool  # compare with the cluster (a resync is due)


@dataclass(frozen=True)
class Result:
    head: Sha | None
    outcomes: tuple[Outcome, ...] = ()
    error: str | None = None

    @property
    def waiting(self) -> bool:
        return any(Decision(o.record).waiting for o in self.outcomes)

    @property
    def next_analysis(self) -> float | None:
        """The earliest time an app's analysis is due (wall clock), if any."""
        due = [o.next_analysis for o in self.outcomes if o.next_analysis is not None]
        return min(due) if due else None


LOOK_WAIT = 5.0  # seconds a reconcile waits for the looks it started before deciding on them
ANALYSIS_WORKERS = 32  # Prometheus queries in flight at once, across all apps
# Apps reconciled at once: their time is spent waiting on the API server, git and forges.
WORKERS = min(8, 4 * (os.cpu_count() or 1))
CANARY_PHASES = (Phase.PROGRESSING, Phase.ANALYZING, Phase.AWAITING, Phase.FAILED)


def _running(live: KubeObject | None, desired: object) -> int:
    """The replicas a stable workload has, as statuses report them: a DaemonSet's scheduled
    pods, an autoscaled Deployment's current size; git's number before it exists."""
    if live is None:
        return 1 if desired is None else int(str(desired))
    status, spec = live.get("status") or {}, live.get("spec") or {}
    if live.get("kind") == "DaemonSet":
        return int(status.get("desiredNumberScheduled") or 0)
    if live.get("kind") == "Pod":
        return 1
    return int(spec.get("replicas", 1))


class Reconciler:
    def __init__(self, source: GitSource, kube: Kube, sink: StatusSink,
                 prometheus: Prometheus | None = None,
                 clock: Callable[[], float] = time.time,
                 promotions: PromotionRequests | None = None,
                 propose_on_failure: bool = False,
                 allowed_signers: Path | None = None,
                 forge_approvers: ForgeApprovers | None = None,
                 tools: Tools | None = None, prune: bool = True,
                 resync: float = 300.0, analysis_workers: int = ANALYSIS_WORKERS,
                 workers: int = WORKERS) -> None:
        self.source, self.kube, self.sink, self.clock = source, kube, sink, clock
        self.prune = prune  # False (--prune=false): nothing is ever deleted for leaving git
        self.prometheus = prometheus
        self.wake: Callable[[], None] = lambda: None  # the loop's: a look has ended
        self.looks = Looks(prometheus, analysis_workers, lambda: self.wake()) \
            if prometheus is not None else None
        self._looking: set[str] = set()  # folders whose look runs: judged in a second sweep
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="app")
        self.promotions, self.propose_on_failure = promotions, propose_on_failure
        self.reader = AppReader(source, tools)
        self.follow_ups = FollowUps(source, promotions)
        self.gate = Gate(source, self.reader, allowed_signers, forge_approvers)
        self._refused_claims: set[tuple[str, str]] = set()
        self.crashes = Crashes(source)  # by folder: an app's own unit of failure
        self.resync = Resync(resync)  # when each app is next compared with the cluster
        self._paths: dict[AppName, str] = {}  # each app's folder, as the last reconcile claimed
        self._waking: set[str] = set()  # folders whose comparison a timer will wake the loop for
        self._lock = threading.Lock()

    # --- the loop body ----------------------------------------------------------------------

    def reconcile(self) -> Result:
        try:
            head = self.source.fetch()
            records = self.kube.records()
        except CanaryError as error:
            log.error("reconcile skipped: %s", error)
            return Result(None, error=str(error))
        folders = self.source.apps(head)
        claims = Claims(records, {f.path for f in folders})
        self._looking = set()
        outcomes, complete = self._sweep(head, folders, records, claims)
        if self._looking:
            outcomes = self._judge_looks(head, folders, records, claims, outcomes)
        self._paths = claims.paths()
        if self.prune and complete:
            paths = {f.path for f in folders}
            for record in records.values():
                # A folder moved elsewhere took its app along this pass: not removed.
                if record.path is not None and record.path not in paths and \
                        not claims.taken(record.app):
                    self._removed(head, record)
        return Result(head, tuple(outcomes))

    def changed(self, app: str, key: Key, what: str) -> None:
        """Someone else changed (or deleted) one of an app's objects (a watch saw it, see
        `Kube.watch`): the app is compared with git on the next reconcile, which this wakes,
        so drift is corrected within seconds rather than at the next `--resync`."""
        path = self._paths.get(AppName(app))
        if path is None:
            return
        kind, namespace, name = key
        log.info("app %s: %s %s/%s %s by someone else: compared with git", app, kind,
                 namespace, name, what)
        delay = self.resync.soon(path)
        if delay <= 0:
            self.wake()
            return
        with self._lock:
            if path in self._waking:
                return
            self._waking.add(path)

        def wake() -> None:
            with self._lock:
                self._waking.discard(path)
            self.wake()

        timer = threading.Timer(delay, wake)
        timer.daemon = True
        timer.start()

    def _judge_looks(self, head: Sha, folders: list[AppFolder], records: dict[AppName, Record],
                     claims: Claims, outcomes: list[Outcome]) -> list[Outcome]:
        """Looks started this pass run in the background: those that end within LOOK_WAIT
        are judged now, in a second sweep of just their apps; the rest on a later pass."""
        assert self.looks is not None
        self.looks.wait([o.app for o in outcomes if o.record.path in self._looking], LOOK_WAIT)
        done = {AppName(o.app): o for o in outcomes}
        latest = {**records, **{app: o.record for app, o in done.items()}}
        again, _ = self._sweep(head, [f for f in folders if f.path in self._looking], latest,
                               claims)
        done.update({AppName(o.app): o for o in again})
        return list(done.values())

    def _sweep(self, head: Sha, folders: list[AppFolder], records: dict[AppName, Record],
               claims: Claims) -> tuple[list[Outcome], bool]:
        """Claim every folder's app in path order, reconcile the claimed apps in the worker
        pool, then post every status: (outcomes, whether every folder was reconciled; only
        then may a missing one be pruned)."""
        outcomes: list[Outcome] = []
        complete = True
        work: list[Claimed] = []
        for folder in folders:
            if self.crashes.backing_off(folder):
                complete = False
                continue
            try:
                claimed = self._claim(head, folder, claims)
            except Exception as error:  # one app's failure is that app's, never the loop's
                self.crashes.crashed(head, folder, error, self.sink)
                complete = False
                continue
            if isinstance(claimed, Claimed):
                work.append(claimed)
            else:
                self.crashes.cleared(folder)
                if claimed is not None:
                    outcomes.append(claimed)
        futures = [self._pool.submit(self._reconcile_app, head, c, records) for c in work]
        for claimed, future in zip(work, futures, strict=True):
            try:
                outcomes.append(future.result())
            except Exception as error:
                self.crashes.crashed(head, claimed.folder, error, self.sink)
                complete = False
                continue
            self.crashes.cleared(claimed.folder)
        return self._post(outcomes), complete

    def _removed(self, head: Sha, record: Record) -> None:
        """An app folder gone from git: the objects its inventory names (and that no other
        app's label claims) are deleted, then its record; a status on the commit says so.
        Safe to repeat: an object already gone is skipped, the record goes last."""
        try:
            gone = [o for o in record.inventory or ()
                    if self.kube.delete(o.key, app=record.app, api_version=o.api_version)]
            self.sink.post(record.app, head, StatusState.SUCCESS,
                           f"pruned: {record.path}/ left git; {len(gone)} object(s) deleted")
            self.kube.delete_record(record.app)
            log.info("app %s: its folder %s left git: %d object(s) and the record deleted",
                     record.app, record.path, len(gone))
        except CanaryError as error:
            log.error("app %s: pruning after its folder left git: %s", record.app, error)

    def _claim(self, head: Sha, folder: AppFolder, claims: Claims) -> Claimed | Outcome | None:
        """In path order, before any app is reconciled: skip an app unchanged in git with
        nothing in flight (an Outcome), refuse a folder claiming another's app name (None),
        or say what the folder's app is (Claimed)."""
        prior = claims.by_path.get(folder.path)
        check = self.resync.due(folder.path)  # compare with the cluster (drift)
        if prior is not None and prior.observed_tree == folder.inputs and prior.error is None \
                and prior.phase is Phase.STABLE and not prior.unposted and not check:
            claims.take(prior.app, folder.path)
            return Outcome(prior.app, prior, skipped=True)  # unchanged in git, nothing in flight
        try:
            desired: Desired | InputError = self._desired(head, folder)
        except InputError as error:
            desired = error
        app = AppName(desired.policy.app if isinstance(desired, Desired) else folder.name)
        owner = claims.owner(app, folder.path)
        if owner is not None:
            self._refuse_claim(head, folder, app, owner)
            return None  # the app's record and objects are its owner's: nothing changes
        claims.take(app, folder.path)
        return Claimed(folder, app, desired, check)

    def _reconcile_app(self, head: Sha, claimed: Claimed,
                       records: dict[AppName, Record]) -> Outcome:
        """One app, start to end: apps run side by side in the worker pool, each at most
        once at a time (a reconcile claims every folder once)."""
        started = time.monotonic()
        folder, app, desired, check = claimed
        record = dataclasses.replace(records.get(app) or Record(app=app), path=folder.path)
        try:
            now = self.clock()
            with self.kube.fresh() if check else contextlib.nullcontext():
                observation, rendered, variants, drifts = self._observe(
                    head, folder, desired, record, now, check)
            decision = advance(record, observation, now)
            outcome = self._act(head, app, record, decision, rendered, desired, variants)
            outcome = self._drifted(outcome, record, drifts, rendered)
            if check:
                self.resync.done(folder.path)
            self.follow_ups.run(app, head, folder, decision, outcome.record)
        except TransientError as error:
            log.warning("app %s: %s (retrying on the next reconcile)", app, error)
            return Outcome(app, record)
        except CanaryError as error:  # a refusal no stage turned into a status: log, go on
            log.error("app %s: %s", app, error)
            return Outcome(app, record)
        log.info("app %s: phase %s, actions %s (%.0f ms)", app, outcome.record.phase,
                 ",".join(outcome.actions) or "none", (time.monotonic() - started) * 1000)
        if isinstance(desired, Desired):
            due = analysis_due_at(outcome.record, desired.policy.analysis)
            if due is not None and self.looks is not None and self.looks.running(app):
                due = self.clock() + 1.0  # its end wakes the loop; this is the fallback
            outcome = dataclasses.replace(outcome, next_analysis=due)
        return outcome

    def _drifted(self, outcome: Outcome, record: Record, drifts: list[Drift],
                 rendered: Rendered | None) -> Outcome:
        """Drift acted on: a log line and an event for each correction, and for a drift only
        reported (`drift: report`) once, when first seen."""
        corrected = any(a in (Action.APPLY_STABLE, Action.APPLY_VARIANTS)
                        for a in outcome.actions)
        if not drifts or rendered is None or \
                (not corrected and outcome.record.drift == record.drift):
            return outcome
        versions = {key_of(o): str(o.get("apiVersion", "v1")) for o in (
            *rendered.passthrough, *rendered.deferred, *rendered.stable, *rendered.baseline,
            *rendered.canary)}
        report(self.kube, outcome.app, drifts, corrected, versions)
        return dataclasses.replace(outcome, drift=tuple(drifts), drift_corrected=corrected)

    def _refuse_claim(self, head: Sha, folder: AppFolder, app: AppName, owner: str) -> None:
        """A folder claiming an app name another folder holds: an error status on the commit
        that last changed it (once per tree), and nothing else."""
        if (folder.inputs, app) in self._refused_claims:
            return
        where = f"{folder.path}/{POLICY_FILE}" if folder.path else POLICY_FILE
        message = (f"{where}: app: the name {app} belongs to {owner or 'the repository root'}; "
                   f"choose another name")
        log.error("app %s: %s", app, message)
        try:
            sha = self.source.last_change(head, folder.path)
            self.sink.post(app, sha, StatusState.ERROR, message)
        except CanaryError as error:
            log.warning("app %s: posting the refusal: %s (again on the next reconcile)", app,
                        error)
            return
        self._refused_claims.add((folder.inputs, app))

    # --- observe ----------------------------------------------------------------------------

    def _desired(self, head: Sha, folder: AppFolder) -> Desired:
        return self.reader.desired(head, folder)

    def _observe(self, head: Sha, folder: AppFolder, desired: Desired | InputError,
                 record: Record, now: float, check: bool
                 ) -> tuple[Observation, Rendered | None, list[KubeObject], list[Drift]]:
        if isinstance(desired, InputError):
            return Observation(tree=folder.inputs, problem=str(desired),
                               problem_sha=self.source.last_change(head, folder.path)), \
                None, [], []
        try:
            self.kube.admit(m.obj for m in desired.manifests)
        except CanaryError as error:
            if error.transient:
                raise
            # The folder's last change brought the refused object in (a Service, say, that
            # changes no workload and so no canary revision).
            return Observation(tree=folder.inputs, problem=str(error),
                               problem_sha=self.source.last_change(head, folder.path)), \
                None, [], []
        live: dict[Key, KubeObject] = {}
        for m in desired.manifests:
            if m.kind in WORKLOAD_KINDS or m.kind in ("ConfigMap", "Secret"):
                found = self.kube.get(m.key, m.obj["apiVersion"])
                if found is not None:
                    found.setdefault("kind", m.kind)
                    live[m.key] = found
        policy, manifests, fp = desired.policy, desired.manifests, desired.fingerprint
        workloads = canaried(manifests, policy.direct)
        stable = [live.get(m.key) for m in workloads]
        annotations = [((s or {}).get("metadata") or {}).get("annotations") or {}
                       for s in stable]
        # Who may approve is the policy of the revision stable runs, never the one approved;
        # the baseline is that revision's spec, as git has it.
        revisions = {str(a.get(ANNOTATION_REVISION) or "")
                     for a, s in zip(annotations, stable, strict=True) if s is not None} - {""}
        stable_revision = Sha(revisions.pop()) if len(revisions) == 1 else record.stable_revision
        stable_fingerprint = live_fingerprint(live, manifests, policy.direct)
        at_stable = self.reader.manifests_at(stable_revision, folder) \
            if stable_revision and any(stable) and stable_fingerprint != fp else None
        rendered = render(policy, manifests, live, desired.revision, at_stable)
        judged = [m for m in workloads if m.key in rendered.moving]  # those with variants
        moving = [a for a, s in zip(annotations, stable, strict=True)
                  if s is not None and a.get(ANNOTATION_FINGERPRINT) != fp]
        previous = {a.get(ANNOTATION_PREVIOUS_FINGERPRINT) for a in moving}
        variants = self._variants(record, policy)
        canaries = [v for v in variants if v["kind"] in WORKLOAD_KINDS
                    and v["metadata"].get("labels", {}).get(LABEL_VERSION) == Variant.CANARY]
        replicas = [m.obj.get("spec", {}).get("replicas") for m in workloads]
        sizes = [int(o["spec"]["replicas"]) for o in rendered.canary  # as rendered: HPA-aware
                 if o["kind"] in WORKLOAD_KINDS and "replicas" in (o.get("spec") or {})]
        drift: list[Drift] | None = None  # stable's, when compared (unchanged app, resync)
        if check and record.phase is Phase.STABLE and not variants and \
                stable_fingerprint == fp:
            drift = stable_drift(self.kube, rendered, live, manifests)
        lost: list[Drift] = []  # variants deleted (or changed) while the canary runs
        if record.phase in CANARY_PHASES and record.canary_fingerprint == fp and \
                record.inventory is not None:
            lost = missing_variants(rendered, variants) + (
                variant_drift(self.kube, rendered, variants) if check else [])
        governing = self.reader.policy_at(stable_revision, folder) if stable_revision \
            else policy if not any(stable) else None
        gate = self.gate.check(head, desired, governing, stable_revision)
        observation = Observation(
            tree=folder.inputs,
            fingerprint=fp,
            revision=desired.revision,
            approval=gate.approval,
            bootstrap_direct=policy.bootstrap == "direct",
            stable_exists=any(s is not None for s in stable),
            stable_fingerprint=stable_fingerprint,
            stable_previous_fingerprint=previous.pop() if len(previous) == 1 else None,
            stable_partly_desired=not moving,
            stable_ready=bool(stable) and all(rollout_ready(s) for s in stable),
            stable_replicas=sum(_running(s, r) for s, r in zip(stable, replicas, strict=True)),
            variants_present=bool(variants),
            variants_fingerprint=(canaries[0]["metadata"].get("annotations") or {}).get(
                ANNOTATION_FINGERPRINT) if canaries else None,
            variants_ready=bool(canaries) and not any(d.changes == ("deleted",) for d in lost)
            and all(rollout_ready(v) for v in variants if v["kind"] in WORKLOAD_KINDS),
            variant_replicas=sizes[0] if sizes else variant_replicas(None, policy.percentage),
            analysis_enabled=self.prometheus is not None,
            propose_on_failure=self.propose_on_failure,
            approval_refused=gate.refusal,
            judgment_auto=(governing or policy).judgment == "auto",
            adoptable=policy.adopt and self._adoptable(rendered, workloads, live),
            uncanaried=uncanaried(manifests),
            ready_timeout=policy.ready_timeout,
            bare_pods=any(m.kind == "Pod" for m in workloads),
            variants_refused=stateful_refusal(policy, manifests, rendered.moving),
            warmup=policy.analysis.warmup,
            deadline=policy.analysis.deadline,
            drift=None if drift is None else tuple(str(d) for d in drift),
            drift_correct=policy.drift == "correct",
            variants_drift=tuple(str(d) for d in lost),
        )
        observation = self._overdue(record, observation, variants, policy, now)
        if self.looks is not None and analysis_due(record, policy.analysis, now):
            observation = self._look(self.looks, record, observation, desired, judged, now)
        return observation, rendered, variants, [*(drift or ()), *lost]

    def _overdue(self, record: Record, observation: Observation, variants: list[KubeObject],
                 policy: Policy, now: float) -> Observation:
        """Variants past their readyTimeout: why, in their pods' words (read only then)."""
        started = record.canary_started if record.canary_started is not None else now
        if record.phase is not Phase.PROGRESSING or observation.variants_ready or \
                now < started + policy.ready_timeout:
            return observation
        return dataclasses.replace(observation, not_ready=self.kube.pod_problems(
            v for v in variants if v["kind"] in WORKLOAD_KINDS))

    def _look(self, looks: Looks, record: Record, observation: Observation, desired: Desired,
              judged: list[Manifest], now: float) -> Observation:
        """One look: what the judged workloads' variants served since the last, added to the
        evidence the record keeps, and the assessment of it all. Started now, it is judged
        once it has ended (in this reconcile's second sweep, or a later reconcile)."""
        policy = desired.policy
        since = record.last_analysis or record.ready_at or now
        key = (record.canary_revision, record.canary_fingerprint, since,
               tuple(m.key for m in judged))
        taken = looks.take(policy.app, key, policy, [(m.kind, m.name) for m in judged], since,
                           now, [m.key[1] for m in judged])
        if taken is None:
            self._looking.add(desired.folder.path)
            return observation
        steps, until = taken
        recorded = resume(record.evidence, recording(policy, policy.app, desired.revision))
        recorded = recorded.add(steps).bounded()
        return dataclasses.replace(observation, analysis=recorded.assess(), analysed_until=until,
                                   evidence=json.dumps(to_document(recorded), sort_keys=True))

    def _adoptable(self, rendered: Rendered, workloads: list[Manifest],
                   live: dict[Key, KubeObject]) -> bool:
        """Live workloads another tool applied (none carries the controller's fingerprint)
        that already run git's spec: the server's dry run of git's stable objects gives the
        specs they have, defaults and all."""
        stable = {key_of(o): o for o in rendered.stable}
        found = [live.get(m.key) for m in workloads]
        if not found or any(f is None or ANNOTATION_FINGERPRINT in (
                (f.get("metadata") or {}).get("annotations") or {}) for f in found):
            return False
        for m, current in zip(workloads, found, strict=True):
            assert current is not None
            try:
                would = self.kube.dry_run(stable[m.key])
            except CanaryError:
                return False
            if would.get("spec") != current.get("spec"):
                return False
        return True

    def _variants(self, record: Record, policy: Policy) -> list[KubeObject]:
        """The app's live variants: those its inventory records (found by label for a record
        from before inventories)."""
        if record.inventory is None:
            return self.kube.variants(policy.namespace, policy.app)
        return self.kube.objects(o for o in record.inventory if o.role == "variant")

    # --- act and record ---------------------------------------------------------------------

    def _act(self, head: Sha, app: AppName, record: Record, decision: Decision,
             rendered: Rendered | None, desired: Desired | InputError,
             variants: list[KubeObject]) -> Outcome:
        # Write-ahead: the intent (say, Promoting), the objects about to be applied and the
        # statuses to post are in the cluster before the first write, so a controller killed
        # mid-way resumes instead of guessing, deletes only what it recorded, and a status
        # the sink did not take is posted on the next reconcile.
        statuses = decision.statuses
        new_record = decision.record
        writes = self._plan(record, decision, rendered, desired, variants)
        # The new tree counts as done only once its writes are: an apply that fails (or a
        # kill) leaves the old tree in the record, so the next reconcile applies it again.
        intent = dataclasses.replace(new_record, last_status=record.last_status,
                                     observed_tree=record.observed_tree,
                                     unposted=outbox(record.unposted + statuses))
        try:
            if writes is not None:
                # Stable's objects too, though a canary does not write them yet: a workload
                # someone else runs is refused now, not at its promotion.
                self.kube.claim([*writes.applies, *(rendered.stable if rendered else ())],
                                {o.key for o in record.inventory or ()},
                                adopt_own=record.inventory is None, app=app,
                                adopt=isinstance(desired, Desired) and desired.policy.adopt)
                intent = dataclasses.replace(intent, inventory=writes.intent)
                new_record = dataclasses.replace(new_record, inventory=writes.after)
            if intent != record:
                self.kube.save_record(intent)
                failpoints.hit("record-saved")
            if writes is not None:
                self._perform(app, writes)
        except CanaryError as error:
            if error.transient:
                raise
            log.error("app %s: %s", app, error)
            # On the commit that brought the refused change: the folder's last one.
            sha = self.source.last_change(head, desired.folder.path) \
                if isinstance(desired, Desired) else None
            statuses = (StatusNote(sha, StatusState.ERROR, str(error)),) if sha else ()
            # Back to what was true before this decision, plus the reason it failed; the
            # inventory keeps whatever may have been written.
            inventory = intent.inventory if writes is not None else record.inventory
            new_record = dataclasses.replace(record, error=str(error), inventory=inventory,
                                             last_status=statuses[-1] if statuses else None)
            intent = dataclasses.replace(new_record, last_status=record.last_status,
                                         unposted=outbox(record.unposted + statuses))
            self.kube.save_record(intent)
        return Outcome(app, dataclasses.replace(new_record, unposted=intent.unposted),
                       decision.actions, saved=intent)

    def _post(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Every app's outbox, posted together (one notes push for all; forge posts in
        parallel), then each record saved once with what is left. A sink that is down keeps
        an app's statuses from the first it did not take; a status it refuses for good is
        dropped with a log line."""
        postings = [(i, note) for i, o in enumerate(outcomes) if o.saved is not None
                    for note in o.record.unposted]
        errors = post_all(self.sink, [Posting(outcomes[i].app, n.sha, n.state, n.description)
                                      for i, n in postings])
        failed: dict[int, list[tuple[StatusNote, CanaryError | None]]] = {}
        for (i, note), error in zip(postings, errors, strict=True):
            failed.setdefault(i, []).append((note, error))
        done = []
        for i, outcome in enumerate(outcomes):
            if outcome.saved is None:
                done.append(outcome)
                continue
            posted: list[StatusNote] = []
            left: list[StatusNote] = []
            for note, refused in failed.get(i, []):
                if refused is None:
                    failpoints.hit("status-posted")
                    posted.append(note)
                elif refused.transient:
                    log.warning("app %s: status on %s not posted yet: %s", outcome.app,
                                note.sha[:7], refused)
                    left.append(note)
                else:
                    log.error("app %s: status on %s refused, dropped: %s", outcome.app,
                              note.sha[:7], refused)
            record = dataclasses.replace(outcome.record, unposted=tuple(left))
            if posted:
                record = dataclasses.replace(record, last_status=posted[-1])
            try:
                if record != outcome.saved:
                    self.kube.save_record(record)
                    failpoints.hit("record-saved")
            except CanaryError as error:  # the next reconcile posts (or skips) them again
                log.warning("app %s: saving its record after the statuses: %s", outcome.app,
                            error)
                record = outcome.saved
            done.append(dataclasses.replace(outcome, record=record, saved=None))
        return done

    def _plan(self, record: Record, decision: Decision, rendered: Rendered | None,
              desired: Desired | InputError, variants: list[KubeObject]) -> Plan | None:
        if rendered is None or not isinstance(desired, Desired):
            return None
        if decision.record.promoting == "rollback":
            rendered = dataclasses.replace(rendered, stable=forget_previous(rendered.stable))
        # A record from before inventories: the variants found by label are the app's.
        inventory = record.inventory if record.inventory is not None else tuple(
            owned(v, "variant") for v in variants)
        return plan(decision.actions, rendered, inventory, decision.record.first_deployment,
                    {m.key for m in desired.manifests}, self.prune and desired.policy.prune)

    def _perform(self, app: AppName, writes: Plan) -> None:
        for step in writes.steps:
            if step.apply:
                self.kube.apply(step.apply)
                failpoints.hit("apply")
            for gone in step.delete:
                self.kube.delete(gone.key, app=app, api_version=gone.api_version)
                failpoints.hit("delete")
        # Promote requests and auto-judgment commits follow (FollowUps), after the statuses.
