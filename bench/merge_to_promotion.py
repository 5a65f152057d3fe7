"""Merge-to-promotion latency: from merging a promote pull request on Gitea until stable runs the
canary's spec.

A real Gitea (hack/localcluster/gitea.py) holds the deploy repository. The controller runs in
this process as `tests/forge/test_gitea_controller.py` wires it: a `Reconciler` with a
`GitSource` on Gitea's HTTP URL (token and user name), a `ForgeStatusSink` and
`PromotionRequests`, driven by `controller.run.loop` in a thread. Two modes:

- webhook: a Gitea push webhook (type gitea, with a secret) to `/webhook` of
           `controller.metrics.serve` on 127.0.0.1 wakes the loop; the poll interval is 60 s;
- polling: no webhook; only the poll interval (2 s) finds the merge.

Each mode starts from a stable `sampleapp` (4 replicas, deployed with `bootstrap: direct`). Each
round pushes a change of SUCCESS_RATE, waits until the canary awaits promotion (no Prometheus:
it waits unanalysed) and the controller has opened its promote pull request, then merges that
request through the API (`{"Do": "merge"}`). The clock starts just before the merge call and
stops when the stable Deployment `sampleapp` has the new SUCCESS_RATE; the Kubernetes API is
read every 20 ms. In polling mode the merge follows a random pause in [0, interval), so it lands
at a random phase of the poll cycle.

Before a merge the script waits until nothing is in flight: Gitea's own status of the request
is mergeable (read from its database: the API does not show it), in webhook mode the webhooks of
the pushed change and of the controller's promote branch have arrived (so the next one is the
merge's), and no reconcile ran and no webhook came for a second. A merge Gitea refuses anyway
with 405 "Please try again later" is retried every 100 ms, and the clock starts at the call that
goes through. Gitea's delivery of the merge's webhook is the time from the merge call's return
until the wrapped `on_push` is called.

Run: cd /work/main && PYTHONPATH=hack:. .venv/bin/python bench/merge_to_promotion.py
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import os
import random
import secrets
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from benchlib import (
    AppCluster,
    Summary,
    api_client,
    deployment,
    git,
    kubeconfig,
    machine,
    namespace,
    say,
    service,
    state_of,
    wait_for,
)
from kubernetes import client

from controller.domain.types import Phase
from controller.edges.forges import ForgeStatusSink, auth_headers, make_forge
from controller.edges.git import GitSource
from controller.edges.kube import Kube
from controller.metrics import Metrics, serve
from controller.promotions import PromotionRequests, branch_for
from controller.reconcile import Reconciler, Result
from controller.run import loop
from localcluster import gitea as localgitea
from localcluster.processes import free_port

APP = "sampleapp"
FOLDER = f"apps/{APP}"
REPLICAS = 4
PROBE_STEP = 0.02  # how often the API is asked whether stable is promoted
APPLY_TIMEOUT = 30.0  # per merge; a miss is reported, two misses in a row end the mode
CANARY_TIMEOUT = 60.0  # from a push until the canary awaits promotion with its pull request
SETTLE_TIMEOUT = 30.0  # from the promotion until the record is Stable again
START_TIMEOUT = 120.0
HOOK_TIMEOUT = 20.0
QUIET = 1.0  # before a merge: no reconcile running and no webhook for this long
MERGE_RETRY_STEP = 0.1
MERGE_RETRY_TIMEOUT = 30.0
PULL_STATUS = {0: "conflict", 1: "checking", 2: "mergeable", 3: "manually merged", 4: "error",
               5: "empty", 6: "ancestor"}  # Gitea's PullRequestStatus (models/issues/pull.go)
LOG_DIR = Path(tempfile.gettempdir()) / "gitops-canary-bench"


@dataclass(frozen=True)
class Mode:
    name: str  # webhook or polling
    interval: float
    webhook: bool


@dataclass(frozen=True)
class Span:
    started: float
    ended: float
    head: str | None
    error: str | None


@dataclass
class Reconciles:
    """Every reconcile the loop ran (time.monotonic), and what it raised if it died."""

    spans: list[Span] = field(default_factory=list)
    running_since: float | None = None
    died: str | None = None

    def instrument(self, reconciler: Reconciler) -> None:
        original = reconciler.reconcile

        def recording() -> Result:
            started = time.monotonic()
            self.running_since = started
            try:
                result = original()
            except Exception as error:
                self.died = f"{type(error).__name__}: {error}"
                raise
            finally:
                self.running_since = None
            self.spans.append(Span(started, time.monotonic(),
                                   str(result.head) if result.head else None, result.error))
            return result

        reconciler.reconcile = recording  # type: ignore[method-assign]

    def quiet_since(self) -> float | None:
        """When the last reconcile ended; None while one runs."""
        if self.running_since is not None:
            return None
        return self.spans[-1].ended if self.spans else 0.0


@dataclass
class ModeResult:
    mode: Mode
    latencies: list[float] = field(default_factory=list)
    merge_calls: list[float] = field(default_factory=list)  # the merge API call alone
    deliveries: list[float] = field(default_factory=list)  # merge call returned → webhook
    waits: list[float] = field(default_factory=list)  # webhook (or merge) → applying reconcile
    applies: list[float] = field(default_factory=list)  # applying reconcile start → seen applied
    hooks_per_round: list[int] = field(default_factory=list)
    checks: list[tuple[float, str]] = field(default_factory=list)
    """(seconds from finding the promote request until Gitea would merge it, the statuses Gitea
    gave it meanwhile)"""
    refused: list[tuple[float, str]] = field(default_factory=list)
    """Merges refused with 405 "Please try again later" before one went through: (seconds from
    the first refusal until the merge went through, Gitea's status of the request then)"""
    woken_by_poll: int = 0  # webhook mode: promotions whose reconcile the webhook did not start
    reconcile_errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# --- what the cluster and Gitea show --------------------------------------------------------


@dataclass
class Forge:
    gitea: localgitea.Gitea
    repo: str  # owner/name
    clone: Path

    def write(self, path: str, content: dict[str, Any]) -> None:
        target = self.clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(content, sort_keys=False))

    def commit_and_push(self, message: str) -> str:
        """Commit everything on top of Gitea's main (the merges land there); the pushed sha."""
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "-m", message)
        if git(self.clone, "ls-remote", "origin", "refs/heads/main"):
            git(self.clone, "pull", "-q", "--rebase", "origin", "main")
        git(self.clone, "push", "-q", "origin", "HEAD:main")
        sha = git(self.clone, "rev-parse", "HEAD")
        self.gitea.wait_for_push(self.repo, sha)
        return sha

    def promote_pull(self, sha: str) -> dict[str, Any] | None:
        """The open promote pull request for the canary of `sha`, once the controller opened
        it."""
        pulls: list[dict[str, Any]] = self.gitea.api(
            "GET", f"/repos/{self.repo}/pulls", params={"state": "open", "limit": 50})
        return next((p for p in pulls if p["head"]["ref"] == branch_for(APP)
                     and p["title"] == f"Promote {APP} canary {sha[:7]}"), None)

    def pull_status(self, number: int) -> str:
        """Gitea's own status of a pull request (conflict, checking, mergeable, ancestor, ...),
        which its API does not show: read from its SQLite database, read-only."""
        owner, name = self.repo.split("/")
        uri = f"file:{self.gitea.state / 'data' / 'gitea.db'}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
                row = db.execute(
                    "SELECT pr.status FROM pull_request pr "
                    "JOIN repository r ON r.id = pr.base_repo_id "
                    "WHERE r.lower_name = ? AND r.owner_name = ? AND pr.\"index\" = ?",
                    (name.lower(), owner, number)).fetchone()
        except sqlite3.Error as error:
            return f"unknown ({error})"
        return "unknown (no row)" if row is None else PULL_STATUS.get(int(row[0]), str(row[0]))

    def ready(self, number: int, seen: list[str]) -> bool:
        """Gitea would merge the request now: its own status is mergeable and its head is the
        promote branch's commit. Gitea checks a request again when its push queue gets to the
        push of the head branch, which can come after the request was opened and after the
        API said `mergeable`. It refuses a merge with 405 "Please try again later" unless the
        status is mergeable (or empty)."""
        status = self.pull_status(number)
        if not seen or seen[-1] != status:
            seen.append(status)
        if status != "mergeable":
            return False
        pull: dict[str, Any] = self.gitea.api("GET", f"/repos/{self.repo}/pulls/{number}")
        branch = self.gitea.api("GET", f"/repos/{self.repo}/branches/{branch_for(APP)}")
        return bool(pull.get("mergeable")) and pull["head"]["sha"] == branch["commit"]["id"]


