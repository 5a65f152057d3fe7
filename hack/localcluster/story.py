"""The seed guide's canary story, played with git against the local environment.

One module for both the README's demo (which narrates it) and the end-to-end test (which
asserts every step): a local cluster, Prometheus, the pod runner and load, a deploy repository
made from deploy-repo-example/, and the controller as a real process. Each step pushes a commit
and waits for what the controller must do, returning what it saw.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

from localcluster import cluster as localcluster
from localcluster import prometheus as localprometheus
from localcluster.processes import Supervisor, free_port
from localcluster.runner import Load, PodRunner

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy-repo-example"
APP = "sampleapp"
VARIANT_PODS = (("stable", f"{APP}-[a-z0-9]+-[a-z0-9]+"), ("baseline", f"{APP}-baseline-.*"),
                ("canary", f"{APP}-canary-.*"))  # pod name patterns, for Prometheus
T = TypeVar("T")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass
class Timing:
    """Analysis timing written into canary.yaml: short for the test, longer for the demo."""

    warmup: str = "30s"
    interval: str = "10s"
    deadline: str = "3m"
    poll: str = "5s"
    qps: float = 120.0


@dataclass
class Story:
    state: Path
    namespace: str = "demo"
    timing: Timing = field(default_factory=Timing)
    say: Callable[[str], None] = print
    kubeconfig: Path | None = None
    api: client.ApiClient | None = None
    prometheus: localprometheus.Prometheus | None = None
    runner: PodRunner | None = None
    load: Load | None = None
    metrics_port: int = 0
    started_cluster: bool = False
    judgment: str = "manual"

    # --- the environment --------------------------------------------------------------------

    @property
    def clone(self) -> Path:
        return self.state / "deploy-repo"

    @property
    def remote(self) -> Path:
        return self.state / "deploy-repo.git"

    @property
    def app_dir(self) -> Path:
        return self.clone / APP

    def up(self, kubeconfig: Path | None = None) -> None:
        """Cluster (unless given), Prometheus, pod runner, the deploy repo and the controller."""
        self.state.mkdir(parents=True, exist_ok=True)
        if kubeconfig is None:
            self.say("starting the local Kubernetes control plane …")
            kubeconfig = localcluster.up(self.state / "cluster", nodes=1).kubeconfig
            self.started_cluster = True
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        core = client.CoreV1Api(self.api)
        existing = {n.metadata.name for n in core.list_namespace().items}
        for name in (self.namespace, self.state_namespace):
            if name not in existing:
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
                    name=name)))
        self.say("starting Prometheus (file-based discovery of the pods) …")
        self.prometheus = localprometheus.start(self.state / "prometheus")
        self.runner = PodRunner(self.api, self.state / "runner", namespaces=[self.namespace],
                                prometheus=self.prometheus)
        self.runner.start()
        self._make_repo()
        self.start_controller()

    @property
    def state_namespace(self) -> str:
        """The controller's records, apart from the app: git never writes there."""
        return f"{self.namespace}-state"

    def _make_repo(self) -> None:
        shutil.rmtree(self.clone, ignore_errors=True)
        shutil.rmtree(self.remote, ignore_errors=True)
        git(self.state, "init", "-q", "--bare", "-b", "main", str(self.remote))
        shutil.copytree(EXAMPLE, self.clone)
        git(self.clone, "init", "-q", "-b", "main")
        git(self.clone, "config", "user.name", "Demo Developer")
        git(self.clone, "config", "user.email", "dev@example.com")
        git(self.clone, "remote", "add", "origin", str(self.remote))
        policy = yaml.safe_load((self.app_dir / "canary.yaml").read_text()) or {}
        policy["namespace"] = self.namespace
        policy["judgment"] = self.judgment
        # The example's metrics (success rate and latency) as they are; only the timing is
        # the story's. `window` is gone: a look covers the time since the previous one.
        analysis = {k: v for k, v in (policy.get("analysis") or {}).items() if k != "window"}
        t = self.timing
        analysis.update(warmup=t.warmup, interval=t.interval, deadline=t.deadline)
        policy["analysis"] = analysis
        (self.app_dir / "canary.yaml").write_text(
            "# Copied from deploy-repo-example/, with the demo's short analysis timing.\n"
            + yaml.safe_dump(policy, sort_keys=False))

    def start_controller(self) -> None:
        """The controller as a process of its own, logging to logs/controller.log."""
        assert self.prometheus is not None
        assert self.kubeconfig is not None
        self.metrics_port = free_port()
        Supervisor(self.state).start("controller", [
            sys.executable, "-m", "controller", "run",
            "--repo", str(self.remote), "--interval", self.timing.poll,
            "--kubeconfig", str(self.kubeconfig),
            "--namespaces", self.namespace, "--state-namespace", self.state_namespace,
            "--prometheus-url", self.prometheus.url,
            "--metrics-address", f"127.0.0.1:{self.metrics_port}",
            "--workdir", str(self.state / "controller-mirror"),
        ], env={"PYTHONPATH": str(REPO)})

    def kill_controller(self, timeout: float = 30) -> None:
        """SIGKILL, as a crash or an evicted pod would: nothing is saved on the way out, and
        the Lease is not released (a new process waits it out)."""
        supervisor = Supervisor(self.state)
        pid = supervisor.pid("controller")
        if pid is None:
            raise RuntimeError("no controller to kill")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.wait(lambda: not supervisor.running("controller"), "the controller to die",
                  timeout)

    def start_load(self) -> None:
        assert self.api is not None
        if self.load is None:
            # 8 workers: a slow canary (LATENCY_MS) holds a worker per request it serves.
            self.load = Load(self.api, self.namespace, APP, 8080, qps=self.timing.qps,
                             workers=8, duration=3600)
            self.load.start()

    def down(self) -> None:
        if self.load is not None:
            self.load.stop()
        # stop, not stop_all: the cluster and Prometheus also live under this state folder.
        Supervisor(self.state).stop("controller")
        if self.runner is not None:
            self.runner.stop()
        if self.prometheus is not None:
            localprometheus.stop(self.state / "prometheus")
        if self.api is not None:
            self.api.close()
        if self.started_cluster:
            localcluster.down(self.state / "cluster")

    # --- git ------------------------------------------------------------------------------

    def set_success_rate(self, rate: int, message: str) -> str:
        return self.set_env("SUCCESS_RATE", str(rate), message)

    def set_latency(self, milliseconds: int, message: str) -> str:
        """LATENCY_MS: every GET / of the sample app sleeps this long before answering."""
        return self.set_env("LATENCY_MS", str(milliseconds), message)

    def set_env(self, name: str, value: str, message: str) -> str:
        """Set the app container's env var `name` in the clone's deployment.yml (added after
        SUCCESS_RATE when the manifest has none), commit and push."""
        path = self.app_dir / "deployment.yml"
        lines = path.read_text().splitlines(keepends=True)
        anchor = None
        for i, line in enumerate(lines):
            if line.strip() in (f"- name: {name}", "- name: SUCCESS_RATE"):
                indent = line[: len(line) - len(line.lstrip())]
                anchor = (i, indent)
                if line.strip() == f"- name: {name}":
                    lines[i + 1] = f'{indent}  value: "{value}"\n'
                    break
        else:
            if anchor is None:
                raise RuntimeError(f"{path} sets no SUCCESS_RATE to add {name} after")
            i, indent = anchor
            lines[i + 2:i + 2] = [f"{indent}- name: {name}\n", f'{indent}  value: "{value}"\n']
        path.write_text("".join(lines))
        return self.commit(message)

    def commit(self, message: str) -> str:
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "-m", message)
        if git(self.clone, "ls-remote", "origin", "refs/heads/main"):
            # The controller may have committed too (judgment: auto): catch up, as a person would.
            git(self.clone, "pull", "-q", "--rebase", "origin", "main")
        git(self.clone, "push", "-q", "origin", "HEAD:main")
        return git(self.clone, "rev-parse", "HEAD")

    def cli(self, *args: str) -> str:
        """Run the product's CLI in the clone, as a person would."""
        return subprocess.run([sys.executable, "-m", "controller", *args], cwd=self.clone,
                              check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO),
                                   "KUBECONFIG": str(self.kubeconfig)}).stdout.strip()

    def promote(self) -> str:
        self.cli("promote", APP)
        git(self.clone, "push", "-q", "origin", "HEAD:main")
        return git(self.clone, "rev-parse", "HEAD")

    def revert(self) -> str:
        git(self.clone, "revert", "--no-edit", "HEAD")
        git(self.clone, "push", "-q", "origin", "HEAD:main")
        return git(self.clone, "rev-parse", "HEAD")

    def note(self, sha: str) -> str:
        if not git(self.clone, "ls-remote", "origin", "refs/notes/gitops-canary"):
            return ""
        git(self.clone, "fetch", "-q", "origin",
            "+refs/notes/gitops-canary:refs/notes/gitops-canary")
        try:
            return git(self.clone, "notes", "--ref=gitops-canary", "show", sha)
        except subprocess.CalledProcessError:
            return ""

    def notes_log(self) -> str:
        """`git log --notes=gitops-canary`, compact: each commit with the statuses on it."""
        self.note("HEAD")  # fetches the notes ref
        return git(self.clone, "log", "--notes=gitops-canary", "--format=%h %s%n%N")

    # --- watching ---------------------------------------------------------------------------

    def deployments(self) -> dict[str, client.V1Deployment]:
        items = client.AppsV1Api(self.api).list_namespaced_deployment(self.namespace).items
        return {str(d.metadata.name): d for d in items}

    def wait(self, probe: Callable[[], T | None], what: str, timeout: float = 300) -> T:
        """Poll until `probe` gives something truthy; show progress while waiting."""
        started = time.monotonic()
        last_report = 0.0
        while True:
            found = probe()
            if found:
                return found
            waited = time.monotonic() - started
            if waited > timeout:
                raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
            if waited - last_report >= 10:
                self.say(f"   … still waiting for {what} ({waited:.0f}s)")
                last_report = waited
            time.sleep(0.5)

    def status_of(self, sha: str, state: str) -> str | None:
        for line in self.note(sha).splitlines():
            if line.startswith(f"gitops-canary/{APP}: {state}:"):
                return line.split(": ", 2)[2]
        return None

    def success_rates(self) -> dict[str, float]:
        """Per variant, the share of good responses over the last 20 seconds, from Prometheus
        (short, so pods of the previous step do not blur the figure)."""
        assert self.prometheus is not None
        rates = {}
        for variant, regex in VARIANT_PODS:
            query = (f'sum(rate(requests_total{{pod=~"{regex}", custom_status="good"}}[20s])) / '
                     f'sum(rate(requests_total{{pod=~"{regex}"}}[20s]))')
            result = self.prometheus.query(query)
            if result:
                rates[variant] = float(result[0]["value"][1])
        return rates

    def p99s(self) -> dict[str, float]:
        """Per variant, the 99th percentile of GET /'s duration over the last 20 seconds, in
        seconds, from Prometheus (histogram_quantile over the app's buckets)."""
        assert self.prometheus is not None
        found = {}
        for variant, regex in VARIANT_PODS:
            query = (f"histogram_quantile(0.99, sum by (le) (rate(request_duration_seconds_bucket"
                     f'{{pod=~"{regex}"}}[20s])))')
            result = self.prometheus.query(query)
            if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                found[variant] = float(result[0]["value"][1])
        return found


