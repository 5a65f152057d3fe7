"""Push-to-apply latency: from `git push` until baseline and canary of the pushed commit exist.

The controller runs as a real subprocess (`python -m controller run`) against a real bare
repository on local disk and the real cluster, in two modes:

- poll:  the controller reads the repository through `git daemon` on 127.0.0.1 (a git:// URL),
         which the file-system watcher cannot see, so only the poll interval finds a push;
- watch: the controller gets the bare repository's path, so the watchdog observer on its refs
         wakes the loop as soon as the push moves the branch.

Each mode starts from a stable `sampleapp` (4 replicas, deployed with `bootstrap: direct`), then
pushes N commits, each changing SUCCESS_RATE, so every push replaces the previous canary. A push
happens after the previous canary has settled (AwaitingPromotion) plus a random pause in
[0, interval), so it lands at a random phase of the poll cycle. "Applied" means: the
`sampleapp-canary` Deployment carries `gitops-canary/revision` == the pushed sha and the new
SUCCESS_RATE, and `sampleapp-baseline` exists; the Kubernetes API is polled every 20 ms.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/push_to_apply.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchlib import (
    AppCluster,
    DeployRepo,
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
    timed,
    wait_for,
)
from kubernetes import client

import controller as controller_package
from controller.domain.types import ANNOTATION_REVISION, Phase
from localcluster.processes import free_port

APP = "sampleapp"
FOLDER = f"apps/{APP}"
PROBE_STEP = 0.02  # how often the API is asked whether the push is applied
APPLY_TIMEOUT = 30.0  # per push; a miss is reported, two misses in a row end the mode
SETTLE_TIMEOUT = 30.0
START_TIMEOUT = 120.0
LOG_DIR = Path(tempfile.gettempdir()) / "gitops-canary-bench"
# The controller subprocess runs the same code this script imported (`python -m controller`
# from the folder holding that package), even when PYTHONPATH points at another checkout.
CODE = Path(controller_package.__file__).resolve().parents[1]
IDLE_WINDOW = 10.0  # seconds of nothing to do, to see what the controller costs meanwhile
AWAITING_LINE = b"phase AwaitingPromotion, actions none"  # one per reconcile of a waiting app


@dataclass
class ModeResult:
    mode: str
    interval: float
    latencies: list[float] = field(default_factory=list)
    pushes: list[float] = field(default_factory=list)  # the `git push` command alone
    problems: list[str] = field(default_factory=list)
    log: Path | None = None
    idle: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    """{situation: (controller CPU seconds per second incl. its git children, reconciles/s)}"""


# --- the servers this benchmark starts ------------------------------------------------------


@contextlib.contextmanager
def git_daemon(base: Path, log: IO[bytes]) -> Iterator[int]:
    """`git daemon` serving every repository under `base` on 127.0.0.1; yields its port.
    receive-pack is on because the controller pushes its status notes back to the remote."""
    port = free_port()
    binary = Path(git(base, "--exec-path")) / "git-daemon"
    process = subprocess.Popen(
        [str(binary), "--listen=127.0.0.1", f"--port={port}", "--reuseaddr", "--export-all",
         "--enable=receive-pack", "--informative-errors", f"--base-path={base}", str(base)],
        stdout=log, stderr=log)
    try:
        wait_for(lambda: process.poll() is None and subprocess.run(
            ["git", "ls-remote", f"git://127.0.0.1:{port}/remote.git"], check=False,
            capture_output=True, timeout=10).returncode == 0, "git daemon answering", 15)
        yield port
    finally:
        stop(process, "git daemon")


@contextlib.contextmanager
def run_controller(url: str, workdir: Path, ns: str, config: Path, interval: float,
               log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "--log-level", "INFO", "run", "--repo", url,
         "--branch", "main", "--interval", f"{interval:g}s", "--workdir", str(workdir),
         "--namespaces", ns, "--state-namespace", state_of(ns), "--kubeconfig", str(config)],
        cwd=CODE, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield process
    finally:
        stop(process, "controller")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of the children it waited for (its git commands)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def idle_cost(process: subprocess.Popen[bytes], log: Path) -> tuple[float, float]:
    """Watch the controller for IDLE_WINDOW seconds while nothing changes: its CPU use (cores)
    and how many reconciles of a waiting app it logged per second."""
    lines, cpu = log.read_bytes().count(AWAITING_LINE), cpu_seconds(process.pid)
    started = time.perf_counter()
    time.sleep(IDLE_WINDOW)
    elapsed = time.perf_counter() - started
    return ((cpu_seconds(process.pid) - cpu) / elapsed,
            (log.read_bytes().count(AWAITING_LINE) - lines) / elapsed)


def stop(process: subprocess.Popen[bytes], what: str) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        say(f"{what} (pid {process.pid}) ignored SIGTERM for 15s: killing it")
        process.kill()
        process.wait(timeout=5)


# --- what the cluster shows -----------------------------------------------------------------


class Cluster(AppCluster):
    def applied(self, sha: str, rate: str) -> bool:
        """Both variants exist, the canary with the pushed revision and SUCCESS_RATE."""
        canary = self.deployment(f"{APP}-canary")
        if canary is None or (canary.metadata.annotations or {}).get(ANNOTATION_REVISION) != sha:
            return False
        env = canary.spec.template.spec.containers[0].env or []
        if not any(e.name == "SUCCESS_RATE" and e.value == rate for e in env):
            return False
        return self.deployment(f"{APP}-baseline") is not None


# --- one mode -------------------------------------------------------------------------------


def run_mode(result: ModeResult, api: client.ApiClient, config: Path, pushes: int,
             rng: random.Random) -> None:
    """Fill `result` with one latency per applied push (and the problems seen)."""
    mode, interval = result.mode, result.interval
    assert result.log is not None
    with namespace(api, f"bench-{mode}") as ns, \
            tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp, \
            result.log.open("wb") as log:
        root = Path(tmp)
        repo = DeployRepo.create(root)
        cluster = Cluster(api, ns)
        repo.write(f"{FOLDER}/canary.yaml", {"namespace": ns, "percentage": 25,
                                              "bootstrap": "direct"})
        repo.write(f"{FOLDER}/deployment.yml", deployment(APP, "10", replicas=4))
        repo.write(f"{FOLDER}/service.yml", service(APP))
        first = repo.commit(f"{APP}: first version")
        repo.push()
        with contextlib.ExitStack() as stack:
            if mode == "poll":
                port = stack.enter_context(git_daemon(root, log))
                url = f"git://127.0.0.1:{port}/remote.git"
            else:
                url = str(repo.remote)
            say(f"{mode}: controller on {url}, namespace {ns}, log {result.log}")
            process = stack.enter_context(
                run_controller(url, root / "mirror", ns, config, interval, log))

            def settled(sha: str, phase: Phase) -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"the controller exited with {process.returncode}; "
                                       f"see {result.log}")
                record = cluster.record()
                return record is not None and record.phase is phase and record.error is None \
                    and (record.canary_revision == sha if phase is Phase.AWAITING
                         else record.stable_revision == sha)

            wait_for(lambda: settled(first, Phase.STABLE) and cluster.stable_ready(4),
                     f"stable {APP} deployed (bootstrap: direct)", START_TIMEOUT)
            say(f"{mode}: stable deployed; {IDLE_WINDOW:.0f}s idle, then {pushes} pushes")
            result.idle["stable"] = (idle_cost(process, result.log)[0], None)
            misses = 0
            for i in range(pushes):
                rate = str(20 + i)
                repo.write(f"{FOLDER}/deployment.yml", deployment(APP, rate, replicas=4))
                sha = repo.commit(f"{APP}: success rate {rate}")
                time.sleep(rng.uniform(0, interval))  # a random phase of the poll cycle
                started = time.perf_counter()
                result.pushes.append(timed(repo.push))
                deadline = started + APPLY_TIMEOUT
                while time.perf_counter() < deadline and not cluster.applied(sha, rate):
                    time.sleep(PROBE_STEP)
                if not cluster.applied(sha, rate):
                    misses += 1
                    result.problems.append(f"push {i + 1} ({sha[:7]}): not applied within "
                                           f"{APPLY_TIMEOUT:.0f}s")
                    say(f"{mode}: push {i + 1} NOT applied within {APPLY_TIMEOUT:.0f}s")
                    if misses == 2:
                        result.problems.append("two misses in a row: mode ended early")
                        break
                    continue
                misses = 0
                result.latencies.append(time.perf_counter() - started)
                say(f"{mode}: push {i + 1}/{pushes} applied in {result.latencies[-1]:.2f}s")
                try:
                    wait_for(lambda sha=sha: settled(sha, Phase.AWAITING),
                             f"canary {sha[:7]} awaiting promotion", SETTLE_TIMEOUT)
                except TimeoutError as error:
                    # The next push would meet a canary still in transition (polled every
                    # second instead of every interval): a different measurement. Stop here.
                    record = cluster.record()
                    result.problems.append(
                        f"push {i + 1} ({sha[:7]}): {error}; record phase "
                        f"{record.phase if record else None}; ready replicas "
                        f"{cluster.readiness()}; mode ended early")
                    break
            if result.latencies:
                say(f"{mode}: {IDLE_WINDOW:.0f}s idle with the last canary awaiting promotion")
                result.idle["awaiting"] = idle_cost(process, result.log)


# --- the report -----------------------------------------------------------------------------


def report(results: list[ModeResult], load: float) -> None:
    print(f"push-to-apply latency ({machine(load)}); from `git push` until baseline and canary "
          f"of the pushed sha exist (API probed every {PROBE_STEP * 1000:.0f} ms)")
    medians: dict[str, float] = {}
    for r in results:
        label = f"{r.mode} (interval {r.interval:g}s)"
        if r.latencies:
            print(f"{label}: {Summary.of(r.latencies).text()}")
            medians[r.mode] = Summary.of(r.latencies).median
        else:
            print(f"{label}: no push applied")
        if r.pushes:
            print(f"  the `git push` itself: {Summary.of(r.pushes).text('ms', 1000, 0)}")
        for problem in r.problems:
            print(f"  PROBLEM: {problem}")
        if "stable" in r.idle:
            print(f"  controller CPU while idle at Stable: {r.idle['stable'][0]:.0%} of a core "
                  f"(with its git children, over {IDLE_WINDOW:.0f}s)")
        if "awaiting" in r.idle:
            cpu, rate = r.idle["awaiting"]
            print(f"  controller CPU while a canary awaits promotion: {cpu:.0%} of a core, "
                  f"{rate or 0:.1f} reconciles/s")
        print(f"  controller log: {r.log}")
    if "poll" in medians and "watch" in medians:
        print(f"ratio watch/poll (medians): {medians['watch'] / medians['poll']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=20, help="pushes per mode (default 20)")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="the controller's poll interval in seconds (default 2)")
    parser.add_argument("--modes", default="poll,watch", help="default: poll,watch")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pauses")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"poll", "watch"} or not 1 <= args.pushes <= 200:
        parser.error("modes are poll and watch; pushes between 1 and 200")
    load = os.getloadavg()[0]
    rng = random.Random(args.seed)  # noqa: S311 -- pauses between pushes, not security
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = [ModeResult(m, args.interval, log=LOG_DIR / f"push-to-apply-{m}-{stamp}.log")
               for m in modes]
    with kubeconfig() as config, api_client(config) as api:
        for result in results:
            try:
                run_mode(result, api, config, args.pushes, rng)
            except (TimeoutError, RuntimeError) as error:
                say(f"{result.mode}: aborted: {error}")
                result.problems.append(f"aborted: {error}")
    report(results, load)
    return 0 if all(r.latencies and not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
