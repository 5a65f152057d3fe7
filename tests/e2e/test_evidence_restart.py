"""The evidence survives the controller: killed mid-analysis and started again, it goes on from
the looks its record keeps instead of starting over.

The canary behaves exactly as the baseline (its spec only writes out LATENCY_MS's default), and
the success rate's tolerance is so small that no pass can come for a long while: the analysis
stays undecided, look after look, across the restart.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.story import APP, Story, Timing, first_version, ready

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

BOTH = {APP: 4, f"{APP}-baseline": 1, f"{APP}-canary": 1}


def series(story: Story, revision: str) -> dict[str, Any] | None:
    """`gitops-canary status sampleapp --series`, once it holds this canary's evidence."""
    try:
        text = story.cli("status", APP, "--series", "--state-namespace", story.state_namespace)
    except subprocess.CalledProcessError:
        return None  # no analysis recorded yet
    document: dict[str, Any] = json.loads(text)
    return document if document.get("revision") == revision else None


def looks(document: dict[str, Any] | None) -> int:
    return len(document["metrics"][0]["series"]) if document else 0


def requests_seen(document: dict[str, Any]) -> int:
    """Both variants' requests in the success rate's looks (a look without data: none)."""
    success = next(m for m in document["metrics"] if m["name"] == "success-rate")
    return sum(side["total"] for step in success["series"]
               for side in (step["baseline"], step["canary"]) if side)


def test_the_evidence_survives_a_controller_restart(kubeconfig: Path, tmp_path: Path) -> None:
    story = Story(tmp_path / "story", namespace=f"restart-{uuid.uuid4().hex[:6]}",
                  timing=Timing(warmup="5s", interval="5s", deadline="10m", poll="2s",
                                qps=100), say=print)
    try:
        story.up(kubeconfig)
        policy_file = story.app_dir / "canary.yaml"
        policy = yaml.safe_load(policy_file.read_text())
        metrics = policy["analysis"]["metrics"]
        assert [m["name"] for m in metrics] == ["success-rate", "latency"]
        metrics[0]["tolerance"] = 0.0001  # 0.01 points: no pass for a long while
        policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))
        first_version(story)

        sha = story.set_env("LATENCY_MS", "0", "sampleapp: LATENCY_MS 0 (its default)")
        story.wait(lambda: ready(story.deployments(), BOTH), "baseline and canary")
        story.wait(lambda: looks(series(story, sha)) >= 2, "two looks in the record", 120)

        story.kill_controller()
        before = series(story, sha)  # what the record held when the controller died
        assert before is not None
        assert looks(before) >= 2
        assert story.status_of(sha, "success") is None
        assert story.status_of(sha, "failure") is None

        story.start_controller()
        after = story.wait(lambda: (found := series(story, sha)) and looks(found) > looks(before)
                           and found, "a look by the new controller", 120)

        for old, new in zip(before["metrics"], after["metrics"], strict=True):
            assert new["series"][:len(old["series"])] == old["series"], old["name"]
            assert {k: v for k, v in new.items() if k != "series"} == \
                {k: v for k, v in old.items() if k != "series"}
        assert requests_seen(after) > requests_seen(before) > 0
        # Still undecided: the same analysis going on, not a new one started over.
        assert story.status_of(sha, "success") is None
        assert story.status_of(sha, "failure") is None
        assert "analysing" in (story.status_of(sha, "pending") or "")
        print(f"looks: {looks(before)} before the restart, {looks(after)} after; requests "
              f"{requests_seen(before)} -> {requests_seen(after)}")
    finally:
        story.down()
