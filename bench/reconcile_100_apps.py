"""Reconcile cost with many apps: what one pass over an unchanged 100-app repository costs, next
to its fixed costs (one `git fetch` of the mirror, one list call of the app records), what a
resync pass costs (every app compared with the cluster for drift: a server-side dry run of each
object) next to `kubectl apply --server-side --dry-run=server` of the same objects, and what
one pass costs when a single app changed.

A bare repository on local disk holds 100 app folders (`apps/app-NNN`: canary.yaml with
`bootstrap: direct`, a 1-replica Deployment and a Service). An in-process Reconciler, wired as
the integration tests wire it (tests/controller/conftest.py `new_reconciler`), deploys them all
against the real cluster; then the figures are taken in the same run.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/reconcile_100_apps.py
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    DeployRepo,
    Summary,
    api_client,
    deployment,
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
from controller.edges.kube import MANAGED_BY, Kube
from controller.edges.statuses import GitNotesSink
from controller.reconcile import Reconciler
from localcluster import cluster as localcluster

DEPLOY_TIMEOUT = 600.0
DEPLOY_MAX_RECONCILES = 100
CHANGED = 42  # the app that changes in the last measurement


def app_name(i: int) -> str:
    return f"app-{i:03d}"


def build_repo(root: Path, ns: str, apps: int) -> DeployRepo:
    repo = DeployRepo.create(root)
    for i in range(apps):
        name = app_name(i)
        repo.write(f"apps/{name}/canary.yaml", {"namespace": ns, "bootstrap": "direct"})
        repo.write(f"apps/{name}/deployment.yml", deployment(name, "10", replicas=1))
        repo.write(f"apps/{name}/service.yml", service(name))
    repo.commit(f"{apps} apps")
    repo.push()
    return repo


def new_reconciler(remote: Path, workdir: Path, api: client.ApiClient, ns: str) -> Reconciler:
    """As tests/controller/conftest.py builds it."""
    source = GitSource(str(remote), "main", workdir)
    kube = Kube(api, frozenset({ns}), state_namespace=state_of(ns))
    return Reconciler(source, kube, GitNotesSink(source))


def deploy_all(reconciler: Reconciler, apps: int) -> tuple[float, int, float]:
    """Reconcile until every app is Stable; return (seconds, reconciles, first reconcile)."""
    started = time.perf_counter()
    first = 0.0
    for count in range(1, DEPLOY_MAX_RECONCILES + 1):
        took = timed(reconciler.reconcile)
        first = first or took
        records = reconciler.kube.records()
        stable = [r for r in records.values()
                  if r.phase is Phase.STABLE and r.stable_revision and r.error is None]
        say(f"deploy: reconcile {count} took {took:.1f}s; {len(stable)}/{apps} apps Stable")
        if len(stable) == apps:
            return time.perf_counter() - started, count, first
        if time.perf_counter() - started > DEPLOY_TIMEOUT:
            break
        time.sleep(0.5)  # kwok marks pods ready within about a second
    raise TimeoutError(f"not every app Stable after {count} reconciles "
                       f"({time.perf_counter() - started:.0f}s)")


def profile(reconciler: Reconciler) -> str:
    profiler = cProfile.Profile()
    profiler.runcall(reconciler.reconcile)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=100, help="app folders (default 100)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls per figure (default 20)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one unchanged reconcile")
    args = parser.parse_args()
    if not 1 <= args.apps <= 500 or not 1 <= args.repeats <= 200:
        parser.error("apps between 1 and 500, repeats between 1 and 200")
    apps, repeats = args.apps, args.repeats
    load = os.getloadavg()[0]
    changed = CHANGED % apps

    with kubeconfig() as config, api_client(config) as api, \
            namespace(api, "bench-apps") as ns, \
            tempfile.TemporaryDirectory(prefix="bench-apps-") as tmp:
        root = Path(tmp)
        repo = build_repo(root, ns, apps)
        reconciler = new_reconciler(repo.remote, root / "mirror", api, ns)
        say(f"deploying {apps} apps in namespace {ns}")
        deploy_seconds, deploy_reconciles, first = deploy_all(reconciler, apps)

        say(f"timing {repeats} reconciles of the unchanged repository")
        results = [reconciler.reconcile() for _ in range(2)]  # warm caches and connections
        unchanged = []
        for _ in range(repeats):
            started = time.perf_counter()
            results.append(reconciler.reconcile())
            unchanged.append(time.perf_counter() - started)
        skipped = sum(o.skipped for r in results for o in r.outcomes)
        checked = sum(len(r.outcomes) for r in results)

        fetch = [timed(reconciler.source.fetch) for _ in range(repeats)]
        records = [timed(reconciler.kube.records) for _ in range(repeats)]
        core = client.CoreV1Api(api)
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        listing = [timed(lambda: core.list_namespaced_config_map(ns, label_selector=selector))
                   for _ in range(repeats)]
        profiled = profile(reconciler) if args.profile else ""

        resyncs = max(1, repeats // 5)
        say(f"timing {resyncs} resync passes (every app compared with the cluster)")
        reconciler.resync = Resync(0.0)
        resync = [timed(reconciler.reconcile) for _ in range(resyncs)]
        drifted = sum(len(o.drift) for o in reconciler.reconcile().outcomes)
        reconciler.resync = Resync(3600.0)
        kubectl = localcluster.build_binaries() / "kubectl"
        objects = root / "objects.yml"  # the apps' manifests, without their canary.yaml
        objects.write_text("---\n".join(
            path.read_text() for path in sorted((repo.clone / "apps").glob("*/*.yml"))))
        dry_run = [timed(lambda: subprocess.run(
            [str(kubectl), "--kubeconfig", str(config), "-n", ns, "apply", "--server-side",
             "--dry-run=server", "--force-conflicts", "--field-manager=gitops-canary",
             "-f", str(objects)], check=True, stdout=subprocess.DEVNULL)) for _ in range(resyncs)]

        say(f"changing {app_name(changed)} (SUCCESS_RATE 10 -> 20) and reconciling once")
        repo.write(f"apps/{app_name(changed)}/deployment.yml",
                   deployment(app_name(changed), "20", replicas=1))
        repo.commit(f"{app_name(changed)}: success rate 20")
        repo.push()
        started = time.perf_counter()
        after_change = reconciler.reconcile()
        one_change = time.perf_counter() - started

    r, f, c = (Summary.of(x) for x in (unchanged, fetch, records))
    acted = ", ".join(f"{o.app} ({','.join(o.actions) or 'none'})"
                      for o in after_change.outcomes if not o.skipped)
    print(f"reconcile with {apps} apps ({machine(load)}); figures are medians of {repeats} "
          f"calls unless said otherwise")
    print(f"deploying all {apps} apps (bootstrap: direct): {deploy_seconds:.1f} s over "
          f"{deploy_reconciles} reconciles (the first, which applies everything: {first:.1f} s)")
    print(f"reconcile, unchanged repository: {r.text('ms', 1000, 1)}")
    print(f"  apps skipped as unchanged: {skipped}/{checked} app checks")
    print(f"git fetch of the mirror (GitSource.fetch): {f.text('ms', 1000, 1)}")
    print(f"list of the app records (Kube.records, {apps} ConfigMaps parsed): "
          f"{c.text('ms', 1000, 1)}")
    print(f"  the bare list call (CoreV1Api): {Summary.of(listing).text('ms', 1000, 1)}")
    print(f"ratio reconcile / fetch: {r.median / f.median:.1f}")
    print(f"ratio reconcile / (fetch + records): {r.median / (f.median + c.median):.1f}")
    rest = r.median - f.median - c.median
    print(f"  the rest, per app: {rest / apps * 1000:.2f} ms ({rest * 1000:.0f} ms for {apps})")
    rs, kd = Summary.of(resync), Summary.of(dry_run)
    print(f"resync pass, every app compared with the cluster (median of {len(resync)}): "
          f"{rs.text('s', 1, 2)}; {rs.median / apps * 1000:.1f} ms per app; drift found: "
          f"{drifted}")
    print(f"  kubectl apply --server-side --dry-run=server of the same {apps * 2} objects: "
          f"{kd.text('s', 1, 2)}; ratio resync / kubectl: {rs.median / kd.median:.2f}")
    print(f"  at --resync 5m this is {rs.median / 300 * 100:.1f} % of one core, "
          f"~{apps * 2 / 300:.1f} dry runs per second")
    print(f"reconcile after one app changed (one call): {one_change * 1000:.0f} ms; "
          f"acted on {acted or 'no app'}; "
          f"the change cost {(one_change - r.median) * 1000:.0f} ms over an unchanged pass")
    if profiled:
        print(profiled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
