"""One app's failure is that app's: hostile folders each get one error status while a healthy
app beside them still deploys; a failed apply is retried until it lands (issue 10). Real git,
real cluster; faults are injected only at the edge seams, where a real server would fail."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from controller.domain.types import Sha, StatusState
from controller.errors import TransientError
from tests.controller.conftest import Harness, deployment, service
from tests.controller.test_canary_flow import only, ready

pytestmark = pytest.mark.cluster


class CountingSink:
    """The real notes sink, counting what reaches it: a status is posted once, not per loop."""

    def __init__(self, sink: Any) -> None:
        self.sink, self.posts = sink, Counter[tuple[str, str, str]]()

    def post(self, app: str, sha: Sha, state: StatusState, description: str) -> bool:
        self.posts[(app, sha, str(state))] += 1
        posted: bool = self.sink.post(app, sha, state, description)
        return posted


def healthy(harness: Harness, name: str = "good", rate: str = "10") -> None:
    harness.repo.write(f"apps/{name}/canary.yaml", {"namespace": harness.namespace,
                                                    "bootstrap": "direct"})
    harness.repo.write(f"apps/{name}/deployment.yml", deployment(name, rate))
    harness.repo.write(f"apps/{name}/service.yml", service(name))


HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "labels not a mapping": ({"metadata": {"labels": "oops"}}, "metadata.labels"),
    "spec not a mapping": ({"spec": "x"}, "spec"),
    "replicas a string": ({"spec": {"replicas": "3"}}, "replicas"),
    "volumes of strings": ({"spec": {"template": {"spec": {"volumes": ["x"]}}}}, "volumes"),
    "a namespace it may not write": ({"metadata": {"namespace": "kube-system"}},
                                     "namespace kube-system is not allowed"),
}


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged(base[key], value)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_folder_gets_one_error_status_and_a_healthy_app_still_deploys(
        harness: Harness, case: str) -> None:
    patch, words = HOSTILE[case]
    sink = CountingSink(harness.reconciler.sink)
    harness.reconciler.sink = sink
    healthy(harness)
    bad = merged(deployment("bad", "10"), patch)
    harness.repo.write("apps/bad/canary.yaml", {"namespace": harness.namespace,
                                                "bootstrap": "direct"})
    harness.repo.write("apps/bad/deployment.yml", bad)
    sha = harness.repo.commit(f"a healthy app, and one with {case}")

    harness.settle(lambda: (d := only(harness, "good")) and ready(d["good"], 4), "good deployed")
    for _ in range(5):
        harness.reconcile()
    note = harness.repo.note(sha)
    line = next(line for line in note.splitlines() if line.startswith("gitops-canary/bad:"))
    assert ": error: " in line, note
    assert words in line, note
    assert "apps/bad/" in line or "kube-system" in line, line
    assert sink.posts[("bad", sha, "error")] == 1, sink.posts
    assert "gitops-canary/good: success: deployed to stable" in note


@pytest.mark.parametrize(("files", "words"), [
    ({"README.md": "docs only"}, "no file matches *.yml, *.yaml"),
    ({"notes.yaml": "# a comment, no object\n"}, "the files matching *.yml, *.yaml hold no"),
])
def test_an_app_without_manifests_is_an_error_not_deploying_forever(
        harness: Harness, files: dict[str, str], words: str) -> None:
    healthy(harness)
    harness.repo.write("apps/empty/canary.yaml", {"namespace": harness.namespace})
    for name, text in files.items():
        harness.repo.write(f"apps/empty/{name}", text)
    sha = harness.repo.commit("an app folder with nothing to apply")
    harness.settle(lambda: (d := only(harness, "good")) and ready(d["good"], 4), "good deployed")
    line = harness.settle(lambda: next((line for line in harness.repo.note(sha).splitlines()
                                        if line.startswith("gitops-canary/empty:")), None),
                          "the empty app's status")
    assert ": error: apps/empty/canary.yaml: manifests: " in line, line
    assert words in line, line


def test_an_app_whose_reconcile_crashes_does_not_stop_the_others(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure nobody expected (a bug, here injected into the observe stage of one app):
    a log line, one error status, backoff for that app; the others go on."""
    sink = CountingSink(harness.reconciler.sink)
    harness.reconciler.sink = sink
    healthy(harness, "aaa")
    healthy(harness, "zzz")
    sha = harness.repo.commit("two apps")
    real = harness.reconciler._observe

    def observe(head: Any, folder: Any, *args: Any) -> Any:
        if folder.path == "apps/aaa":
            raise KeyError("a bug")
        return real(head, folder, *args)

    monkeypatch.setattr(harness.reconciler, "_observe", observe)
    harness.settle(lambda: (d := only(harness, "zzz")) and ready(d["zzz"], 4), "zzz deployed")
    for _ in range(5):
        harness.reconcile()
    assert "gitops-canary/aaa: error: apps/aaa: internal error (KeyError" in \
        harness.repo.note(sha)
    assert sink.posts[("aaa", sha, "error")] == 1


def test_an_apply_that_fails_transiently_is_applied_on_the_next_reconcile(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record marks a change as done only after it is applied: a replicas-only commit
    whose apply fails once (an admission webhook down, say) lands on the next reconcile."""
    healthy(harness)
    harness.repo.commit("good")
    harness.settle(lambda: (d := only(harness, "good")) and ready(d["good"], 4)
                   and harness.record("good").phase == "Stable", "good deployed")
    harness.repo.write("apps/good/deployment.yml", deployment("good", "10", replicas=6))
    harness.repo.commit("good: 6 replicas")
    kube = harness.reconciler.kube
    real, failures = kube.apply, list[Any]()

    def apply_failing_once(objects: Any) -> None:
        if not failures:
            failures.append(objects)
            raise TransientError("admission webhook unreachable (injected)")
        real(objects)

    monkeypatch.setattr(kube, "apply", apply_failing_once)
    harness.reconcile()
    assert failures, "the apply was attempted"
    assert harness.deployments()["good"].spec.replicas == 4
    harness.settle(lambda: harness.deployments()["good"].spec.replicas == 6,
                   "the 6 replicas applied on a later reconcile")


def test_a_replicas_change_during_a_promotion_is_not_lost(harness: Harness) -> None:
    """A commit that changes no pod, pushed while stable rolls out: applied, then done."""
    healthy(harness)
    harness.repo.commit("good")
    harness.reconcile()  # applied: the promotion (bootstrap: direct) is under way
    assert harness.record("good").phase == "Promoting"
    harness.repo.write("apps/good/deployment.yml", deployment("good", "10", replicas=6))
    harness.repo.commit("good: 6 replicas")
    harness.settle(lambda: (d := only(harness, "good")) and ready(d["good"], 6)
                   and harness.record("good").phase == "Stable", "6 replicas, stable")
