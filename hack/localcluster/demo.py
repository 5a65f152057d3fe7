"""The README's demo: the seed guide's canary story, live, narrated.

    hack/demo            # set-up included; Ctrl-C stops and cleans up
    hack/demo --keep     # leave everything running afterwards, for exploring

It brings up the local cluster, Prometheus, the pod runner and load, makes a deploy repository
from deploy-repo-example/, runs the controller, and plays the story with git: the first version
promoted to stable; a better one analysed, passing, promoted; a worse one failing, reverted;
a slower one (same success rate, 300 ms per request) failing on latency, reverted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from localcluster import cluster as localcluster
from localcluster.story import (
    REPO,
    Story,
    better_version,
    first_version,
    slower_version,
    worse_version,
)

STATE = REPO / ".localcluster" / "demo"


def say(text: str) -> None:
    print(text, flush=True)


def where_to_look(story: Story) -> None:
    assert story.prometheus is not None
    say(f"""
Where to look
  Prometheus        {story.prometheus.url}
    all sampleapp pods:     rate(requests_total{{pod=~"sampleapp-.*", custom_status="good"}}[1m])
    baseline and canary:    rate(requests_total{{pod=~"sampleapp-baseline-.*|sampleapp-canary-.*", custom_status="good"}}[1m])
    p99 latency per pod:    histogram_quantile(0.99, sum by (pod, le) (rate(request_duration_seconds_bucket{{pod=~"sampleapp-.*"}}[1m])))
  controller        http://127.0.0.1:{story.metrics_port}/metrics   (log: {story.state}/logs/controller.log)
  statuses          cd {story.clone} && git fetch origin refs/notes/gitops-canary:refs/notes/gitops-canary && git log --notes=gitops-canary
  apps              KUBECONFIG={story.kubeconfig} {REPO}/.venv/bin/gitops-canary status --state-namespace {story.state_namespace}
  evidence          KUBECONFIG={story.kubeconfig} {REPO}/.venv/bin/gitops-canary status sampleapp --series --state-namespace {story.state_namespace}
  kubectl           KUBECONFIG={story.kubeconfig} {STATE}/cluster/bin/kubectl -n {story.namespace} get deploy,pods -o wide""")  # noqa: E501


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="keep the cluster, Prometheus, load and controller running")
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    # Idempotent: whatever an earlier demo left is stopped and its cluster data forgotten.
    localcluster.down(STATE / "cluster")
    localcluster.reset_data(STATE / "cluster")
    story = Story(STATE, say=say)
    try:
        story.up()
        say(f"the controller watches {story.remote} (a local path: it reacts to every push).")
        canary, promoted = first_version(story)
        judged, better = better_version(story)
        failed, rejected, _, _ = worse_version(story)
        slow, reverted, _, _ = slower_version(story)
        say(f"\nThe story took {time.monotonic() - started:.0f}s. From push to status: "
            f"first canary {canary.seconds:.1f}s, promote {promoted.seconds:.1f}s, "
            f"analysis pass {judged.seconds:.1f}s, promote {better.seconds:.1f}s, "
            f"analysis fail {failed.seconds:.1f}s, revert {rejected.seconds:.1f}s, "
            f"latency fail {slow.seconds:.1f}s, revert {reverted.seconds:.1f}s.")
        say("\nThe statuses, as git shows them (git log --notes=gitops-canary):")
        say("\n".join(f"   {line}" for line in story.notes_log().splitlines() if line))
        say("\nThe app, as `gitops-canary status` shows it:")
        say(story.cli("status", "--state-namespace", story.state_namespace))
        where_to_look(story)
        if args.keep:
            say("\n--keep: everything keeps running; Ctrl-C stops it all.")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up …")
    except TimeoutError as error:
        say(f"\nthe demo got stuck: {error}; logs in {STATE}/logs and {STATE}/runner")
        return 1
    finally:
        story.down()
        say(f"stopped; nothing of the demo is running (state kept in {STATE}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
