"""Scale: one controller and 10, 100, 300, 1,000 apps, each figure beside a reference measured in
the same run.

Per size, a bare repository on local disk holds N app folders (`apps/app-NNNN`: canary.yaml with
`bootstrap: direct`, a 1-replica Deployment and a Service). An in-process Reconciler, wired as
the integration tests wire it, runs against the real cluster, in a fresh namespace per size:

- cold start: reconciles from nothing until every app is Stable, beside one bulk
  `kubectl apply --server-side` of the same objects (into a namespace of its own) followed by
  `kubectl wait --for=condition=Available` of its Deployments: the same pods to start;
- steady pass: one reconcile of the unchanged repository, beside `git fetch` of the same
  repository; the API requests it makes and the CPU it uses;
- resync pass: one reconcile comparing every app with the cluster (drift), beside
  `kubectl apply --server-side --dry-run=server` of the same objects;
- one change: an app's Deployment changed and pushed; the reconcile that applies its baseline
  and canary (the push is seen at its start);
- 10 % changed: one commit changing a tenth of the apps; the reconcile that applies them all;
- memory: the process's RSS after the steady passes and its peak;
- drift seen by the watch: one app's Deployment scaled by another field manager, as `kubectl
  scale` does; the time until the controller has put git's replicas back (without `--watch`
  the same drift waits for `--resync`, 5 min by default).

The controller keeps a watched copy of its records and objects (`--watch true`, the default;
`--watch false` measures reads as requests).

With `--canaries N`, N apps are then held in analysis against the real Prometheus behind a
proxy that answers every query after `--prometheus-delay` seconds, and one pass is timed.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/scale.py --sizes 10,100,300
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
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
)
from kubernetes import client

from controller.domain.types import Phase
from controller.drift import Resync
from controller.edges.git import GitSource
from controller.edges.kube import Kube
from controller.edges.prometheus import Prometheus
from controller.edges.statuses import GitNotesSink
from controller.reconcile import Reconciler, Result
from localcluster import cluster as localcluster
from localcluster import prometheus as localprometheus
from localcluster.counting import Requests

COLD_TIMEOUT = 1800.0
STEADY_PASSES = 5


def name_of(i: int) -> str:
    return f"app-{i:04d}"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_repo(root: Path, ns: str, apps: int) -> DeployRepo:
    root.mkdir(parents=True, exist_ok=True)
    repo = DeployRepo.create(root)
    for i in range(apps):
        name = name_of(i)
        repo.write(f"apps/{name}/canary.yaml", {"namespace": ns, "bootstrap": "direct"})
        repo.write(f"apps/{name}/manifests.yml", [deployment(name, "10", 1), service(name)])
    repo.commit(f"{apps} apps")
    repo.push()
    return repo


def objects_file(repo: DeployRepo, into: Path) -> Path:
    """The apps' objects in one file, without their canary.yaml: what kubectl applies."""
    into.write_text("---\n".join(p.read_text() for p in
                                 sorted((repo.clone / "apps").glob("*/manifests.yml"))))
    return into


def kubectl(config: Path, ns: str, *args: str) -> float:
    binary = localcluster.build_binaries() / "kubectl"
    started = time.perf_counter()
    subprocess.run([str(binary), "--kubeconfig", str(config), "-n", ns, *args], check=True,
                   stdout=subprocess.DEVNULL, timeout=COLD_TIMEOUT)
    return time.perf_counter() - started


def all_stable(reconciler: Reconciler, apps: int) -> int:
    records = reconciler.kube.records()
    failed = [r for r in records.values() if r.error]
    if failed:
        raise RuntimeError(f"app {failed[0].app}: {failed[0].error}")
    return sum(r.phase is Phase.STABLE and r.stable_revision is not None and r.error is None
               for r in records.values())


