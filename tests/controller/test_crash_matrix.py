"""Kill the controller (SIGKILL) after a write, anywhere in the story, restart it, and it
converges: variants exist only while a canary is in flight, stable was rolled out only by
promotions, nothing leaks, and no commit's status goes back to an earlier one (issue 10).

The controller runs as a real process against the real cluster and a real bare repository; a
failpoint (controller/failpoints.py) kills it at the N-th pass of a named point, and a
supervisor starts it again (without the failpoint), as a Deployment's restart would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.failpoints import ENV
from tests.controller.conftest import DeployRepo, deployment, git, service
from tests.controller.test_canary_flow import rate

pytestmark = pytest.mark.cluster

APP = "apps/sampleapp"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Supervised:
    """A `gitops-canary run` process, started again whenever it dies."""

    command: list[str]
    failpoint: str
    log: Path
    process: subprocess.Popen[bytes] | None = None
    kills: list[int] = field(default_factory=list)

    def ensure(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        first = self.process is None
        if self.process is not None:
            self.kills.append(self.process.returncode)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop(ENV, None)
        if first:
            env[ENV] = self.failpoint
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, env=env, stdout=out, stderr=out)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Story:
    repo: DeployRepo
    namespace: str
    api: client.ApiClient
    controller: Supervised

    def deployments(self) -> dict[str, client.V1Deployment]:
        items = client.AppsV1Api(self.api).list_namespaced_deployment(self.namespace).items
        return {str(d.metadata.name): d for d in items}

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 90) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.controller.ensure()
            found = condition()
            if found:
                return found
            time.sleep(0.3)
        tail = self.controller.log.read_text()[-3000:]
        pytest.fail(f"not converged after {timeout:.0f}s: {what}\n--- controller log ---\n{tail}")

    def stable(self, rate_: str, *variants: str) -> bool:
        found = self.deployments()
        names = sorted(["sampleapp", *(f"sampleapp-{v}" for v in variants)])
        return sorted(found) == names and rate(found["sampleapp"]) == rate_ and all(
            d.status.ready_replicas == d.spec.replicas for d in found.values())

    def write(self, rate_: str, **policy: Any) -> None:
        self.repo.write(f"{APP}/canary.yaml", {"namespace": self.namespace, **policy})
        self.repo.write(f"{APP}/deployment.yml", deployment("sampleapp", rate_))
        self.repo.write(f"{APP}/service.yml", service("sampleapp"))


@pytest.fixture
def story(deploy_repo: DeployRepo, namespace: str, state_namespace: str,
          api_client: client.ApiClient, kubeconfig: Path, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[Story]:
    command = [sys.executable, "-m", "controller", "run", "--repo", str(deploy_repo.remote),
               "--interval", "1s", "--kubeconfig", str(kubeconfig), "--namespaces", namespace,
               "--state-namespace", state_namespace, "--workdir", str(tmp_path / "mirror"),
               "--identity", "crash-matrix",  # a restart keeps its identity, as in a pod
               "--metrics-address", ""]
    controller = Supervised(command, request.param, tmp_path / "controller.log")
    s = Story(deploy_repo, namespace, api_client, controller)
    try:
        yield s
    finally:
        controller.stop()


POINTS = ["apply:1", "apply:2", "apply:4", "delete:1", "delete:3", "record-saved:2",
          "record-saved:7", "status-posted:1", "status-posted:5"]


@pytest.mark.parametrize("story", POINTS, indirect=True)
def test_killed_after_any_write_the_controller_converges(story: Story) -> None:
    repo = story.repo
    # 1. First version: canary only, then the approval makes it stable.
    story.write("10")
    first = repo.commit("first version")
    story.until(lambda: sorted(story.deployments()) == ["sampleapp-canary"], "the first canary")
    story.write("10", promote=first)
    repo.commit("promote the first version")
    story.until(lambda: story.stable("10"), "stable 10")
    # 2. A canary, promoted.
    story.write("20", promote=first)
    second = repo.commit("rate 20")
    story.until(lambda: story.stable("10", "baseline", "canary"), "baseline and canary of 20")
    story.write("20", promote=second)
    repo.commit("promote rate 20")
    story.until(lambda: story.stable("20"), "stable 20")
    # 3. A canary, rejected by a revert.
    story.write("30", promote=second)
    third = repo.commit("rate 30")
    story.until(lambda: story.stable("20", "baseline", "canary"), "baseline and canary of 30")
    git(repo.clone, "revert", "--no-edit", "HEAD")
    repo.push()
    story.until(lambda: story.stable("20"), "the rate-30 canary rejected")
    # 4. Back to what stable ran before: a direct rollback.
    story.write("10", promote=second)
    back = repo.commit("back to rate 10")
    story.until(lambda: story.stable("10"), "rolled back to 10")

    # Each transition's final status, on its own commit (never back to an earlier one).
    for sha, want in ((first, "success: promoted"), (second, "success: promoted"),
                      (third, "failure: rejected"), (back, "success: rolled back")):
        story.until(partial(says, repo, sha, f"gitops-canary/sampleapp: {want}"),
                    f"{want!r} on {sha[:7]}")
    assert story.controller.kills == [-9], "the failpoint killed the controller exactly once"
    # Stable was rolled out by the promotions and the rollback only: 10, 20, 10 again.
    stable = story.deployments()["sampleapp"]
    assert stable.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    # Nothing leaked: no variant of any kind.
    core = client.CoreV1Api(story.api)
    configs = {c.metadata.name for c in core.list_namespaced_config_map(story.namespace).items}
    assert configs <= {"kube-root-ca.crt"}, configs


def says(repo: DeployRepo, sha: str, line: str) -> bool:
    return line in repo.note(sha)
