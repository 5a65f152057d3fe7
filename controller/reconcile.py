"""One reconcile of every app: observe → decide → act → record, as a straight line.

Observe reads git (the app folder at the branch head) and the cluster (live stable, variants);
decide is the pure state machine; act applies or deletes through the Kubernetes edge; record
posts commit statuses and saves the app's record in the cluster. A failed stage records its own
reason: input errors and refused writes become an error status, transient failures are logged
and retried on the next reconcile with nothing half-done.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.analysis import analyze
from controller.apps import AppReader, Desired
from controller.domain.machine import (
    Action,
    Decision,
    Observation,
    Record,
    StatusNote,
    advance,
    analysis_due,
    analysis_due_at,
)
from controller.domain.policy import POLICY_FILE, Policy, with_approval
from controller.domain.render import (
    Key,
    Rendered,
    forget_previous,
    key_of,
    live_fingerprint,
    render,
    variant_replicas,
)
from controller.domain.types import (
    ANNOTATION_FINGERPRINT,
    ANNOTATION_PREVIOUS_FINGERPRINT,
    LABEL_VERSION,
    WORKLOAD_KINDS,
    AppName,
    KubeObject,
    Phase,
    Sha,
    StatusState,
    Variant,
)
from controller.edges.git import AppFolder, GitSource
from controller.edges.kube import Kube, rollout_ready
from controller.edges.prometheus import Prometheus
from controller.edges.statuses import StatusSink
from controller.errors import ApiError, CanaryError, InputError, TransientError
from controller.promotions import PromotionRequests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    app: str
    record: Record
    actions: tuple[Action, ...] = ()
    skipped: bool = False
    next_analysis: float | None = None


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


class Reconciler:
    def __init__(self, source: GitSource, kube: Kube, sink: StatusSink,
                 prometheus: Prometheus | None = None,
                 clock: Callable[[], float] = time.time,
                 promotions: PromotionRequests | None = None,
                 propose_on_failure: bool = False,
                 allowed_signers: Path | None = None) -> None:
        self.source, self.kube, self.sink, self.clock = source, kube, sink, clock
        self.prometheus = prometheus
        self.promotions, self.propose_on_failure = promotions, propose_on_failure
        self.allowed_signers = allowed_signers
        self.reader = AppReader(source)

    # --- the loop body ----------------------------------------------------------------------

    def reconcile(self) -> Result:
        try:
            head = self.source.fetch()
            records = self.kube.records()
        except CanaryError as error:
            log.error("reconcile skipped: %s", error)
            return Result(None, error=str(error))
        outcomes = []
        seen: dict[str, str] = {}
        by_path = {r.path: r for r in records.values() if r.path is not None}
        for folder in self.source.apps(head):
            outcomes.append(self._reconcile_app(head, folder, records, by_path.get(folder.path),
                                                seen))
        return Result(head, tuple(outcomes))

    def _reconcile_app(self, head: Sha, folder: AppFolder, records: dict[AppName, Record],
                       prior: Record | None, seen: dict[str, str]) -> Outcome:
        started = time.monotonic()
        if prior is not None and prior.observed_tree == folder.tree and prior.error is None \
                and prior.phase is Phase.STABLE and not prior.unposted:
            seen[prior.app] = folder.path
            return Outcome(prior.app, prior, skipped=True)  # unchanged in git, nothing in flight
        try:
            desired: Desired | InputError = self._desired(head, folder)
        except InputError as error:
            desired = error
        app = AppName(desired.policy.app if isinstance(desired, Desired) else folder.name)
        if app in seen:
            desired = InputError(f"{folder.path}/{POLICY_FILE}", "app",
                                 f"app {app} is already defined in {seen[app]}")
        seen[app] = folder.path
        record = dataclasses.replace(records.get(app) or Record(app=app), path=folder.path)

        try:
            now = self.clock()
            observation, rendered = self._observe(head, folder, desired, record, now)
            decision = advance(record, observation, now)
            outcome = self._act(app, record, decision, rendered, desired)
            self._follow_up(app, head, folder, decision, outcome.record)
        except TransientError as error:
            log.warning("app %s: %s (retrying on the next reconcile)", app, error)
            return Outcome(app, record)
        log.info("app %s: phase %s, actions %s (%.0f ms)", app, outcome.record.phase,
                 ",".join(outcome.actions) or "none", (time.monotonic() - started) * 1000)
        if isinstance(desired, Desired):
            due = analysis_due_at(outcome.record, desired.policy.analysis)
            outcome = dataclasses.replace(outcome, next_analysis=due)
        return outcome

    # --- observe ----------------------------------------------------------------------------

    def _desired(self, head: Sha, folder: AppFolder) -> Desired:
        return self.reader.desired(head, folder)

    def _observe(self, head: Sha, folder: AppFolder, desired: Desired | InputError,
                 record: Record, now: float) -> tuple[Observation, Rendered | None]:
        if isinstance(desired, InputError):
            return Observation(tree=folder.tree, problem=str(desired),
                               problem_sha=self.source.last_change(head, folder.path)), None
        try:
            self.kube.admit(m.obj for m in desired.manifests)
        except CanaryError as error:
            if error.transient:
                raise
            return Observation(tree=folder.tree, problem=str(error),
                               problem_sha=desired.revision), None
        live: dict[Key, KubeObject] = {}
        for m in desired.manifests:
            if m.kind in WORKLOAD_KINDS or m.kind in ("ConfigMap", "Secret"):
                found = self.kube.get(m.key, m.obj["apiVersion"])
                if found is not None:
                    found.setdefault("kind", m.kind)
                    live[m.key] = found
        policy, manifests = desired.policy, desired.manifests
        rendered = render(policy, manifests, live, desired.revision)
        workloads = [m for m in manifests if m.kind in WORKLOAD_KINDS]
        stable = [live.get(m.key) for m in workloads]
        variants = self.kube.variants(policy.namespace, policy.app)
        canaries = [v for v in variants if v["kind"] in WORKLOAD_KINDS
                    and v["metadata"].get("labels", {}).get(LABEL_VERSION) == Variant.CANARY]
        annotations = (stable[0] or {}).get("metadata", {}).get("annotations") or {} \
            if stable else {}
        replicas = [m.obj.get("spec", {}).get("replicas") for m in workloads]
        observation = Observation(
            tree=folder.tree,
            fingerprint=desired.fingerprint,
            revision=desired.revision,
            approval=policy.promote,
            bootstrap_direct=policy.bootstrap == "direct",
            stable_exists=any(s is not None for s in stable),
            stable_fingerprint=live_fingerprint(live, manifests),
            stable_previous_fingerprint=annotations.get(ANNOTATION_PREVIOUS_FINGERPRINT),
            stable_ready=bool(stable) and all(rollout_ready(s) for s in stable),
            stable_replicas=sum(1 if r is None else int(r) for r in replicas),
            variants_present=bool(variants),
            variants_fingerprint=(canaries[0]["metadata"].get("annotations") or {}).get(
                ANNOTATION_FINGERPRINT) if canaries else None,
            variants_ready=bool(canaries) and all(rollout_ready(v) for v in variants
                                                  if v["kind"] in WORKLOAD_KINDS),
            variant_replicas=variant_replicas(replicas[0] if replicas else None,
                                              policy.percentage),
            analysis_enabled=self.prometheus is not None,
            propose_on_failure=self.propose_on_failure,
            approval_refused=self._approval_refused(head, desired),
            judgment_auto=policy.judgment == "auto",
            warmup=policy.analysis.warmup,
            deadline=policy.analysis.deadline,
        )
        if self.prometheus is not None and analysis_due(record, policy.analysis, now):
            judgement = analyze(self.prometheus, policy, [m.name for m in workloads], now,
                                since=record.ready_at)
            observation = dataclasses.replace(observation, analysis=judgement)
        return observation, rendered

    def _approval_refused(self, head: Sha, desired: Desired) -> str | None:
        """Why the approval of this canary does not count, when canary.yaml asks for
        `approvers` or `requireSignedApproval`; None when it counts (or there is none)."""
        policy = desired.policy
        if not policy.promote or not desired.revision.startswith(policy.promote):
            return None
        if not (policy.approvers or policy.require_signed_approval):
            return None
        commit = self.reader.approval_commit(head, desired.folder, policy.promote)
        if commit is None:
            return "approval refused: the commit that added it was not found"
        if policy.approvers:
            email = self.source.author_email(commit)
            if email.lower() not in {a.lower() for a in policy.approvers}:
                return (f"approval refused: {commit[:7]} is by {email}, not one of the "
                        f"approvers of canary.yaml")
        if policy.require_signed_approval:
            if self.allowed_signers is None:
                return ("approval refused: requireSignedApproval, but the controller has no "
                        "--allowed-signers file")
            if not self.source.signature_verified(commit, self.allowed_signers):
                return (f"approval refused: {commit[:7]} has no valid signature of an allowed "
                        f"key")
        return None

    # --- act and record ---------------------------------------------------------------------

    def _act(self, app: AppName, record: Record, decision: Decision, rendered: Rendered | None,
             desired: Desired | InputError) -> Outcome:
        # Write-ahead: the intent (say, Promoting) and the statuses to post are in the cluster
        # before the first write, so a controller killed mid-way resumes instead of guessing,
        # and a status the sink did not take is posted on the next reconcile.
        statuses = decision.statuses
        new_record = decision.record
        intent = dataclasses.replace(new_record, last_status=record.last_status,
                                     unposted=record.unposted + statuses)
        if intent != record:
            self.kube.save_record(intent)
        try:
            if rendered is not None and isinstance(desired, Desired):
                if decision.record.promoting == "rollback":
                    rendered = dataclasses.replace(rendered,
                                                   stable=forget_previous(rendered.stable))
                for action in decision.actions:
                    self._perform(action, rendered, desired.policy)
        except CanaryError as error:
            if error.transient:
                raise
            log.error("app %s: %s", app, error)
            sha = desired.revision if isinstance(desired, Desired) else None
            statuses = (StatusNote(sha, StatusState.ERROR, str(error)),) if sha else ()
            # Back to what was true before this decision, plus the reason it failed.
            new_record = dataclasses.replace(record, error=str(error),
                                             last_status=statuses[-1] if statuses else None)
            intent = dataclasses.replace(new_record, last_status=record.last_status,
                                         unposted=record.unposted + statuses)
            self.kube.save_record(intent)
        for note in intent.unposted:
            self.sink.post(app, note.sha, note.state, note.description)
        if intent.unposted:
            new_record = dataclasses.replace(new_record, last_status=intent.unposted[-1])
        new_record = dataclasses.replace(new_record, unposted=())
        if new_record != intent:
            self.kube.save_record(new_record)
        return Outcome(app, new_record, decision.actions)

    def _follow_up(self, app: AppName, head: Sha, folder: AppFolder, decision: Decision,
                   record: Record) -> None:
        """What follows the statuses: promote pull requests, and with `judgment: auto` the
        approval or revert commit. A forge or push that refuses is logged; the commits are
        proposed again on the next reconcile, the canary is not held up."""
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

    def _perform(self, action: Action, rendered: Rendered, policy: Policy) -> None:
        if action is Action.APPLY_STABLE:
            self.kube.apply([*rendered.passthrough, *rendered.deferred, *rendered.stable])
        elif action is Action.APPLY_VARIANTS:
            self.kube.apply([*rendered.passthrough, *rendered.baseline, *rendered.canary])
            wanted = set(rendered.variant_keys)
            for obj in self.kube.variants(policy.namespace, policy.app):
                if key_of(obj) not in wanted:  # left over from a replaced canary
                    self.kube.delete(key_of(obj))
        elif action is Action.DELETE_VARIANTS:
            for obj in self.kube.variants(policy.namespace, policy.app):
                self.kube.delete(key_of(obj))
        # Promote requests are handled by _requests, after the statuses they quote.
