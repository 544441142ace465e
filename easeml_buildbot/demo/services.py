"""The demo's master and worker: real ``buildbot``/``twistd`` processes from the
repository's own ``master/master.cfg`` and ``worker/buildbot.tac`` templates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
CHECKOUT = Path(__file__).resolve().parents[2]


class ServiceError(RuntimeError):
    """A demo service did not start; the message carries the tail of its log."""


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def toml_dumps(data: dict[str, Any]) -> str:
    """Enough TOML for settings files: scalars and lists of scalars first, then tables and
    arrays of tables; ``None`` values are left out (the setting's default applies)."""
    lines, tables = [], []
    for k, v in data.items():
        if isinstance(v, dict) or (isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v)):
            tables.append((k, v))
        elif v is not None:
            lines.append(f"{k} = {toml_value(v)}")
    for k, v in tables:
        for item in ([v] if isinstance(v, dict) else v):
            lines.append(f"\n[{k}]" if isinstance(v, dict) else f"\n[[{k}]]")
            lines += [f"{kk} = {toml_value(vv)}" for kk, vv in item.items() if vv is not None]
    return "\n".join(lines) + "\n"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without EASEML_* (the demo's settings files decide)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEML_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Processes:
    """Children this demo started, each in its own session; stopped by pid, newest first."""

    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        out = open(cwd / "process.out", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 20) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)  # its own session: it and its children
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self.procs.clear()


def template(relative: str) -> str:
    path = CHECKOUT / relative
    if not path.exists():
        raise ServiceError(f"{path}: missing (run the demo from a checkout of easeml-buildbot)")
    return path.read_text()


def wait_until(cond, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what}: the process exited with {proc.returncode}\n{tail(log)}")
        try:
            if cond():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.3)
    raise ServiceError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail(log)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return f"--- {path} (tail)\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return f"--- {path}: no log"


class Master:
    def __init__(self, directory: Path, settings: dict[str, Any], procs: Processes) -> None:
        self.dir = directory
        self.settings = settings
        self.procs = procs
        self.url = settings["buildbot_url"]

    def start(self, timeout: float = 180) -> None:
        self.dir.mkdir(parents=True)
        r = subprocess.run([str(BIN / "buildbot"), "create-master", "-q", "--relocatable", str(self.dir)],
                           env=clean_env(), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise ServiceError(f"buildbot create-master failed:\n{r.stdout}{r.stderr}")
        (self.dir / "master.cfg").write_text(template("master/master.cfg"))
        (self.dir / "easeml.toml").write_text(toml_dumps(self.settings))
        self.proc = self.procs.spawn([str(BIN / "buildbot"), "start", "--nodaemon", str(self.dir)],
                                     self.dir, clean_env())
        wait_until(lambda: self.get("api/v2/builders") is not None, "the master's web server",
                   self.proc, self.dir / "twistd.log", timeout)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=15) as r:
            return json.load(r)

    def api(self, path: str) -> list[dict[str, Any]]:
        data = self.get("api/v2/" + path)
        keys = [k for k in data if k != "meta"]
        return data[keys[0]] if keys else []

    def log(self) -> str:
        p = self.dir / "twistd.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


class Worker:
    def __init__(self, directory: Path, settings: dict[str, Any], master: Master, procs: Processes) -> None:
        self.dir = directory
        self.settings = settings
        self.master = master
        self.procs = procs
        self.name = settings["name"]

    def start(self, timeout: float = 60) -> None:
        self.dir.mkdir(parents=True)
        (self.dir / "buildbot.tac").write_text(template("worker/buildbot.tac"))
        (self.dir / "easeml-worker.toml").write_text(toml_dumps(self.settings))
        self.proc = self.procs.spawn([str(BIN / "twistd"), "--nodaemon", "--pidfile=", "-y", "buildbot.tac"],
                                     self.dir, clean_env())
        wait_until(self.connected, f"worker {self.name} to connect", self.proc, self.dir / "twistd.log", timeout)

    def connected(self) -> bool:
        return any(w["name"] == self.name and w.get("connected_to") for w in self.master.api("workers"))
