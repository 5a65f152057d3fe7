"""The images: build time, size, and start-to-healthy time of a container next to the same
program started as a plain local process (the reference, measured in the same run).

- Build: hack/images/build.sh with everything cached (warm: what a second CI run or an edit of
  the README costs), and with --cold the whole chain from nothing: the debootstrap base into a
  scratch cache, its import, and both Dockerfiles with `--no-cache` (the render tools are the
  cached binaries hack/setup.sh builds; they are not part of the image build here).
- Size: each image as podman stores it (uncompressed), and the controller's largest layers.
- Start: from `podman run` (or the process's exec) to the first 200 of /healthz, the probe of
  misc/install and of the sample app's pods; for the controller also to the first 200 of
  /readyz (its first successful reconcile of a one-app repository served by `git daemon`). The
  controller runs `gitops-canary run` with the install's flags (--leader-election included),
  as uid 10001 with a read-only root file system, against the local cluster (its admin
  kubeconfig, inlined and mounted read-only: the start does not depend on how it
  authenticates). Runs are
  interleaved container/process, after one warm-up each; medians of N.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/images.py [--runs 5] [--cold]
Unless $KUBECONFIG is set, the local cluster in .localcluster/bench is started (benchlib).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import yaml
from benchlib import (
    REPO,
    DeployRepo,
    Summary,
    api_client,
    deployment,
    kubeconfig,
    machine,
    namespace,
    say,
    state_of,
)

from localcluster.processes import free_port

CONF = REPO / "hack" / "images" / "containers.conf"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONF)}
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
TIMEOUT = 120.0


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], env=ENV, check=True, capture_output=True,
                          text=True, timeout=600).stdout.strip()


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env or ENV, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def build(*args: str) -> tuple[float, dict[str, str]]:
    seconds, out = timed(["bash", "hack/images/build.sh", *args])
    ids = dict(line.split() for line in out.splitlines() if line.strip())
    return seconds, {name: image.removeprefix("sha256:") for name, image in ids.items()}


def cold_build() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        base, out = timed(["bash", "hack/images/base.sh"],
                          {**ENV, "GITOPS_CANARY_CACHE": scratch})
        folder = Path(out.strip().splitlines()[-1])
        changes = [arg for line in (folder / "CONFIG").read_text().splitlines()
                   for arg in ("--change", line)]
        tag = "localhost/gitops-canary-base-bench:cold"
        imported, _ = timed(["podman", "import", "--quiet", *changes,
                             str(folder / "rootfs.tar"), tag])
        podman("rmi", tag)
    images, _ = build("--no-cache")
    return {"debootstrap base": base, "base import": imported,
            "both images (--no-cache)": images}


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def until(urls: list[str], started: float, alive: Callable[[], bool]) -> list[float]:
    """Seconds from `started` to the first 200 of each url, in order."""
    seconds = []
    deadline = started + TIMEOUT
    for url in urls:
        while not answers(url):
            if time.perf_counter() > deadline or not alive():
                sys.exit(f"no answer from {url}")
            time.sleep(0.02)
        seconds.append(time.perf_counter() - started)
    return seconds


def in_container(image: str, argv: list[str], env: dict[str, str], urls: list[str],
                 extra: list[str], stop: int = 10) -> list[float]:
    """`stop`: seconds from SIGTERM to SIGKILL (the sample app, PID 1 without a handler, only
    goes by SIGKILL; the controller releases its Lease on SIGTERM)."""
    flags = [f"--env={k}={v}" for k, v in env.items()]
    started = time.perf_counter()
    container = podman("run", "-d", "--rm", "--network", "host", *ULIMITS, *flags, *extra,
                       image, *argv)
    try:
        return until(urls, started, lambda: bool(podman("ps", "-q", "--filter",
                                                        f"id={container}")))
    finally:
        podman("stop", "-t", str(stop), container)


def as_process(argv: list[str], env: dict[str, str], urls: list[str]) -> list[float]:
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return until(urls, started, lambda: process.poll() is None)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def git_daemon(root: Path) -> Iterator[str]:
    port = free_port()
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--listen=127.0.0.1",
                               f"--port={port}", f"--base-path={root}", "--export-all",
                               "--enable=receive-pack", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"git://127.0.0.1:{port}"
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def install_args() -> list[str]:
    """The Deployment's arguments in misc/install/controller.yml."""
    docs = yaml.safe_load_all((REPO / "misc" / "install" / "controller.yml").read_text())
    (deploy,) = [d for d in docs if d and d["kind"] == "Deployment"]
    args: list[str] = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def inline_kubeconfig(path: Path, target: Path) -> Path:
    """`path` with its certificate and key files embedded, readable by the container's user."""
    config = yaml.safe_load(path.read_text())
    fields = {"certificate-authority": "certificate-authority-data",
              "client-certificate": "client-certificate-data", "client-key": "client-key-data"}
    for section in ("clusters", "users"):
        for entry in config[section]:
            body = entry["cluster" if section == "clusters" else "user"]
            for field, data in fields.items():
                if field in body:
                    file = Path(body.pop(field))
                    file = file if file.is_absolute() else path.parent / file
                    body[data] = base64.b64encode(file.read_bytes()).decode()
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o644)
    return target