def replicas(found: dict[str, Any]) -> dict[str, int]:
    return {name: int(d.status.ready_replicas or 0) for name, d in found.items()}


def env_of(d: client.V1Deployment, name: str, default: str = "?") -> str:
    for env in d.spec.template.spec.containers[0].env or []:
        if env.name == name:
            return str(env.value)
    return default


def rate_of(d: client.V1Deployment) -> str:
    return env_of(d, "SUCCESS_RATE")


def latency_of(d: client.V1Deployment) -> str:
    """LATENCY_MS in the spec; "0" when unset (the app's default)."""
    return env_of(d, "LATENCY_MS", "0")


def ready(found: dict[str, client.V1Deployment], wanted: dict[str, int]) -> bool:
    return sorted(found) == sorted(wanted) and all(
        (found[name].status.ready_replicas or 0) == count for name, count in wanted.items())


@dataclass(frozen=True)
class Step:
    sha: str
    deployments: dict[str, int]  # name -> ready replicas, as seen at the step's key moment
    rates: dict[str, str]  # name -> SUCCESS_RATE in its spec
    status: str  # the commit status description the step waited for
    seconds: float  # from the push to that status
    measured: dict[str, float] = field(default_factory=dict)  # success rates from Prometheus
    latencies: dict[str, str] = field(default_factory=dict)  # name -> LATENCY_MS in its spec