# --- one mode -------------------------------------------------------------------------------


def run_mode(result: ModeResult, gitea: localgitea.Gitea, api: client.ApiClient, rounds: int,
             rng: random.Random) -> None:
    """Fill `result` with one latency per promoted merge (and the problems seen)."""
    mode = result.mode
    with namespace(api, f"bench-{mode.name}") as ns, \
            tempfile.TemporaryDirectory(prefix=f"bench-merge-{mode.name}-") as tmp, \
            contextlib.ExitStack() as stack:
        root = Path(tmp)
        name = f"deploy-{mode.name}-{secrets.token_hex(3)}"
        gitea.create_repo(name)
        repo = f"{gitea.admin}/{name}"
        clone = root / "clone"
        git(root, "clone", "-q", gitea.http_url_with_auth(name), str(clone))
        git(clone, "checkout", "-q", "-b", "main")
        git(clone, "config", "user.name", "Bench")
        git(clone, "config", "user.email", "bench@example.com")
        forge = Forge(gitea, repo, clone)
        merger = stack.enter_context(gitea.client())  # the person who merges
        cluster = AppCluster(api, ns)

        forge.write(f"{FOLDER}/canary.yaml", {"namespace": ns, "percentage": 25,
                                               "bootstrap": "direct"})
        forge.write(f"{FOLDER}/deployment.yml", deployment(APP, "10", replicas=REPLICAS))
        forge.write(f"{FOLDER}/service.yml", service(APP))
        first = forge.commit_and_push(f"{APP}: first version")

        source = GitSource(f"{gitea.url}/{repo}.git", "main", root / "mirror", gitea.token,
                           username=gitea.admin)
        http = stack.enter_context(httpx.Client(
            base_url=gitea.url, headers=auth_headers("gitea", gitea.token), timeout=10.0,
            trust_env=False))
        forge_api = make_forge("gitea", repo)
        reconciler = Reconciler(
            source, Kube(api, frozenset({ns}), state_namespace=state_of(ns)),
            ForgeStatusSink(forge_api, http, "http://grafana.local/d/canary?app={app}"),
            promotions=PromotionRequests(forge_api, http, source))
        reconciles = Reconciles()
        reconciles.instrument(reconciler)

        stop, wake = threading.Event(), threading.Event()
        hooks: list[float] = []  # when each push webhook reached on_push (time.monotonic)
        if mode.webhook:
            secret, port = secrets.token_hex(16), free_port()

            def on_push() -> None:
                hooks.append(time.monotonic())
                wake.set()

            server = serve(Metrics(), f"127.0.0.1:{port}", mode.interval, on_push=on_push,
                           webhook_secret=secret)

            def shut_down() -> None:
                server.shutdown()
                server.server_close()

            stack.callback(shut_down)
            gitea.api("POST", f"/repos/{repo}/hooks", json={
                "type": "gitea", "active": True, "events": ["push"],
                "config": {"url": f"http://127.0.0.1:{port}/webhook", "content_type": "json",
                           "secret": secret}})
        runner = threading.Thread(target=loop, args=(reconciler, mode.interval, stop, wake),
                                  name=f"loop-{mode.name}", daemon=True)
        runner.start()

        def end_loop() -> None:
            stop.set()
            runner.join(timeout=30)
            if runner.is_alive():
                result.problems.append("the loop thread did not end within 30s of the stop")

        stack.callback(end_loop)
        say(f"{mode.name}: controller loop on {gitea.url}/{repo}.git (interval "
            f"{mode.interval:g}s{', push webhook' if mode.webhook else ''}), namespace {ns}")

        def alive() -> None:
            if not runner.is_alive():
                raise RuntimeError(f"the loop thread died: {reconciles.died}")

        def settled(sha: str, phase: Phase, ready: bool = False) -> bool:
            alive()
            record = cluster.record()
            return record is not None and record.phase is phase and record.error is None \
                and (record.canary_revision == sha if phase is Phase.AWAITING
                     else record.stable_revision == sha) \
                and (not ready or cluster.stable_ready(REPLICAS))

        def hooks_in(count: int) -> bool:
            alive()
            return len(hooks) >= count

        wait_for(functools.partial(settled, first, Phase.STABLE, ready=True),
                 f"stable {APP} deployed (bootstrap: direct)", START_TIMEOUT)
        say(f"{mode.name}: stable deployed; {rounds} rounds")
        misses = 0
        for i in range(rounds):
            rate = str(20 + i)
            forge.write(f"{FOLDER}/deployment.yml", deployment(APP, rate, replicas=REPLICAS))
            hooks_before = len(hooks)
            sha = forge.commit_and_push(f"{APP}: success rate {rate}")
            try:
                wait_for(functools.partial(settled, sha, Phase.AWAITING),
                         f"canary {sha[:7]} awaiting promotion", CANARY_TIMEOUT)
                pull = wait_for(functools.partial(forge.promote_pull, sha),
                                f"the promote pull request of {sha[:7]}", CANARY_TIMEOUT, 0.05)
                found, seen = time.monotonic(), list[str]()
                wait_for(functools.partial(forge.ready, pull["number"], seen),
                         f"promote pull request #{pull['number']} mergeable", CANARY_TIMEOUT,
                         0.05)
                result.checks.append((time.monotonic() - found, " → ".join(seen)))
            except TimeoutError as error:
                record = cluster.record()
                result.problems.append(
                    f"round {i + 1} ({sha[:7]}): {error}; record phase "
                    f"{record.phase if record else None}, error "
                    f"{record.error if record else None}; {cluster.readiness()}; mode ended")
                break

            if mode.webhook:
                # Gitea delivers webhooks from a queue, sometimes seconds late: the webhook of
                # the controller's push of the promote branch must be in before the merge, or
                # it would be taken for the merge's.
                try:
                    wait_for(functools.partial(hooks_in, hooks_before + 2),
                             "the webhooks of the push and of the promote branch", HOOK_TIMEOUT,
                             0.02)
                except TimeoutError as error:
                    result.problems.append(f"round {i + 1}: {error} ({len(hooks) - hooks_before}"
                                           f" came)")

            def quiet() -> bool:
                alive()
                now, since = time.monotonic(), reconciles.quiet_since()
                return since is not None and now - since >= QUIET \
                    and (not hooks or now - hooks[-1] >= QUIET)

            wait_for(quiet, "no reconcile and no webhook for a second", 30, 0.05)
            if not mode.webhook:
                time.sleep(rng.uniform(0, mode.interval))  # a random phase of the poll cycle
            # Still mergeable (normally at once): Gitea rechecks when the branch moves.
            wait_for(functools.partial(forge.ready, pull["number"], []),
                     f"promote pull request #{pull['number']} still mergeable", CANARY_TIMEOUT,
                     0.05)
            hooks_at_merge = len(hooks)

            refused_at: float | None = None
            while True:
                before = forge.pull_status(pull["number"])
                started = time.monotonic()
                response = merger.post(f"/repos/{repo}/pulls/{pull['number']}/merge",
                                       json={"Do": "merge"})
                merged = time.monotonic()
                if response.status_code == 405 and "try again later" in response.text \
                        and (refused_at is None or merged - refused_at < MERGE_RETRY_TIMEOUT):
                    # Gitea is checking the request (again): a person would press the button
                    # again. The clock restarts with the next call.
                    if refused_at is None:
                        refused_at = merged
                        after = forge.pull_status(pull["number"])
                        status = f"{before} before the call, {after} after"
                    time.sleep(MERGE_RETRY_STEP)
                    continue
                if response.is_error:
                    raise RuntimeError(f"merging #{pull['number']}: {response.status_code} "
                                       f"{response.text[:300]}")
                break
            if refused_at is not None:
                result.refused.append((merged - refused_at, status))
            deadline = started + APPLY_TIMEOUT
            applied: float | None = None
            while time.monotonic() < deadline:
                if cluster.stable_rate() == rate:
                    applied = time.monotonic()
                    break
                time.sleep(PROBE_STEP)
            if applied is None:
                misses += 1
                record = cluster.record()
                result.problems.append(
                    f"round {i + 1} ({sha[:7]}): stable not at SUCCESS_RATE {rate} within "
                    f"{APPLY_TIMEOUT:.0f}s of the merge; record phase "
                    f"{record.phase if record else None}, error "
                    f"{record.error if record else None}")
                say(f"{mode.name}: round {i + 1} NOT promoted within {APPLY_TIMEOUT:.0f}s")
                if misses == 2:
                    result.problems.append("two misses in a row: mode ended early")
                    break
                continue
            misses = 0
            result.latencies.append(applied - started)
            result.merge_calls.append(merged - started)
            say(f"{mode.name}: round {i + 1}/{rounds} promoted in {applied - started:.2f}s")

            try:
                wait_for(functools.partial(settled, sha, Phase.STABLE, ready=True),
                         f"{sha[:7]} promoted and stable ready", SETTLE_TIMEOUT)
            except TimeoutError as error:
                record = cluster.record()
                result.problems.append(
                    f"round {i + 1} ({sha[:7]}): {error}; record phase "
                    f"{record.phase if record else None}; {cluster.readiness()}; mode ended")
                break

            # The reconcile that applied the promotion: the first one that saw the merge.
            merge_sha = gitea.api("GET", f"/repos/{repo}/pulls/{pull['number']}")[
                "merge_commit_sha"]
            applying = next((s for s in reconciles.spans
                             if s.started >= started and s.head == merge_sha), None)
            hook = hooks[hooks_at_merge] if len(hooks) > hooks_at_merge else None
            result.hooks_per_round.append(len(hooks) - hooks_before)
            if mode.webhook and hook is not None:
                result.deliveries.append(hook - merged)
            trigger = hook if mode.webhook and hook is not None else merged
            if applying is not None:
                result.waits.append(applying.started - trigger)
                result.applies.append(applied - applying.started)
                if mode.webhook and (hook is None or applying.started < hook):
                    result.woken_by_poll += 1
            else:
                result.problems.append(f"round {i + 1}: no reconcile of the merge commit "
                                       f"{str(merge_sha)[:7]} was recorded")
            if mode.webhook and hook is None:
                result.problems.append(f"round {i + 1}: no push webhook after the merge")
            say(f"{mode.name}: round {i + 1}: merge call {merged - started:.3f}s, "
                f"{'webhook ' + format(hook - started, '.3f') + 's, ' if hook else ''}"
                f"reconcile {applying.started - started if applying else float('nan'):.3f}s, "
                f"applied {applied - started:.3f}s (all from the merge call's start)")
        result.reconcile_errors = [s.error for s in reconciles.spans if s.error]


