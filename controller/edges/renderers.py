"""Kustomize and Helm: app folders rendered by the tools their users already run.

A folder holding a `kustomization.yaml` is rendered by `kustomize build`, one holding a
`Chart.yaml` by `helm template`; the output is parsed like any manifest file. The tools are
pinned binaries (hack/render-tools/build.sh), found on PATH or given by flag.

The deploy repository is untrusted, so a render runs:
- with no network: a PATH holding nothing but the tool (no `git` for a remote base), HTTP(S)
  proxies pointed at a closed port, and a fresh HOME and Helm cache for every run;
- under a deadline, killed with its process group when it passes;
- with bounded output: more than MAX_APP_BYTES of YAML is an error, not a memory spike.
A failure is an InputError quoting the tool's own message, for the commit status.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.domain.limits import MAX_APP_BYTES
from controller.domain.policy import CHART_FILE
from controller.errors import InputError

RENDER_TIMEOUT = 30.0  # seconds, per render
_MESSAGE = 300  # characters of the tool's message kept for the status
_CLOSED = "http://127.0.0.1:9"  # the discard port: nothing answers there


@dataclass(frozen=True)
class Tools:
    kustomize: Path | None = None
    helm: Path | None = None
    timeout: float = RENDER_TIMEOUT

    @classmethod
    def found(cls, kustomize: str | None = None, helm: str | None = None) -> Tools:
        """The tools given, else those on PATH (None: not installed; a folder that needs one
        gets an error status saying so)."""
        def locate(given: str | None, name: str) -> Path | None:
            where = given or shutil.which(name)
            return Path(where).resolve() if where else None
        return cls(locate(kustomize, "kustomize"), locate(helm, "helm"))

    def kustomize_build(self, root: Path, folder: str, shown: str) -> str:
        """`kustomize build` of `root/folder`; `shown` names the folder in errors."""
        tool = self._need(self.kustomize, "kustomize", shown)
        return self._run([str(tool), "build", str(root / folder) if folder else str(root)],
                         root, f"{shown}kustomization.yaml", "kustomize build")

    def helm_template(self, chart: Path, release: str, namespace: str,
                      values_files: tuple[str, ...], values: str | None, shown: str) -> str:
        tool = self._need(self.helm, "helm", shown)
        args = [str(tool), "template", release, str(chart), "--namespace", namespace,
                "--include-crds"]
        for name in values_files:
            args += ["--values", str(chart / name)]
        with tempfile.TemporaryDirectory(prefix="gitops-canary-values-") as scratch:
            if values is not None:  # canary.yaml's helm.values: the last values file
                inline = Path(scratch) / "values.yaml"
                inline.write_text(values)
                args += ["--values", str(inline)]
            return self._run(args, chart, f"{shown}{CHART_FILE}", "helm template")

    @staticmethod
    def _need(tool: Path | None, name: str, shown: str) -> Path:
        if tool is None:
            raise InputError(f"{shown}", "", f"renders with {name}, which this controller does "
                                             f"not have (--{name} PATH, or {name} on PATH)")
        return tool

    def _run(self, args: list[str], cwd: Path, file: str, what: str) -> str:
        with tempfile.TemporaryDirectory(prefix="gitops-canary-render-") as home:
            env = {"PATH": str(Path(args[0]).parent), "HOME": home, "LANG": "C",
                   "HELM_CACHE_HOME": f"{home}/cache", "HELM_CONFIG_HOME": f"{home}/config",
                   "HELM_DATA_HOME": f"{home}/data", "KUBECONFIG": f"{home}/none",
                   **{proxy: _CLOSED for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                                   "https_proxy", "ALL_PROXY")}}
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                process = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=err, start_new_session=True)
                try:
                    code = process.wait(timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    _kill(process)
                    raise InputError(file, what, f"did not finish in {self.timeout:g}s") \
                        from None
                except BaseException:
                    _kill(process)
                    raise
                if out.tell() > MAX_APP_BYTES:
                    raise InputError(file, what, f"rendered more than {MAX_APP_BYTES // 2**20} "
                                                 f"MiB of YAML (the limit per app)")
                out.seek(0)
                err.seek(0)
                text = out.read().decode("utf-8", errors="replace")
                message = err.read(64 * 1024).decode("utf-8", errors="replace")
        if code != 0:
            raise InputError(file, what, _last_words(message, Path(cwd)) or f"exit code {code}")
        return text


def _last_words(message: str, cwd: Path) -> str:
    """The tool's message, short, without the temporary paths it ran in."""
    text = " ".join(message.replace(str(cwd), ".").split())
    text = text.removeprefix("Error: ")
    return text if len(text) <= _MESSAGE else text[:_MESSAGE - 1] + "…"


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 9)
    process.wait()
