"""Cold start of the command line: how long `gitops-canary render`, `--help` and `status --help`
take from exec to exit, next to `python -c pass` (the interpreter's own start, the floor).

The commands a person types by hand should feel instant (issue 10: under 0.5 s on an idle
machine); they import only what they use, and scipy (the judge), the Kubernetes client, httpx,
prometheus_client and watchdog are imported by the commands that need them. The last row, every
module the command line used to import at start, shows what that saves.

Each command runs as a subprocess (the venv's `gitops-canary` script, as a user runs it),
stdout and stderr discarded; the runs are interleaved round-robin so that load on the machine
hits every command alike, after one warm-up run each (byte-code caches). Wall time, median of N.

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/cli_start.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import REPO, Summary, machine

GOAL = 0.5  # seconds
EXAMPLE = REPO / "deploy-repo-example" / "sampleapp"
EVERYTHING = ("import controller.cli, controller.reconcile, controller.metrics, controller.run, "
              "controller.edges.forges, controller.edges.prometheus, scipy.stats")


def commands() -> dict[str, list[str]]:
    python = sys.executable
    script = Path(python).parent / "gitops-canary"
    cli = [str(script)] if script.exists() else [python, "-m", "controller"]
    return {
        "python -c pass (reference)": [python, "-c", "pass"],
        "gitops-canary --help": [*cli, "--help"],
        "gitops-canary status --help": [*cli, "status", "--help"],
        f"gitops-canary render {EXAMPLE.relative_to(REPO)}": [*cli, "render", str(EXAMPLE)],
        "every import of the old start (python -c)": [python, "-c", EVERYTHING],
    }


def run_once(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per command (default 20)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    todo = commands()
    for argv in todo.values():
        run_once(argv)  # warm-up: byte-code and page caches
    samples: dict[str, list[float]] = {name: [] for name in todo}
    for _ in range(args.runs):
        for name, argv in todo.items():
            samples[name].append(run_once(argv))

    figures = {name: Summary.of(values) for name, values in samples.items()}
    reference = figures["python -c pass (reference)"].median
    print(f"CLI cold start, wall time of a subprocess ({machine(load)}); medians of {args.runs} "
          f"interleaved runs")
    width = max(len(name) for name in figures)
    print(f"{'command':<{width}}  {'median':>8}  {'p90':>8}  {'min':>8}  {'x pass':>7}  "
          f"{'under ' + format(GOAL, 'g') + ' s':>11}")
    for name, summary in figures.items():
        print(f"{name:<{width}}  {summary.median * 1000:>5.0f} ms  {summary.p90 * 1000:>5.0f} ms  "
              f"{summary.low * 1000:>5.0f} ms  {summary.median / reference:>6.1f}x  "
              f"{'yes' if summary.median < GOAL else 'NO':>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