def first_version(story: Story) -> tuple[Step, Step]:
    """SUCCESS_RATE 10, first deployment: a canary only, then a promote commit makes it stable."""
    story.say("\n1. The first version (SUCCESS_RATE 10) is pushed.")
    pushed = time.monotonic()
    sha = story.commit("sampleapp: first version (SUCCESS_RATE 10)")
    story.wait(lambda: ready(story.deployments(), {f"{APP}-canary": 1}), "the canary")
    status = story.wait(lambda: story.status_of(sha, "success"), "the status")
    found = story.deployments()
    canary = Step(sha, replicas(found), {n: rate_of(d) for n, d in found.items()}, status,
                  time.monotonic() - pushed)
    story.say(f"   {sha[:7]}: only {APP}-canary runs ({canary.deployments}); status: {status}")

    story.say("   `gitops-canary promote sampleapp` writes the approval; git push.")
    pushed = time.monotonic()
    approval = story.promote()
    story.wait(lambda: ready(story.deployments(), {APP: 4}), "stable with 4 ready replicas")
    status = story.wait(lambda: _containing(story.status_of(sha, "success"), "promoted"),
                        "the promoted status")
    found = story.deployments()
    promoted = Step(approval, replicas(found), {n: rate_of(d) for n, d in found.items()},
                    status, time.monotonic() - pushed)
    story.say(f"   stable {APP} runs SUCCESS_RATE {promoted.rates[APP]} with 4 replicas; "
              f"status: {status}")
    story.start_load()
    return canary, promoted


