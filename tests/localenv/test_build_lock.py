"""Two builds of the local cluster's binaries at once: hack/cluster/build.sh, run for real.

The cache is a temporary folder (GITOPS_CANARY_CACHE), so nothing here builds for 15 minutes
or touches the real cache: either the folder is already complete, or this test plays the
first build itself, through the same lock the script takes (flock(2) on <key>.lock), while the
script is the second one.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "cluster" / "build.sh"
QUICK = 30.0  # seconds for a run that builds nothing, on a loaded machine


def build(cache: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["bash", str(BUILD), *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "GITOPS_CANARY_CACHE": str(cache)})


def finish(run: subprocess.Popen[str]) -> tuple[int, str]:
    """Exit code and output (stdout then stderr, interleaved as written)."""
    out, _ = run.communicate(timeout=QUICK)
    return run.returncode, out


def folder(cache: Path) -> Path:
    code, out = finish(build(cache, "--path"))
    assert code == 0, out
    path = Path(out.strip())
    assert path.parent == cache / "bin"
    assert not path.exists()  # --path builds nothing
    return path


def test_two_runs_on_a_complete_cache_both_print_it(tmp_path: Path) -> None:
    final = folder(tmp_path)
    final.mkdir(parents=True)
    (final / "etcd").write_text("a binary")
    runs = [build(tmp_path), build(tmp_path)]
    for run in runs:
        code, out = finish(run)
        assert code == 0, out
        assert out.splitlines() == [str(final)]
    assert (final / "etcd").read_text() == "a binary"


def test_a_second_run_waits_for_the_first_and_leaves_its_partial_folder_alone(
        tmp_path: Path) -> None:
    final = folder(tmp_path)
    partial = final.with_name(final.name + ".partial")
    final.parent.mkdir(parents=True)
    with open(final.with_name(final.name + ".lock"), "a") as lock, \
            (tmp_path / "second.log").open("w") as log:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first build is running...
        partial.mkdir()
        (partial / "etcd").write_text("half of a binary")  # ...and half way through
        second = subprocess.Popen(["bash", str(BUILD)], text=True, stdout=subprocess.PIPE,
                                  stderr=log, start_new_session=True,
                                  env={**os.environ, "GITOPS_CANARY_CACHE": str(tmp_path)})
        try:
            deadline = time.monotonic() + QUICK
            while "waiting" not in (said := (tmp_path / "second.log").read_text()):
                assert second.poll() is None, f"the second run ended: {said}"
                assert time.monotonic() < deadline, f"no word of waiting: {said!r}"
                time.sleep(0.1)
            time.sleep(1.0)  # time to do damage, if it were to
            assert second.poll() is None
            assert (partial / "etcd").read_text() == "half of a binary"
            # The first build ends as build.sh ends one: its folder renamed to the key, then
            # the lock released.
            (partial / "etcd").write_text("a binary")
            partial.rename(final)
        except BaseException:
            _kill(second)  # before the lock goes: it would start a real build
            raise
    try:
        out, _ = second.communicate(timeout=QUICK)
    finally:
        _kill(second)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()
    assert out.splitlines() == [str(final)]
    assert (final / "etcd").read_text() == "a binary"
    assert not partial.exists()


def _kill(run: subprocess.Popen[str]) -> None:
    """End a run and whatever it started (its own session), if it is still going."""
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
    run.communicate()