# --- the report -----------------------------------------------------------------------------


def report(results: list[ModeResult], load: float, log: Path) -> None:
    print(f"merge-to-promotion latency ({machine(load)}); from the merge API call until stable "
          f"`{APP}` has the canary's SUCCESS_RATE (API probed every {PROBE_STEP * 1000:.0f} ms)")
    medians: dict[str, float] = {}
    for r in results:
        m = r.mode
        label = (f"{m.name} (push webhook, interval {m.interval:g}s)" if m.webhook
                 else f"{m.name} (no webhook, interval {m.interval:g}s)")
        if r.latencies:
            print(f"{label}: {Summary.of(r.latencies).text()}")
            medians[m.name] = Summary.of(r.latencies).median
        else:
            print(f"{label}: no merge promoted")
        if r.merge_calls:
            print(f"  the merge API call itself: {Summary.of(r.merge_calls).text('ms', 1000, 0)}")
        if r.deliveries:
            print(f"  Gitea's webhook delivery (merge call returned → webhook received): "
                  f"{Summary.of(r.deliveries).text('ms', 1000, 0)}")
        if r.waits:
            what = "webhook received" if m.webhook else "merge call returned"
            print(f"  {what} → start of the reconcile that promoted: "
                  f"{Summary.of(r.waits).text('ms', 1000, 0)}")
            print(f"  that reconcile's start → stable seen promoted: "
                  f"{Summary.of(r.applies).text('ms', 1000, 0)}")
        if m.webhook and r.hooks_per_round:
            print(f"  webhooks received per round (push, promote branch, merge): "
                  f"{sorted(set(r.hooks_per_round))}; promotions not started by the webhook: "
                  f"{r.woken_by_poll}")
        if r.checks:
            paths = collections.Counter(path for _, path in r.checks)
            print(f"  promote request found → Gitea would merge it (status mergeable, head = the "
                  f"branch): {Summary.of([t for t, _ in r.checks]).text('ms', 1000, 0)}; "
                  f"Gitea's statuses meanwhile: "
                  + "; ".join(f"{path}: {n}" for path, n in paths.most_common()))
        if r.refused:
            statuses = sorted({status for _, status in r.refused})
            print(f"  merges first refused with 405 \"Please try again later\" (retried every "
                  f"{MERGE_RETRY_STEP * 1000:.0f} ms, the clock starts at the call that went "
                  f"through): {len(r.refused)} of {len(r.latencies) + len(r.problems)} rounds; "
                  f"Gitea's status of the request at the first refusal: {', '.join(statuses)}; "
                  f"through after {Summary.of([t for t, _ in r.refused]).text()}")
        if r.reconcile_errors:
            print(f"  reconciles that failed: {len(r.reconcile_errors)} "
                  f"(first: {r.reconcile_errors[0]})")
        for problem in r.problems:
            print(f"  PROBLEM: {problem}")
    if "webhook" in medians and "polling" in medians:
        print(f"ratio webhook/polling (medians): {medians['webhook'] / medians['polling']:.2f}")
    print(f"controller log: {log}")


