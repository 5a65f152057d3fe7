"""The supervisor behind `up`/`down` really ends whole process trees and finds strays."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from localcluster.processes import StartupError, Supervisor, _alive


def test_stop_all_ends_the_process_group_and_strays_naming_the_state(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    # A daemon with a child of its own, as kube components and shells have.
    pid = sup.start("tree", ["bash", "-c", "sleep 300 & sleep 301; wait"])
    # A stray that lost its pid file but names the state folder in its command line.
    stray = subprocess.Popen(["bash", "-c", "sleep 302; exit 0", f"{tmp_path}/stray"],
                             start_new_session=True)
    time.sleep(0.3)
    children = [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                text=True).stdout.split()]
    assert len(children) == 2
    assert _alive(pid)
    assert _alive(stray.pid)

    left = sup.stop_all(["tree"], grace=5)

    stray.wait(timeout=5)
    assert left == []
    assert not _alive(pid)
    assert not (tmp_path / "pids" / "tree.pid").exists()
    survivors = [child for child in children if _alive(child)]
    assert survivors == [], f"children of the daemon survived: {survivors}"


def test_wait_healthy_reports_a_crashed_component_with_its_log(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    sup.start("broken", ["bash", "-c", "echo 'flag --nope: unknown'; exit 3"])
    with pytest.raises(StartupError, match="broken exited during start-up") as error:
        sup.wait_healthy("broken", lambda: False, timeout=10)
    assert "flag --nope: unknown" in str(error.value)
