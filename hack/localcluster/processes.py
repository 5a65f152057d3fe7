"""Daemons that outlive the command that started them, and that `down` can always find again.

Each daemon runs in its own session (process group) with its log in the state folder and its
pid in `pids/<name>.pid`. Stopping signals the whole group, waits, then kills; as a last sweep
`down` also ends any process whose command line names the state folder, so a lost pid file
never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class StartupError(RuntimeError):
    """A component did not become healthy; the message names it and quotes its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child, exited: now reaped
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Supervisor:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.pids = state / "pids"
        self.logs = state / "logs"

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        # posix_spawn rather than Popen: the daemon must outlive this process, and a Popen
        # object dropped while its child runs is a leak warning. Dead children are reaped in
        # _alive.
        log = os.open(self.logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                {**os.environ, **(env or {})},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(log)
        (self.pids / f"{name}.pid").write_text(str(pid))
        return pid

    def pid(self, name: str) -> int | None:
        try:
            return int((self.pids / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and _alive(pid)

    def wait_healthy(self, name: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running(name):
                raise StartupError(
                    f"{name} exited during start-up; last lines of "
                    f"{self.logs / (name + '.log')}:\n{tail(self.logs / (name + '.log'))}"
                )
            if check():
                return
            time.sleep(0.2)
        raise StartupError(
            f"{name} not healthy after {timeout:.0f}s; last lines of "
            f"{self.logs / (name + '.log')}:\n{tail(self.logs / (name + '.log'))}"
        )

    def stop(self, name: str, grace: float = 10.0) -> None:
        pid = self.pid(name)
        if pid is not None:
            _terminate_group(pid, grace)
        with contextlib.suppress(FileNotFoundError):
            (self.pids / f"{name}.pid").unlink()

    def stop_all(self, order: Sequence[str], grace: float = 10.0) -> list[int]:
        """Stop the named daemons in order, then every stray process that names the state folder.

        Returns the pids still alive afterwards (empty when everything is gone).
        """
        for name in order:
            self.stop(name, grace)
        for path in sorted(self.pids.glob("*.pid")) if self.pids.exists() else []:
            self.stop(path.stem, grace)
        needle = f"{self.state}/"
        for pid in _processes_naming(needle):
            _terminate_group(pid, grace)
        return [pid for pid in _processes_naming(needle) if _alive(pid)]


def _terminate_group(pid: int, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _processes_naming(needle: str) -> list[int]:
    """Processes whose command line names `needle`, except this one and its ancestors."""
    spared = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found