def cold_start(reconciler: Reconciler, apps: int) -> tuple[float, int, float]:
    """(seconds to all Stable, reconciles, the first reconcile's seconds)."""
    started = time.perf_counter()
    first, count = 0.0, 0
    while time.perf_counter() - started < COLD_TIMEOUT:
        count += 1
        took = timed_pass(reconciler)[0]
        first = first or took
        stable = all_stable(reconciler, apps)
        say(f"  cold start: reconcile {count} took {took:.1f}s; {stable}/{apps} Stable")
        if stable == apps:
            return time.perf_counter() - started, count, first
        time.sleep(0.5)  # kwok marks pods ready within about a second
    raise TimeoutError(f"not every app Stable within {COLD_TIMEOUT:.0f}s")


def timed_pass(reconciler: Reconciler) -> tuple[float, float, Result]:
    """(wall seconds, CPU seconds, result) of one reconcile."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = reconciler.reconcile()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def until_applied(reconciler: Reconciler, changed: set[str]) -> tuple[float, int]:
    """Reconcile until every changed app applied its variants: (seconds since the first
    reconcile started, reconciles)."""
    started, count, left = time.perf_counter(), 0, set(changed)
    while left and count < 20:
        count += 1
        result = reconciler.reconcile()
        left -= {o.app for o in result.outcomes if "apply-variants" in o.actions}
    if left:
        raise TimeoutError(f"{len(left)} changed app(s) never applied their variants")
    return time.perf_counter() - started, count


def change(repo: DeployRepo, names: list[str], rate: str) -> None:
    for name in names:
        repo.write(f"apps/{name}/manifests.yml", [deployment(name, rate, 1), service(name)])
    repo.commit(f"{len(names)} app(s): success rate {rate}")
    repo.push()


def scaled_back(reconciler: Reconciler, api: client.ApiClient, ns: str, name: str) -> float:
    """Seconds from another field manager's scale of one app to git's replicas back."""
    deployments = client.AppsV1Api(api)
    started = time.perf_counter()
    deployments.patch_namespaced_deployment_scale(name, ns, {"spec": {"replicas": 3}},
                                                  field_manager="kubectl")
    while time.perf_counter() - started < 60:
        reconciler.reconcile()  # the loop's pass; the watch said which app to compare
        if deployments.read_namespaced_deployment(name, ns).spec.replicas == 1:
            return time.perf_counter() - started
        time.sleep(0.05)
    raise TimeoutError(f"{name}: scaled by hand and not corrected within 60 s")


def measure(config: Path, api: client.ApiClient, apps: int, root: Path,
            watch: bool) -> dict[str, Any]:
    counted = Requests(api)
    with namespace(api, f"scale{apps}") as ns, namespace(api, f"ref{apps}") as ref:
        repo = build_repo(root / "repo", ns, apps)
        objects = objects_file(repo, root / "objects.yml")
        say(f"{apps} apps: the reference, kubectl apply --server-side of {apps * 2} objects, "
            f"then kubectl wait until every Deployment is Available")
        reference = kubectl(config, ref, "apply", "--server-side", "-f", str(objects)) + \
            kubectl(config, ref, "wait", "--for=condition=Available", "--all", "deployment",
                    f"--timeout={COLD_TIMEOUT:.0f}s")

        source = GitSource(str(repo.remote), "main", root / "mirror")
        kube = Kube(api, frozenset({ns}), state_namespace=state_of(ns))
        reconciler = Reconciler(source, kube, GitNotesSink(source), resync=3600.0)
        reconciler.resync = Resync(3600.0, clock=lambda: 0.0)  # never due: steady passes
        if watch:
            kube.watch(on_change=reconciler.changed)
        say(f"{apps} apps: cold start")
        cold, passes, first = cold_start(reconciler, apps)

        for _ in range(2):
            reconciler.reconcile()  # warm caches and connections
        steady, cpu, requests = [], [], []
        for _ in range(STEADY_PASSES):
            before = counted.count
            wall, used, _ = timed_pass(reconciler)
            steady.append(wall)
            cpu.append(used)
            requests.append(counted.count - before)
        fetch = Summary.of([timed(lambda: git(root / "mirror", "fetch", "-q", "origin"))
                            for _ in range(STEADY_PASSES)])
        steady_rss = rss_mib()

        reconciler.resync = Resync(0.0)  # every app due
        resync_wall, resync_cpu, result = timed_pass(reconciler)
        drift = sum(len(o.drift) for o in result.outcomes)
        reconciler.resync = Resync(3600.0)  # not due; the watch makes an app due
        corrected = scaled_back(reconciler, api, ns, name_of(apps // 3)) if watch else None
        reconciler.resync = Resync(3600.0, clock=lambda: 0.0)
        dry_run = kubectl(config, ns, "apply", "--server-side", "--dry-run=server",
                          "--force-conflicts", "--field-manager=gitops-canary", "-f",
                          str(objects))

        say(f"{apps} apps: one change")
        change(repo, [name_of(apps // 2)], "20")
        one, one_passes = until_applied(reconciler, {name_of(apps // 2)})

        tenth = [name_of(i) for i in range(0, apps, 10)]
        say(f"{apps} apps: {len(tenth)} changed in one commit")
        change(repo, tenth, "30")
        many, many_passes = until_applied(reconciler, set(tenth))
        kube.close()
    s, c, r = Summary.of(steady), Summary.of(cpu), Summary.of(requests)
    return {"apps": apps, "cold": cold, "passes": passes, "first": first, "reference": reference,
            "steady": s, "cpu": c, "requests": r, "fetch": fetch, "resync": resync_wall,
            "resync_cpu": resync_cpu, "drift": drift, "dry_run": dry_run, "one": one,
            "one_passes": one_passes, "many": many, "many_apps": len(tenth),
            "many_passes": many_passes, "rss": steady_rss, "peak": peak_mib(),
            "corrected": corrected}


def canaries(api: client.ApiClient, count: int, delay: float, workers: int,
             root: Path, watch: bool) -> dict[str, Any]:
    """`count` apps in analysis, looks due on every pass: one pass's wall time."""
    with namespace(api, f"canaries{count}") as ns, \
            contextlib.ExitStack() as stack:
        state = root / "prometheus"
        prom = localprometheus.start(state)
        stack.callback(localprometheus.stop, state)
        url = stack.enter_context(localprometheus.slowed(prom.url, delay)).url
        (root / "repo").mkdir(parents=True)
        repo = DeployRepo.create(root / "repo")
        for i in range(count):
            name = name_of(i)
            repo.write(f"apps/{name}/canary.yaml", {
                "namespace": ns, "bootstrap": "direct",
                "analysis": {"warmup": "1s", "interval": "1s", "deadline": "1h"}})
            repo.write(f"apps/{name}/manifests.yml", [deployment(name, "10", 1), service(name)])
        repo.commit(f"{count} apps")
        repo.push()
        source = GitSource(str(repo.remote), "main", root / "mirror")
        kube = Kube(api, frozenset({ns}), state_namespace=state_of(ns))
        reconciler = Reconciler(source, kube, GitNotesSink(source), Prometheus(url),
                                resync=3600.0, analysis_workers=workers)
        if watch:
            kube.watch(on_change=reconciler.changed)
        counted = Requests(api)
        say(f"{count} canaries: deploying stable")
        cold_start(reconciler, count)
        change(repo, [name_of(i) for i in range(count)], "20")
        say(f"{count} canaries: waiting for every one to be in analysis")
        started = time.perf_counter()
        while time.perf_counter() - started < COLD_TIMEOUT:
            reconciler.reconcile()
            records = reconciler.kube.records()
            if sum(r.phase is Phase.ANALYZING for r in records.values()) == count:
                break
            time.sleep(0.5)
        passes, requests = [], []
        looked = 0
        for _ in range(3):
            time.sleep(1.0)  # every look due again (interval 1 s)
            before = {a: r.last_analysis for a, r in reconciler.kube.records().items()}
            counted.clear()
            wall, _, _ = timed_pass(reconciler)
            requests.append(len([m for m, _ in counted.made if m == "GET"]))
            after = reconciler.kube.records()
            looked = sum(after[a].last_analysis != before.get(a) for a in after)
            passes.append(wall)
            say(f"  a pass with {count} looks due: {wall:.1f}s, {looked} looks judged, "
                f"{requests[-1]} API reads")
        kube.close()
        if reconciler.looks is not None:
            reconciler.looks.close(wait=True)  # before the proxy and Prometheus stop
    return {"count": count, "delay": delay, "workers": workers, "pass": Summary.of(passes),
            "looked": looked, "reads": Summary.of(requests)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,300,1000",
                        help="app counts, comma-separated (default 10,100,300,1000)")
    parser.add_argument("--canaries", type=int, default=0,
                        help="also time a pass with this many apps in analysis (e.g. 100)")
    parser.add_argument("--prometheus-delay", type=float, default=2.0,
                        help="seconds the proxy holds each query (default 2)")
    parser.add_argument("--analysis-workers", type=int, default=32)
    parser.add_argument("--watch", choices=("true", "false"), default="true",
                        help="the controller's watched copy, as `run --watch` (default true)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or not all(1 <= s <= 2000 for s in sizes) or not 0 <= args.canaries <= 500:
        parser.error("sizes between 1 and 2000, canaries between 0 and 500")
    load = os.getloadavg()[0]
    rows, canary = [], None
    with kubeconfig() as config, api_client(config) as api:
        for apps in sizes:
            with tempfile.TemporaryDirectory(prefix=f"bench-scale-{apps}-") as tmp:
                rows.append(measure(config, api, apps, Path(tmp), args.watch == "true"))
        if args.canaries:
            with tempfile.TemporaryDirectory(prefix="bench-canaries-") as tmp:
                canary = canaries(api, args.canaries, args.prometheus_delay,
                                  args.analysis_workers, Path(tmp), args.watch == "true")

    print(f"scale ({machine(load)}; --watch {args.watch}); steady figures are medians of "
          f"{STEADY_PASSES} passes")
    for row in rows:
        n = row["apps"]
        print(f"\n{n} apps ({n * 2} objects)")
        print(f"  cold start to all Stable: {row['cold']:.1f} s over {row['passes']} "
              f"reconciles (first {row['first']:.1f} s); kubectl apply --server-side of the "
              f"same objects and kubectl wait until Available: {row['reference']:.1f} s; "
              f"ratio {row['cold'] / row['reference']:.1f}")
        s, f = row["steady"], row["fetch"]
        print(f"  steady pass: {s.median * 1000:.0f} ms (p90 {s.p90 * 1000:.0f}); git fetch of "
              f"the same repository: {f.median * 1000:.0f} ms; ratio {s.median / f.median:.1f}; "
              f"API requests per pass: {row['requests'].median:.0f}; CPU per pass "
              f"{row['cpu'].median * 1000:.0f} ms")
        print(f"  resync pass (every app compared with the cluster): {row['resync']:.1f} s "
              f"(CPU {row['resync_cpu']:.1f} s, drift found {row['drift']}); kubectl apply "
              f"--dry-run=server of the same objects: {row['dry_run']:.1f} s; ratio "
              f"{row['resync'] / row['dry_run']:.1f}")
        print(f"  one changed app -> its variants applied: {row['one'] * 1000:.0f} ms "
              f"({row['one_passes']} reconcile(s)) from the push being seen")
        print(f"  {row['many_apps']} apps changed in one commit -> all their variants: "
              f"{row['many']:.1f} s ({row['many_passes']} reconcile(s))")
        print(f"  RSS after the steady passes: {row['rss']:.0f} MiB; peak so far "
              f"{row['peak']:.0f} MiB")
        if row["corrected"] is not None:
            print(f"  one app scaled by hand -> git's replicas back: "
                  f"{row['corrected'] * 1000:.0f} ms (without --watch: at the next --resync)")
    if canary is not None:
        p = canary["pass"]
        print(f"\n{canary['count']} canaries in analysis, Prometheus answering in "
              f"{canary['delay']:g} s, {canary['workers']} analysis workers: a pass with every "
              f"look due {p.median:.1f} s (max {p.high:.1f}); looks judged in the last pass "
              f"{canary['looked']}; sequentially that would be "
              f"{canary['count'] * 4 * canary['delay']:.0f} s (4 queries per look); API reads "
              f"per pass {canary['reads'].median:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
