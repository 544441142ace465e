"""Run the model as a local subprocess: the same contract as the Docker runner, for local
use (``easeml run-local``), the demo and machines without Docker.

THIS IS NOT A SANDBOX. The model runs as the worker's user with the worker's filesystem
in reach. What it does get: a clean environment (no variable of the worker is passed on,
so no passphrase or token), no network when ``unshare -n`` works (root, or unprivileged
user namespaces), rlimits on address space, file size and core dumps, its own process
group killed at the wall-time limit. Use the Docker runner for code you do not trust.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from easeml_buildbot.runner.base import BoundedLog, Limits, ModelError, RunResult, model_path
from easeml_buildbot.runner.predictions import find_predictions, parse_predictions
from easeml_buildbot.runner.workspace import Workspace

_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
MODEL_PGID_FILE = "model.pgid"


def _join_continuations(text: str) -> list[str]:
    lines, cur = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        lines.append((cur + line).strip())
        cur = ""
    if cur.strip():
        lines.append(cur.strip())
    return lines


def _exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = json.loads(value)
            if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
                return parsed
        except json.JSONDecodeError:
            pass
    return ["/bin/sh", "-c", value]


def command_from_dockerfile(text: str) -> tuple[list[str], str]:
    """(ENTRYPOINT + CMD, WORKDIR) of the last stage of a Dockerfile."""
    entry: list[str] = []
    cmd: list[str] = []
    workdir = "/"
    for line in _join_continuations(text):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            entry, cmd, workdir = [], [], "/"
        elif word == "CMD":
            cmd = _exec_form(rest)
        elif word == "ENTRYPOINT":
            entry, cmd = _exec_form(rest), []
        elif word == "WORKDIR":
            wd = rest.strip().strip('"')
            workdir = wd if wd.startswith("/") else os.path.join(workdir, wd)
    return entry + cmd, workdir


def _map_path(arg: str, workdir: str, repo: Path) -> str:
    """``/model/predict.py`` with ``WORKDIR /model`` -> ``<checkout>/predict.py``."""
    wd = workdir.rstrip("/")
    if wd and (arg == wd or arg.startswith(wd + "/")):
        return str(repo / arg[len(wd):].lstrip("/"))
    return arg


@functools.cache
def unshare_prefix() -> tuple[str, ...]:
    """How to take the network away here: ``unshare -n`` (root), ``unshare -rn``
    (unprivileged user namespaces), or nothing. ``EASEML_PROCESS_UNSHARE=0`` disables."""
    if os.environ.get("EASEML_PROCESS_UNSHARE", "1") == "0" or not shutil.which("unshare"):
        return ()
    for prefix in (("unshare", "-n", "--"), ("unshare", "-rn", "--")):
        try:
            ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return prefix
    return ()


class ProcessRunner:
    """Runs the checkout's model command in a subprocess (see the module docstring)."""

    name = "process"
    sandboxed = False

    def __init__(self, *, python_dir: str | None = None) -> None:
        # `python3` in a model's command should find a Python with numpy: the worker's own.
        self.path = os.environ.get("EASEML_PROCESS_PATH") or \
            f"{python_dir or os.path.dirname(sys.executable)}:{_SYSTEM_PATH}"

    def command(self, repo: Path, model: Mapping[str, Any]) -> list[str]:
        """``model.command`` if given, else the Dockerfile's ENTRYPOINT/CMD (paths under its
        WORKDIR mapped into the checkout)."""
        given = model.get("command")
        if given:
            if isinstance(given, str):
                return shlex.split(given)
            if isinstance(given, (list, tuple)) and all(isinstance(a, str) for a in given):
                return list(given)
            raise ModelError("bad_model_config", "model.command must be a string or a list of strings")
        dockerfile = model_path(repo, str(model.get("dockerfile") or "Dockerfile"), "dockerfile")
        if not dockerfile.is_file():
            raise ModelError("dockerfile_missing",
                             f"no Dockerfile at {dockerfile.relative_to(repo)} and no model.command")
        argv, workdir = command_from_dockerfile(dockerfile.read_text(encoding="utf-8", errors="replace"))
        if not argv:
            raise ModelError("build_failed", f"{dockerfile.name} has no CMD or ENTRYPOINT")
        return [_map_path(a, workdir, repo) for a in argv]

    def _limits_in_child(self, limits: Limits) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output, limits.output))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def predict(self, repo_dir: str | os.PathLike[str], features_path: str | os.PathLike[str], *,
                tag: str = "", model: Mapping[str, Any] | None = None, limits: Limits | None = None,
                exclude: Sequence[str] = (), n_rows: int | None = None) -> RunResult:
        """Run the model on the features and return its predictions (``tag``/``exclude`` are
        accepted for the runner interface; there is no image here; ``n_rows``: the features'
        row count when the caller knows it)."""
        model = dict(model or {})
        limits = (limits or Limits.from_env()).lowered_by(model)
        repo = Path(repo_dir).resolve()
        out = BoundedLog(limits.log_bytes)
        err = BoundedLog(limits.log_bytes)
        timings: dict[str, float] = {}
        ws: Workspace | None = None
        started = False
        try:
            argv = self.command(repo, model)
            ws = Workspace.create(features_path, prefix="easeml-proc-", n_rows=n_rows)
            scratch = ws.root / "tmp"
            scratch.mkdir()
            env = {
                "PATH": self.path, "HOME": str(scratch), "TMPDIR": str(scratch),
                "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                "EASEML_FEATURES": str(ws.features), "EASEML_OUTPUT": str(ws.output),
                "EASEML_ROWS": str(ws.n_rows),
            }
            t0 = time.perf_counter()
            try:
                proc = subprocess.Popen(
                    [*unshare_prefix(), *argv], cwd=repo, env=env, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                    preexec_fn=lambda: self._limits_in_child(limits),  # noqa: PLW1509
                )
            except OSError as exc:
                raise ModelError("crash", f"cannot start {argv[0]!r}: {exc.strerror}") from None
            started = True  # the model's process has the features from here on
            # for the evaluation's watchdog: the group to kill if this process dies first
            (ws.root / MODEL_PGID_FILE).write_text(str(proc.pid))
            readers = [threading.Thread(target=self._pump, args=(proc.stdout, (out,)), daemon=True),
                       threading.Thread(target=self._pump, args=(proc.stderr, (out, err)), daemon=True)]
            for reader in readers:
                reader.start()
            timed_out = False
            try:
                code = proc.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill_group(proc)
                code = proc.wait()
            except BaseException:  # interrupted (a stop, the worker died): the model goes too
                self._kill_group(proc)
                raise
            self._kill_group(proc)  # children left behind by the model
            for reader in readers:
                reader.join(5)
            timings["run"] = time.perf_counter() - t0
            if timed_out:
                raise ModelError("timeout", f"the model ran longer than {limits.timeout:g}s and was killed")
            if code != 0:
                text = err.getvalue()
                if "MemoryError" in text or "Cannot allocate memory" in text:
                    raise ModelError("oom", f"the model ran out of memory (limit "
                                     f"{limits.memory >> 20} MiB of address space)")
                if code == -signal.SIGXFSZ or "File too large" in text:
                    raise ModelError("output_too_large", "the model wrote a file larger than "
                                     f"{limits.output >> 20} MiB")
                raise ModelError("crash", f"the model exited with code {code}")
            t0 = time.perf_counter()
            ws.check_output_size(limits.output)
            preds = parse_predictions(find_predictions(ws.output), ws.n_rows)
            timings["parse"] = time.perf_counter() - t0
            return RunResult(predictions=preds, log=f"--- run ---\n{out.getvalue()}", timings=timings)
        except ModelError as exc:
            exc.log = f"--- run ---\n{out.getvalue()}"
            exc.stderr = err.getvalue()
            exc.spent = exc.spent or started
            exc.timings = {**timings, **exc.timings}
            raise
        finally:
            if ws is not None:
                ws.remove()

    @staticmethod
    def _pump(pipe: Any, logs: Sequence[BoundedLog]) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            text = chunk.decode("utf-8", errors="replace")
            for log in logs:
                log.write(text)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
