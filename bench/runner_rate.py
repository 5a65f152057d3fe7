"""How fast the local cluster's Load sends requests, next to the plainest client there is.

`hack/localcluster/runner.py`'s Load spreads GETs over a Service's ready endpoints, paced at
`qps` by a few worker threads. Its test asserts only what it does (spread, ready endpoints
only); how fast it goes depends on the machine, so it is measured here, against a reference
taken in the same run on the same processes: one thread, one keep-alive httpx client, GETs in
a loop to one sample-app process. Figures:

- paced: Load at the setting its test used (qps 60 for 2 s): requests/s sent, and as a ratio
  to the 60 asked for (the old test wanted at least 80 requests, a ratio of 0.67);
- flat out: Load at its highest qps (2000) with its default 4 workers, over 3 processes;
- reference: the plain loop; the ratio flat out / reference says what Load's pacing, threads
  and endpoint picking cost (above 1: its workers gain more than that costs).

The sample app is 3 real processes (PodRunner) behind a Service of a 3-replica Deployment.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/runner_rate.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
from benchlib import (
    Summary,
    api_client,
    deployment,
    kubeconfig,
    machine,
    namespace,
    say,
    service,
    wait_for,
)
from kubernetes import client

from localcluster.runner import Load, PodRunner, check_loopback

APP = "sampleapp"
REPLICAS = 3
PACED_QPS, PACED_SECONDS = 60.0, 2.0  # what tests/localenv/test_runner.py used to time
FLAT_OUT_QPS = 2000.0  # Load's ceiling


def plain_loop(ip: str, seconds: float) -> float:
    """Requests/s of one thread GETting one process in a loop, keep-alive."""
    url = f"http://{check_loopback(ip)}:8080/"
    with httpx.Client(trust_env=False, timeout=1.0) as http:
        sent, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            http.get(url)
            sent += 1
        return sent / (time.monotonic() - started)


def load_rate(api: client.ApiClient, ns: str, qps: float, seconds: float) -> float:
    """Requests/s Load sent (answered or not) over the time it ran."""
    with Load(api, ns, APP, "http", qps=qps, duration=seconds) as load:
        stats = load.wait(timeout=seconds + 30)
    if set(stats.by_status) != {"200"}:
        say(f"PROBLEM: not every answer was 200: {stats.by_status}")
    return stats.sent / stats.elapsed


def ready_ips(api: client.ApiClient, ns: str) -> set[str]:
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={APP}").items
    return {a for s in slices for e in s.endpoints or [] if e.conditions.ready
            for a in e.addresses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each flat-out and reference measurement")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    paced, flat_out, reference = [], [], []
    with kubeconfig() as path, api_client(path) as api, namespace(api, "bench-load") as ns, \
            tempfile.TemporaryDirectory() as state:
        client.AppsV1Api(api).create_namespaced_deployment(ns, deployment(APP, "100", REPLICAS))
        client.CoreV1Api(api).create_namespaced_service(ns, service(APP))
        with PodRunner(api, Path(state), [ns]) as runner:
            running = runner.wait_serving(REPLICAS, timeout=60)
            ips = set(running.values())
            wait_for(lambda: ready_ips(api, ns) == ips, "the EndpointSlice of the 3 processes",
                     timeout=60)
            one = sorted(ips)[0]
            say(f"{REPLICAS} processes serving in {ns}; {args.repeats} rounds")
            for _ in range(args.repeats):
                paced.append(load_rate(api, ns, PACED_QPS, PACED_SECONDS))
                flat_out.append(load_rate(api, ns, FLAT_OUT_QPS, args.seconds))
                reference.append(plain_loop(one, args.seconds))
    paced_s, flat_s, ref_s = (Summary.of(x) for x in (paced, flat_out, reference))
    print(f"Load request rates ({machine(load_at_start)})")
    print(f"paced at {PACED_QPS:g}/s for {PACED_SECONDS:g}s: {paced_s.text('req/s', digits=1)}; "
          f"ratio to the asked rate (median) {paced_s.median / PACED_QPS:.2f}")
    print(f"flat out (qps {FLAT_OUT_QPS:g}, 4 workers, {REPLICAS} processes): "
          f"{flat_s.text('req/s', digits=0)}")
    print(f"reference (1 thread, 1 process, keep-alive): {ref_s.text('req/s', digits=0)}")
    print(f"ratio flat out / reference (medians): {flat_s.median / ref_s.median:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
