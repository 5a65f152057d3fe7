"""Rendering Kustomize and Helm folders: the controller's whole read of an app (export of the
commit's files, the tool under its sandbox, parsing and checking every object) against the
same tool run by hand on the same files.

Fixtures: a Kustomize base + overlay of 35 objects (10 Deployments, 10 Services, 10
ConfigMaps from a generator, 5 more) with namePrefix and images; a Helm chart whose templates
make 35 objects from values. Both are committed to a real git repository; each read is a fresh
`AppReader` (no cache). Median of N runs each, interleaved.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/render_sources.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import machine

from controller.apps import AppReader
from controller.domain.types import Sha
from controller.edges.git import GitRepo
from controller.edges.renderers import Tools
from localcluster.cluster import render_tools


def deployment(name: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {
                         "containers": [{"name": "c", "image": f"{name}:v1", "envFrom": [
                             {"configMapRef": {"name": f"{name}-settings"}}]}]}}}}


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}


def write(path: Path, docs: list[Any] | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(docs if isinstance(docs, str) else yaml.safe_dump_all(docs))


def fixtures(repo: Path) -> None:
    names = [f"svc{i:02d}" for i in range(10)]
    extra = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"sa{i}"}}
             for i in range(5)]
    write(repo / "base" / "all.yaml", [*map(deployment, names), *map(service, names), *extra])
    write(repo / "base" / "kustomization.yaml", [{
        "resources": ["all.yaml"],
        "configMapGenerator": [{"name": f"{n}-settings", "literals": ["MODE=a"]}
                               for n in names]}])
    write(repo / "apps" / "kshop" / "kustomization.yaml", [{
        "resources": ["../../base"], "namePrefix": "prod-",
        "images": [{"name": n, "newTag": "v2"} for n in names]}])
    write(repo / "apps" / "kshop" / "canary.yaml", [{"namespace": "shop"}])
    chart = repo / "apps" / "hshop"
    write(chart / "Chart.yaml", [{"apiVersion": "v2", "name": "shop", "version": "0.1.0"}])
    write(chart / "values.yaml", [{"services": names, "accounts": 5}])
    template = (
        "{{- range .Values.services }}\n---\n" + yaml.safe_dump(deployment("NAME")).replace(
            "NAME", "{{ . }}") + "---\n" + yaml.safe_dump(service("NAME")).replace(
            "NAME", "{{ . }}") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: "
        "{{ . }}-settings\ndata:\n  MODE: a\n{{- end }}\n{{- range until (int "
        ".Values.accounts) }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: "
        "sa{{ . }}\n{{- end }}\n")
    write(chart / "templates" / "all.yaml", template)
    write(chart / "canary.yaml", [{"namespace": "shop"}])
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-qm", "fixtures"]):
        subprocess.run(["git", *args], cwd=repo, check=True)


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    folder = render_tools()
    tools = Tools(folder / "kustomize", folder / "helm")
    with tempfile.TemporaryDirectory() as scratch:
        repo_dir = Path(scratch) / "repo"
        repo_dir.mkdir()
        fixtures(repo_dir)
        repo = GitRepo.open(repo_dir)
        head = repo.repo.head.commit.hexsha
        apps = {a.path: a for a in repo.apps(Sha(head))}
        by_hand = {
            "apps/kshop": [str(tools.kustomize), "build", str(repo_dir / "apps" / "kshop")],
            "apps/hshop": [str(tools.helm), "template", "hshop", str(repo_dir / "apps" / "hshop"),
                           "--namespace", "shop"],
        }
        env = {**os.environ, "HOME": scratch, "HELM_CACHE_HOME": f"{scratch}/c",
               "HELM_CONFIG_HOME": f"{scratch}/f", "HELM_DATA_HOME": f"{scratch}/d"}
        ours: dict[str, list[float]] = {p: [] for p in by_hand}
        hand: dict[str, list[float]] = {p: [] for p in by_hand}
        objects: dict[str, int] = {}
        for _ in range(args.runs):
            for path, command in by_hand.items():
                started = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
                hand[path].append(time.perf_counter() - started)
                reader = AppReader(repo, tools)
                started = time.perf_counter()
                _, manifests = reader.parse(apps[path], apps[path].tree, apps[path].root)
                ours[path].append(time.perf_counter() - started)
                objects[path] = len(manifests)
    print(f"render of a 35-object app, medians of {args.runs} ({machine(load)})")
    print("| app | objects | the controller's read | the tool by hand | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for path, label in (("apps/kshop", "Kustomize overlay + base"), ("apps/hshop", "Helm chart")):
        a, b = median_ms(ours[path]), median_ms(hand[path])
        print(f"| {label} | {objects[path]} | {a:.0f} ms | {b:.0f} ms | {a / b:.2f} |")


if __name__ == "__main__":
    main()