@contextlib.contextmanager
def controller_log(path: Path) -> Iterator[None]:
    """The in-process controller's INFO log goes to a file, not into the report."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s "
                                           "%(levelname)s %(message)s"))
    logger = logging.getLogger("controller")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def running_gitea(state: Path) -> Iterator[localgitea.Gitea]:
    try:
        with contextlib.redirect_stdout(sys.stderr):  # its "ready" line is not a figure
            started = localgitea.start(state)
        yield started
    finally:
        left = localgitea.stop(state)
        if left:
            say(f"gitea: stopped leftover processes {left}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="merges per mode (default 10)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="the poll interval in polling mode, seconds (default 2)")
    parser.add_argument("--webhook-interval", type=float, default=60.0,
                        help="the poll interval in webhook mode, seconds (default 60)")
    parser.add_argument("--modes", default="webhook,polling", help="default: webhook,polling")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pauses")
    args = parser.parse_args()
    names = [m for m in args.modes.split(",") if m]
    if not set(names) <= {"webhook", "polling"} or not 1 <= args.rounds <= 100:
        parser.error("modes are webhook and polling; rounds between 1 and 100")
    modes = {"webhook": Mode("webhook", args.webhook_interval, webhook=True),
             "polling": Mode("polling", args.interval, webhook=False)}
    load = os.getloadavg()[0]
    rng = random.Random(args.seed)  # noqa: S311 -- pauses before merges, not security
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"merge-to-promotion-{time.strftime('%Y%m%d-%H%M%S')}.log"
    results = [ModeResult(modes[n]) for n in names]
    with controller_log(log), tempfile.TemporaryDirectory(prefix="bench-gitea-") as state, \
            kubeconfig() as config, api_client(config) as api, \
            running_gitea(Path(state)) as gitea:
        for result in results:
            try:
                run_mode(result, gitea, api, args.rounds, rng)
            except (TimeoutError, RuntimeError) as error:
                say(f"{result.mode.name}: aborted: {error}")
                result.problems.append(f"aborted: {error}")
    report(results, load, log)
    return 0 if all(r.latencies and not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
