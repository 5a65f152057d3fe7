"""How fast is `gitops-canary replay`? 200 recorded analyses of 60 looks each, in one call.

The analyses are seeded A/A streams at 2 req/s per variant (99% good): most of them stay
undecided to the deadline, so nearly every one of the 12,000 looks is assessed (the slow case).
The command runs as a subprocess, as a person runs it, next to `python -c pass` (the
interpreter's start, the floor); median of N runs. The contract asks for "well under a minute".

Run: cd /work/main && PYTHONPATH=hack .venv/bin/python bench/replay_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import REPO, machine

ANALYSES, LOOKS, RATE = 200, 60, 2


def analyses(seed: int = 11) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(ANALYSES):
        series = []
        for _look in range(LOOKS):
            n_b, n_c = (int(x) for x in rng.poisson(RATE * 30, 2))
            series.append({"baseline": {"good": int(rng.binomial(n_b, 0.99)), "total": n_b},
                           "canary": {"good": int(rng.binomial(n_c, 0.99)), "total": n_c}})
        out.append({"interval": 30, "deadline": 1800, "metrics": [
            {"name": "success", "kind": "ratio", "critical": True, "series": series}]})
    return out


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "analyses.json"
        path.write_text(json.dumps(analyses()))
        replay = [sys.executable, "-m", "controller", "replay", "--input", str(path), "-o",
                  "json"]
        out = json.loads(subprocess.run(replay, check=True, capture_output=True, cwd=REPO,
                                        text=True).stdout)
        looks = sum(o["looks"] for o in out)
        floor = [timed([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
        runs = [timed(replay) for _ in range(args.runs)]
    median, base = float(np.median(runs)), float(np.median(floor))
    verdicts = {v: sum(o["verdict"] == v for o in out) for v in ("pass", "fail", "inconclusive")}
    print(f"replay speed ({machine(load)})")
    print(f"| what | median of {args.runs} |")
    print("| --- | --- |")
    print(f"| `replay` of {ANALYSES} analyses x {LOOKS} looks ({looks:,} looks assessed; "
          f"{verdicts}) | {median:.2f} s |")
    print(f"| `python -c pass` (the floor) | {base:.3f} s |")
    print(f"| per assessed look | {1000 * (median - base) / looks:.3f} ms |")


if __name__ == "__main__":
    main()