def with_values(args: list[str], values: dict[str, str]) -> list[str]:
    out = list(args)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    # Its token Secret is not mounted here (git:// sends none), nor a --workdir volume.
    for flag in ("--git-token-file", "--workdir"):
        index = out.index(flag)
        del out[index:index + 2]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="starts of each (default 5)")
    parser.add_argument("--cold", action="store_true",
                        help="also time a cold build (base from nothing, --no-cache)")
    options = parser.parse_args()
    load = os.getloadavg()[0]

    say("building (warm-up: whatever is not cached yet)")
    build()
    warm, ids = build()
    cold = cold_build() if options.cold else {}
    base = next(line.split()[0] for line in podman(
        "images", "--format", "{{.Repository}}:{{.Tag}} {{.Created}}",
        "--filter", "reference=localhost/gitops-canary-base").splitlines())
    sizes = {"base (debootstrap, python3.11)": base, "gitops-canary": ids["gitops-canary"],
             "sampleapp": ids["sampleapp"]}
    layers = [line.split("\t", 1) for line in podman(
        "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}",
        ids["gitops-canary"]).splitlines()]

    samples: dict[str, list[list[float]]] = {}

    def sample(name: str, measure: Callable[[], list[float]]) -> None:
        samples.setdefault(name, []).append(measure())

    app, metrics = free_port(), free_port()
    app_env = {"HOST": "127.0.0.1", "PORT": str(app), "METRICS_PORT": str(metrics)}
    app_urls = [f"http://127.0.0.1:{app}/healthz"]
    python = str(Path(sys.executable))
    starts: dict[str, Callable[[], list[float]]] = {
        "sampleapp container": lambda: in_container(ids["sampleapp"], [], app_env, app_urls,
                                                    [], stop=1),
        "sampleapp process (reference)": lambda: as_process(
            [python, "sampleapp/app.py"], app_env, app_urls),
    }

    with kubeconfig() as path, api_client(path) as api, namespace(api, "bench-images") as ns, \
            tempfile.TemporaryDirectory() as scratch:
        remotes = Path(scratch) / "remotes"
        remotes.mkdir()
        repo = DeployRepo.create(Path(scratch))
        (Path(scratch) / "remote.git").rename(remotes / "deploy.git")
        subprocess.run(["git", "remote", "set-url", "origin", str(remotes / "deploy.git")],
                       cwd=repo.clone, check=True)
        repo.write("apps/sampleapp/canary.yaml", {"namespace": ns, "percentage": 25})
        repo.write("apps/sampleapp/deployment.yml", deployment("sampleapp", "10", 2))
        repo.commit("sampleapp")
        repo.push()
        folder = Path(scratch) / "kube"
        folder.mkdir(mode=0o755)
        config = inline_kubeconfig(path, folder / "kubeconfig")
        with git_daemon(remotes) as url:
            port = free_port()
            argv = with_values(install_args(), {
                "--repo": f"{url}/deploy.git", "--interval": "30s", "--namespaces": ns,
                "--state-namespace": state_of(ns), "--prometheus-url": "http://127.0.0.1:9",
                "--metrics-address": f"127.0.0.1:{port}"})
            argv += ["--kubeconfig", str(config)]
            urls = [f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/readyz"]
            home = {"HOME": "/tmp", "TMPDIR": "/tmp"}  # noqa: S108 - the container's tmpfs
            mounts = ["--user", "10001:10001", "--read-only", "--tmpfs", "/tmp:mode=1777",  # noqa: S108
                      "--cap-drop", "ALL", "--volume", f"{config.parent}:{config.parent}:ro"]
            script = str(Path(sys.executable).parent / "gitops-canary")
            with tempfile.TemporaryDirectory() as process_home:
                starts |= {
                    "controller container": lambda: in_container(
                        ids["gitops-canary"], argv, home, urls, mounts),
                    "controller process (reference)": lambda: as_process(
                        [script, *argv], {"HOME": process_home}, urls),
                }
                for name, measure in starts.items():  # warm-up: page caches, first imports
                    say(f"warm-up: {name}")
                    measure()
                for run in range(options.runs):
                    say(f"run {run + 1}/{options.runs}")
                    for name, measure in starts.items():
                        sample(name, measure)

    print(f"Images ({machine(load)}); podman {podman('--version').split()[-1]}, runtime runc")
    print(f"\nbuild: warm (all cached) {warm:.1f} s")
    for step, seconds in cold.items():
        print(f"build: cold, {step}: {seconds:.1f} s")
    if cold:
        print(f"build: cold, in all: {sum(cold.values()):.1f} s")
    print("\nsize (uncompressed, as stored):")
    for name, image in sizes.items():
        size = int(podman("image", "inspect", "--format", "{{.Size}}", image))
        print(f"  {name:<32} {size / 1e6:>6.0f} MB")
    print("  gitops-canary's layers over 1 MB:")
    for layer, step in layers:
        if layer.endswith(("MB", "GB")):
            print(f"    {layer:>9}  {' '.join(step.split())[:90]}")
    print(f"\nstart, medians of {options.runs} (min-max):")
    for name, runs in samples.items():
        columns = ["/healthz", "/readyz"][:len(runs[0])]
        cells = []
        for i, column in enumerate(columns):
            figure = Summary.of([r[i] for r in runs])
            cells.append(f"{column} {figure.median * 1000:>5.0f} ms "
                         f"({figure.low * 1000:.0f}-{figure.high * 1000:.0f})")
        print(f"  {name:<32} " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
