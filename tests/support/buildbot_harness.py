"""Real Buildbot master and worker processes, started from the repository's own templates.

Used by tests/master, tests/email, tests/deploy and benchmarks/bench_master.py. Everything
runs on loopback with free ports, in a temporary directory, as child processes this
harness started (and stops, by pid).

API (stable; add keywords, never change these)::

    from support.buildbot_harness import BuildbotHarness, free_port

    with BuildbotHarness(tmp_path, settings={...}, workers=1, worker_env={...},
                         master_cfg_extra="", env={...}) as bb:
        bb.www_url                 # "http://127.0.0.1:PORT/" (UI, REST API, /change_hook/github)
        bb.settings_path           # the easeml.toml written for this master
        bb.master_dir, bb.worker_dirs
        bb.api("builds", order="-buildid")   # GET /api/v2/builds -> list of dicts
        bb.build_properties(buildid)          # {name: value}
        bb.wait_for_builds(n, timeout=120)    # n complete builds (dicts, by buildid)
        bb.force_build(builder="easeml", **properties) # via the ForceScheduler "force"
        bb.kill_worker(0); bb.start_worker(0)  # crash a worker (SIGKILL) and bring it back
        bb.restart_master()        # stop the master (SIGTERM, or SIGKILL with kill=True), start it again
        bb.post_webhook(event, payload, secret=..., delivery=None)  # -> (status, body)
        bb.master_log()            # text of twistd.log

``settings`` is merged over defaults (forge "local", www/worker ports, one worker per
``workers``) and written as TOML; nested tables are dicts, ``workers`` is filled in for
you. ``worker_env`` becomes the workers' ``[env]`` table (EASEML_WORKER_KEY, ...).
``master_cfg_extra`` is Python appended to master/master.cfg (e.g. an extra builder).
``env`` is added to both processes' environment. ``root`` is the source tree whose
master/master.cfg and worker/buildbot.tac are used (default: this repository; a benchmark
passes an older tree, with ``env={"PYTHONPATH": tree}``). ``worker_settings[i]`` adds top-level keys
to worker i's easeml-worker.toml (e.g. ``{"gpus": 2}``). Start-up is ~5-10 s on this machine.

Several masters on one database (tests/support/multimaster.py): ``worker_prefix`` names this
harness's workers (``worker1`` ... by default) so two harnesses' workers differ,
``bb.accept_workers(other.worker_passwords)`` before ``start()`` lets this master accept the
other's workers too, and a ``db_url`` that is not SQLite gets ``buildbot upgrade-master``
before the first start (the template's schema is SQLite's). ``bb.kill_master()`` is a crash
(SIGKILL), ``bb.worker_names`` lists the workers this harness runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from easeml_buildbot.demo.services import toml_dumps

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
_TEMPLATE_CACHE: dict[str, Path] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASEML_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _master_template() -> Path:
    """`buildbot create-master` once per session (it creates and upgrades the DB: slow)."""
    if "master" not in _TEMPLATE_CACHE:
        import tempfile

        import atexit

        top = Path(tempfile.mkdtemp(prefix="easeml-master-template-"))
        atexit.register(shutil.rmtree, top, True)
        d = top / "master"
        subprocess.run([str(VENV_BIN / "buildbot"), "create-master", "-q", "--relocatable", str(d)],
                       check=True, env=_clean_env(None), capture_output=True, timeout=180)
        _TEMPLATE_CACHE["master"] = d
    return _TEMPLATE_CACHE["master"]


class HarnessError(RuntimeError):
    pass


class BuildbotHarness:
    def __init__(self, base_dir: str | os.PathLike[str], settings: dict[str, Any] | None = None,
                 workers: int = 1, worker_env: dict[str, str] | None = None,
                 master_cfg_extra: str = "", env: dict[str, str] | None = None,
                 start_timeout: float = 90,
                 worker_settings: list[dict[str, Any]] | None = None,
                 worker_prefix: str = "worker", root: str | os.PathLike[str] | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.root = Path(root) if root is not None else ROOT
        self.master_dir = self.base_dir / "master"
        self.worker_names = [f"{worker_prefix}{i + 1}" for i in range(workers)]
        self.worker_dirs = [self.base_dir / n for n in self.worker_names]
        self.www_port = free_port()
        self.worker_port = free_port()
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/"
        self.www_url = f"http://127.0.0.1:{self.www_port}/"
        self.worker_passwords = {n: uuid.uuid4().hex for n in self.worker_names}
        self.admin = ("admin", uuid.uuid4().hex)  # the UI's only account that may force builds
        defaults: dict[str, Any] = {
            "forge": "local", "buildbot_url": self.www_url, "www_port": self.www_port, "bind_address": "127.0.0.1",
            "worker_port": self.worker_port, "metrics_port": self.metrics_port, "runner": "process", "email_enabled": False,
            "local": {"repo": str(self.base_dir / "repo"), "branch": "main", "poll_interval": 2},
            "workers": [{"name": n, "password": p} for n, p in self.worker_passwords.items()],
            "admin_user": self.admin[0], "admin_password": self.admin[1],
        }
        self.settings = _deep_merge(defaults, settings or {})
        self.settings["workers"] = defaults["workers"]
        self.worker_env = dict(worker_env or {})
        self.worker_settings = list(worker_settings or [])  # per worker, top-level keys (gpus = 2)
        self.master_cfg_extra = master_cfg_extra
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.settings_path = self.master_dir / "easeml.toml"
        self._procs: list[subprocess.Popen] = []

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> BuildbotHarness:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def accept_workers(self, passwords: dict[str, str]) -> None:
        """Let this master accept workers another harness runs (before ``start()``)."""
        self.settings["workers"] = list(self.settings["workers"]) + [
            {"name": n, "password": p} for n, p in passwords.items()]

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self.master_dir.exists():  # a restart after kill_master() keeps the directory
            shutil.copytree(_master_template(), self.master_dir)
        cfg = (self.root / "master" / "master.cfg").read_text()
        (self.master_dir / "master.cfg").write_text(cfg + ("\n" + self.master_cfg_extra if self.master_cfg_extra else ""))
        self.settings_path.write_text(toml_dumps(self.settings))
        env = _clean_env(self.env)
        if not str(self.settings.get("db_url", "sqlite")).startswith("sqlite"):
            r = subprocess.run([str(VENV_BIN / "buildbot"), "upgrade-master", str(self.master_dir)],
                               env=env, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise HarnessError(f"buildbot upgrade-master failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        self.master_proc = self._spawn([str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(self.master_dir)],
                                       self.master_dir, env)
        self._wait(lambda: self._www_up(), "the master's web server", self.master_proc)
        self.worker_procs: list[subprocess.Popen | None] = [None] * len(self.worker_dirs)
        for i in range(len(self.worker_dirs)):
            self.start_worker(i)

    def restart_master(self, kill: bool = False, timeout: float = 60) -> None:
        """Stop the master (SIGTERM and wait; ``kill``: SIGKILL) and start it on the same
        directory, database and ports; returns once its web server answers."""
        proc = self.master_proc
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        (self.master_dir / "twistd.pid").unlink(missing_ok=True)
        self.master_proc = self._spawn([str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(self.master_dir)],
                                       self.master_dir, _clean_env(self.env))
        self._wait(lambda: self._www_up(), "the restarted master's web server", self.master_proc)

    def kill_master(self) -> None:
        """SIGKILL the master (a crash: no goodbye to the database, the MQ or the workers)."""
        if self.master_proc.poll() is None:
            os.kill(self.master_proc.pid, signal.SIGKILL)
            self.master_proc.wait()

    def start_worker(self, index: int = 0) -> None:
        """(Re)start worker ``index`` and wait until it is connected."""
        wdir = self.worker_dirs[index]
        name = self.worker_names[index]
        if not (wdir / "buildbot.tac").exists():
            wdir.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.root / "worker" / "buildbot.tac", wdir / "buildbot.tac")
            wsettings = {"master": f"127.0.0.1:{self.worker_port}", "name": name,
                         "password": self.worker_passwords[name], "maxdelay": 2, "env": self.worker_env}
            if index < len(self.worker_settings):
                wsettings.update(self.worker_settings[index])
            (wdir / "easeml-worker.toml").write_text(toml_dumps(wsettings))
        proc = self._spawn([str(VENV_BIN / "twistd"), "--nodaemon", "--pidfile=", "-y", "buildbot.tac"], wdir,
                           _clean_env(self.env))
        self.worker_procs[index] = proc
        self._wait(lambda: self._worker_connected(name), f"worker {name} to connect", proc)

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL worker ``index`` (a crash: no goodbye to the master)."""
        proc = self.worker_procs[index]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def _spawn(self, argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(cwd / "process.out", "ab") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._procs.append(proc)
        return proc

    def _wait(self, cond: Any, what: str, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"process for {what} exited with {proc.returncode}:\n{self._tail()}")
            try:
                if cond():
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.2)
        raise HarnessError(f"timed out waiting for {what}:\n{self._tail()}")

    def _tail(self) -> str:
        """The end of every process's output and log (the failing one may not be the culprit)."""
        texts = []
        for d in [self.master_dir, *self.worker_dirs]:
            for name in ("process.out", "twistd.log"):
                p = d / name
                if p.exists():
                    texts.append(f"--- {p}\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(texts)

    def stop(self, timeout: float = 20) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()

    # -- REST API -----------------------------------------------------------------------
    def _www_up(self) -> bool:
        with urllib.request.urlopen(self.www_url, timeout=10) as r:
            r.read()  # never hang up mid-response (see easeml_buildbot/master/buildbot_fixes.py)
            return r.status == 200

    def _worker_connected(self, name: str) -> bool:
        for w in self.api("workers"):
            if w["name"] == name and w.get("connected_to"):
                return True
        return False

    def api(self, path: str, **query: Any) -> list[dict[str, Any]]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        url = f"{self.www_url}api/v2/{path}" + (f"?{qs}" if qs else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.load(r)
        key = [k for k in data if k != "meta"]
        return data[key[0]] if key else []

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the master's ``/metrics`` (parsed by prometheus-client), or None."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url + "metrics", timeout=30) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    def build_properties(self, buildid: int) -> dict[str, Any]:
        props = self.api(f"builds/{buildid}/properties")
        return {k: v[0] for k, v in (props[0] if props else {}).items()}

    def steps(self, buildid: int) -> list[dict[str, Any]]:
        return self.api(f"builds/{buildid}/steps")

    def step_logs_text(self, buildid: int) -> str:
        """All step logs of a build, concatenated (to assert what a developer can see)."""
        out = []
        for step in self.steps(buildid):
            for lg in self.api(f"steps/{step['stepid']}/logs"):
                url = f"{self.www_url}api/v2/logs/{lg['logid']}/raw"
                with urllib.request.urlopen(url, timeout=10) as r:
                    out.append(f"== {step['name']} / {lg['name']}\n" + r.read().decode(errors="replace"))
        return "\n".join(out)

    def wait_for_builds(self, count: int, timeout: float = 120, builder: str | None = None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        builds: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            builds = [b for b in self.api("builds", order="buildid") if b.get("complete")]
            if builder is not None:
                bid = {b["name"]: b["builderid"] for b in self.api("builders")}[builder]
                builds = [b for b in builds if b["builderid"] == bid]
            if len(builds) >= count:
                return builds
            if self.master_proc.poll() is not None:
                raise HarnessError(f"master exited:\n{self._tail()}")
            time.sleep(0.3)
        raise HarnessError(f"only {len(builds)} of {count} builds completed in {timeout}s:\n"
                           f"{self.master_log()[-6000:]}")

    def force_build(self, builder: str = "easeml", scheduler: str = "force", login: bool = True,
                    **properties: Any) -> None:
        """Force a build as the admin (``login=False``: anonymously, which must be refused)."""
        import base64
        import http.cookiejar

        bid = {b["name"]: b["builderid"] for b in self.api("builders")}[builder]
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        if login:
            token = base64.b64encode(f"{self.admin[0]}:{self.admin[1]}".encode()).decode()
            req = urllib.request.Request(f"{self.www_url}auth/login", headers={"Authorization": f"Basic {token}"})
            with opener.open(req, timeout=10) as r:
                r.read()
        body = {"jsonrpc": "2.0", "method": "force", "id": 1,
                "params": {"builderid": bid, **{k: str(v) for k, v in properties.items()}}}
        req = urllib.request.Request(f"{self.www_url}api/v2/forceschedulers/{scheduler}",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with opener.open(req, timeout=10) as r:
                reply = json.load(r)
        except urllib.error.HTTPError as e:
            e.read()
            raise HarnessError(f"force refused: HTTP {e.code}") from None
        if "error" in reply:
            raise HarnessError(f"force failed: {reply['error']}")

    def post_webhook(self, event: str, payload: dict[str, Any] | bytes, secret: str | None,
                     delivery: str | None = None, signature: str | None = None) -> tuple[int, str]:
        """POST like GitHub does; ``secret=None`` sends no signature, ``signature`` forces one."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event,
                   "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "User-Agent": "GitHub-Hookshot/test"}
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        elif secret is not None:
            headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(f"{self.www_url}change_hook/github", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def wait_first_poll(self, timeout: float = 30) -> None:
        """Wait for the local forge's first poll: it records the branch head and builds
        nothing, so a test commits only after it (or the commit is taken for the start)."""
        deadline = time.monotonic() + timeout
        while "gitpoller: processing changes" not in self.master_log() and time.monotonic() < deadline:
            time.sleep(0.2)

    def master_log(self) -> str:
        p = self.master_dir / "twistd.log"
        return p.read_text(errors="replace") if p.exists() else ""
