"""The seed guide's whole story, end to end, as the demo plays it — with short timings.

Real cluster, real Prometheus scraping real sample-app processes on the pods' IPs, real load
through the Service's endpoints, the controller as a real process, and git as the only
interface: push, promote commit, revert. The analysis is the example's: success rate and
latency, both critical.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from localcluster.story import (
    Story,
    Timing,
    better_version,
    caught,
    first_version,
    slower_version,
    worse_version,
)

pytestmark = [pytest.mark.cluster, pytest.mark.prometheus]

APP = "sampleapp"
BOTH = {APP: 4, f"{APP}-baseline": 1, f"{APP}-canary": 1}


def test_the_seed_story(kubeconfig: Path, tmp_path: Path) -> None:
    story = Story(tmp_path / "story", namespace=f"e2e-{uuid.uuid4().hex[:6]}",
                  timing=Timing(warmup="10s", interval="5s", deadline="90s", poll="2s",
                                qps=100), say=print)
    try:
        story.up(kubeconfig)

        canary, promoted = first_version(story)
        assert canary.deployments == {f"{APP}-canary": 1}
        assert canary.rates == {f"{APP}-canary": "10"}
        assert canary.status.startswith("awaiting promotion: first deployment")
        assert promoted.deployments == {APP: 4}
        assert promoted.rates == {APP: "10"}
        assert promoted.status.startswith("promoted: stable runs")

        # Passes once both metrics pass: the success rate (much better) and latency (the same).
        judged, better = better_version(story)
        assert judged.deployments == BOTH
        assert judged.rates == {APP: "10", f"{APP}-baseline": "10", f"{APP}-canary": "20"}
        assert judged.status.startswith("pass: success-rate canary "), judged.status
        assert "% good (" in judged.status
        # Non-inferiority: the whole confidence sequence lies above -0.5 pts (its lower edge
        # may still be below zero: "better" is not what a pass claims).
        bounds = re.search(r": no worse than 0\.5 pts \(95% CS \[([-+][\d.]+), ([-+][\d.]+)\]\)",
                           judged.status)
        assert bounds is not None, judged.status
        assert -0.5 < float(bounds[1]) < float(bounds[2])
        # The evidence is shortened (…) if need be, never what comes next.
        assert judged.status.endswith("; awaiting promotion"), judged.status
        assert len(judged.status) <= len("success: ") + 140
        assert 0.05 < judged.measured["baseline"] < 0.2
        assert 0.1 < judged.measured["canary"] < 0.3
        assert better.deployments == {APP: 4}
        assert better.rates == {APP: "20"}
        assert better.status.startswith("promoted")

        failed, rejected, stable_before, stable_after = worse_version(story)
        assert failed.deployments == BOTH
        assert failed.rates == {APP: "20", f"{APP}-baseline": "20", f"{APP}-canary": "5"}
        assert failed.status.startswith("failure: fail: "), failed.status
        assert ": success-rate canary " in failed.status
        assert ": worse, e=" in failed.status
        assert rejected.deployments == {APP: 4}
        assert rejected.rates == {APP: "20"}
        assert rejected.status.startswith("rejected")
        assert stable_after == stable_before  # a reject never touches stable

        # The same success rate, 300 ms per request: caught by the latency metric alone.
        slow, reverted, stable_before, stable_after = slower_version(story)
        assert slow.deployments == BOTH
        assert slow.rates == {APP: "20", f"{APP}-baseline": "20", f"{APP}-canary": "20"}
        assert slow.latencies == {APP: "0", f"{APP}-baseline": "0", f"{APP}-canary": "300"}
        assert slow.status.startswith("failure: fail: "), slow.status
        assert ": latency canary " in slow.status
        assert " fast enough (" in slow.status
        assert ": slower, e=" in slow.status
        assert "success-rate worse" not in slow.status
        assert caught(slow.status).startswith("latency, p99 ")
        assert reverted.deployments == {APP: 4}
        assert reverted.rates == {APP: "20"}
        assert reverted.latencies == {APP: "0"}
        assert reverted.status.startswith("rejected")
        assert stable_after == stable_before

        print(f"push → status: first canary {canary.seconds:.1f}s, promote "
              f"{promoted.seconds:.1f}s, pass {judged.seconds:.1f}s, promote "
              f"{better.seconds:.1f}s, fail {failed.seconds:.1f}s, revert {rejected.seconds:.1f}s, "
              f"latency fail {slow.seconds:.1f}s, revert {reverted.seconds:.1f}s")
    finally:
        story.down()