def better_version(story: Story) -> tuple[Step, Step]:
    """SUCCESS_RATE 20: baseline and canary, the analysis passes, a promote commit."""
    story.say("\n2. A better version (SUCCESS_RATE 20) is pushed.")
    pushed = time.monotonic()
    sha = story.set_success_rate(20, "sampleapp: success rate 20")
    wanted = {APP: 4, f"{APP}-baseline": 1, f"{APP}-canary": 1}
    story.wait(lambda: ready(story.deployments(), wanted), "baseline and canary")
    story.say(f"   {APP}-baseline (stable's spec) and {APP}-canary (the new one), 1 replica each "
              f"(25% of 4) next to stable's 4; the Service sends traffic to all three.")
    story.say(f"   the analysis starts after the {story.timing.warmup} warm-up …")
    status = story.wait(lambda: story.status_of(sha, "success") or _failed(story, sha),
                        "the analysis verdict")
    found = story.deployments()
    judged = Step(sha, replicas(found), {n: rate_of(d) for n, d in found.items()}, status,
                  time.monotonic() - pushed, story.success_rates())
    story.say(f"   verdict on {sha[:7]}: {status}")
    story.say(f"   Prometheus, last 20s: {_percent(judged.measured)}")

    story.say("   promote: `gitops-canary promote sampleapp`; git push.")
    pushed = time.monotonic()
    approval = story.promote()
    story.wait(lambda: ready(found := story.deployments(), {APP: 4})
               and rate_of(found[APP]) == "20", "stable to run SUCCESS_RATE 20")
    status = story.wait(lambda: _containing(story.status_of(sha, "success"), "promoted"),
                        "the promoted status")
    found = story.deployments()
    promoted = Step(approval, replicas(found), {n: rate_of(d) for n, d in found.items()},
                    status, time.monotonic() - pushed)
    story.say(f"   stable runs SUCCESS_RATE 20; baseline and canary are gone; status: {status}")
    return judged, promoted


def worse_version(story: Story) -> tuple[Step, Step, tuple[str, int], tuple[str, int]]:
    """SUCCESS_RATE 5: the analysis fails; `git revert` deletes the variants, stable untouched."""
    story.say("\n3. A worse version (SUCCESS_RATE 5) is pushed.")
    pushed = time.monotonic()
    sha = story.set_success_rate(5, "sampleapp: success rate 5")
    wanted = {APP: 4, f"{APP}-baseline": 1, f"{APP}-canary": 1}
    story.wait(lambda: ready(story.deployments(), wanted), "baseline and canary")
    status = story.wait(lambda: _failed(story, sha) or story.status_of(sha, "success"),
                        "the analysis verdict")
    found = story.deployments()
    judged = Step(sha, replicas(found), {n: rate_of(d) for n, d in found.items()}, status,
                  time.monotonic() - pushed, story.success_rates())
    story.say(f"   verdict on {sha[:7]}: {status}")
    story.say(f"   Prometheus, last 20s: {_percent(judged.measured)}")
    rejected, stable_before, stable_after = _reject(story, sha, found)
    story.say(f"   baseline and canary deleted; stable untouched (same uid, generation "
              f"{stable_after[1]}), still SUCCESS_RATE {rejected.rates[APP]}; status: "
              f"{rejected.status}")
    return judged, rejected, stable_before, stable_after


def _reject(story: Story, sha: str, found: dict[str, client.V1Deployment]
            ) -> tuple[Step, tuple[str, int], tuple[str, int]]:
    """`git revert HEAD` of a failed canary: the variants go, stable (uid, generation) stays."""
    before = found[APP]
    stable_before = (str(before.metadata.uid), int(before.metadata.generation))
    story.say("   reject: `git revert HEAD`; git push.")
    pushed = time.monotonic()
    revert = story.revert()
    story.wait(lambda: ready(story.deployments(), {APP: 4}), "baseline and canary to go")
    status = story.wait(lambda: _containing(story.status_of(sha, "failure"), "rejected"),
                        "the rejected status")
    found = story.deployments()
    after = found[APP]
    stable_after = (str(after.metadata.uid), int(after.metadata.generation))
    rejected = Step(revert, replicas(found), {n: rate_of(d) for n, d in found.items()}, status,
                    time.monotonic() - pushed,
                    latencies={n: latency_of(d) for n, d in found.items()})
    return rejected, stable_before, stable_after


def slower_version(story: Story) -> tuple[Step, Step, tuple[str, int], tuple[str, int]]:
    """LATENCY_MS 300, success rate unchanged: the latency metric fails the analysis; `git
    revert` deletes the variants, stable untouched."""
    story.say("\n4. A slower version is pushed: every request sleeps 300 ms (LATENCY_MS 300); "
              "the success rate is unchanged (SUCCESS_RATE 20).")
    pushed = time.monotonic()
    sha = story.set_latency(300, "sampleapp: latency 300 ms")
    wanted = {APP: 4, f"{APP}-baseline": 1, f"{APP}-canary": 1}
    story.wait(lambda: ready(story.deployments(), wanted), "baseline and canary")
    status = story.wait(lambda: _failed(story, sha) or story.status_of(sha, "success"),
                        "the analysis verdict")
    found = story.deployments()
    judged = Step(sha, replicas(found), {n: rate_of(d) for n, d in found.items()}, status,
                  time.monotonic() - pushed, story.success_rates(),
                  {n: latency_of(d) for n, d in found.items()})
    story.say(f"   verdict on {sha[:7]}: {status}")
    story.say(f"   caught: {caught(status, _objective(story))}")
    p99 = ", ".join(f"{name} {seconds:.3g}s" for name, seconds in story.p99s().items())
    story.say(f"   Prometheus, last 20s: p99 {p99}; {_percent(judged.measured)}")
    rejected, stable_before, stable_after = _reject(story, sha, found)
    story.say(f"   baseline and canary deleted; stable untouched (same uid, generation "
              f"{stable_after[1]}), still without delay (LATENCY_MS {rejected.latencies[APP]}); "
              f"status: {rejected.status}")
    return judged, rejected, stable_before, stable_after


LATENCY_STATUS = re.compile(
    r"latency canary (?P<canary>[\d.]+%) vs (?P<baseline>[\d.]+%) fast enough "
    r"\([^;)]*; p99 (?P<p99_canary>[\d.e+-]+)s vs (?P<p99_baseline>[\d.e+-]+)s\)")


def caught(status: str, objective: float | None = None) -> str:
    """What the latency metric's status says, in words: p99 and the share within the
    objective, canary against baseline."""
    match = LATENCY_STATUS.search(status)
    if match is None:
        return f"see the status ({status})"
    within = f"within {objective:g}s" if objective is not None else "within the objective"
    return (f"latency, p99 {match['p99_canary']}s on the canary vs {match['p99_baseline']}s on "
            f"the baseline: {match['canary']} of the canary's requests {within} vs "
            f"{match['baseline']} of the baseline's")


def _objective(story: Story) -> float | None:
    policy = yaml.safe_load((story.app_dir / "canary.yaml").read_text()) or {}
    for metric in (policy.get("analysis") or {}).get("metrics") or []:
        if metric.get("kind") == "histogram" and metric.get("objective") is not None:
            return float(metric["objective"])
    return None


def _containing(status: str | None, word: str) -> str | None:
    return status if status is not None and word in status else None


def _failed(story: Story, sha: str) -> str | None:
    for state in ("failure", "error"):
        found = story.status_of(sha, state)
        if found:
            return f"{state}: {found}"
    return None


def _percent(rates: dict[str, float]) -> str:
    return ", ".join(f"{name} {100 * value:.1f}% good" for name, value in rates.items())
