"""Warm worker commands (runner/warm.py): ``easeml worker evaluate|inspect`` forked from a
server that has imported their code. The same command as a cold start in everything a build
sees (exit code, output, result), its own directory and environment, killed with its client,
and a server that never holds what the command was given."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support.procs import alive, stat_fields


SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(10**6)\n"


class Server:
    def __init__(self, sock: Path, proc: subprocess.Popen, log: Path) -> None:
        self.sock, self.proc, self.log = sock, proc, log

    def text(self) -> str:
        return self.log.read_text()

    def pids(self, command: str) -> list[int]:
        return [int(p) for p in re.findall(rf"easeml warm: (\d+) runs {command}", self.text())]


@pytest.fixture
def warm_server(tmp_path):
    d = Path(tempfile.mkdtemp(prefix="easeml-warm-test-"))  # sun_path is short: not under tmp_path
    sock, log = d / "sock", tmp_path / "warm.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "easeml_buildbot.runner.warm", str(sock)],
                                stdout=fh, stderr=subprocess.STDOUT)
    server = Server(sock, proc, log)
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield server
    proc.terminate()
    proc.wait(timeout=30)
    assert "stopped after" in server.text()
    assert not sock.exists()
    os.rmdir(d)


def easeml(args, *, warm: Server | None, env=None, cwd=None, **kw):
    env = {**os.environ, **(env or {})}
    env.pop("EASEML_WARM_SOCKET", None)
    if warm is not None:
        env["EASEML_WARM_SOCKET"] = str(warm.sock)
    return subprocess.run([sys.executable, "-m", "easeml_buildbot", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd, **kw)


def evaluate_args(repo, keys, head: str, out: Path, cache: Path, repo_arg: str | None = None):
    return ["worker", "evaluate", "--repo", repo_arg or str(repo.path), "--head", head, "--base", repo.base.sha,
            "--key", str(keys.private), "--runner", "process", "--cache-dir", str(cache), "--out", str(out)]


def test_a_warm_evaluation_is_the_cold_one(warm_server, digits_repo, service_keys, tmp_path):
    pr = digits_repo.commit_model(quality=0.95, branch="warm-same")
    results = {}
    for mode, server in (("cold", None), ("warm", warm_server)):
        out = tmp_path / f"{mode}.json"
        res = easeml(evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / f"cache-{mode}"), warm=server)
        assert res.returncode == 0, res.stderr
        results[mode] = (res, json.loads(out.read_text()))
    (cold, rc), (warm, rw) = results["cold"], results["warm"]
    assert warm_server.pids("worker evaluate"), warm_server.text()  # it did run warm
    assert cold.stdout == warm.stdout and cold.stderr == warm.stderr == ""
    assert rw["status"] == rc["status"] == "scored"
    assert rw["verdict"] == rc["verdict"] and rw["samples_used"] == rc["samples_used"]
    # a refused command (bad arguments) has the same code and message both ways
    bad = ["worker", "evaluate", "--repo", str(tmp_path / "missing"), "--head", "h", "--base", "b",
           "--key", "k", "--runner", "process", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "x.json")]
    c, w = easeml(bad, warm=None), easeml(bad, warm=warm_server)
    assert c.returncode == w.returncode == 2 and c.stderr == w.stderr and "not a directory" in w.stderr


def test_the_command_gets_its_own_directory_environment_and_umask(warm_server, digits_repo, service_keys,
                                                                 tmp_path):
    pr = digits_repo.commit_model(quality=0.9, branch="warm-env")
    out = tmp_path / "r.json"
    # --repo . : the client's working directory, not the server's
    res = easeml(evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / "c", repo_arg="."),
                 warm=warm_server, cwd=digits_repo.path)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["status"] == "scored"
    assert oct(out.stat().st_mode & 0o777) == oct(0o600)
    # the client's environment, not the server's: an operator limit the server never had
    res = easeml(evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / "c"),
                 warm=warm_server, env={"EASEML_TIMEOUT": "soon"})
    assert res.returncode == 2 and "operator limits" in res.stderr, res.stderr
    assert len(warm_server.pids("worker evaluate")) == 2


def _group(pgid: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit():
                continue
            fields = stat_fields(p.name)
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append((int(p.name), (p / "cmdline").read_bytes().replace(b"\0", b" ")[:200].decode()))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _start_sleeper(server, repo, keys, tmp_path, name):
    head = repo.commit_model(quality=0.9, branch=name, predict_py=SLEEPER).sha
    out, stdout = tmp_path / f"{name}.json", tmp_path / f"{name}.out"
    env = {k: v for k, v in os.environ.items() if k != "EASEML_WARM_SOCKET"}
    env["EASEML_WARM_SOCKET"] = str(server.sock)
    with open(stdout, "w") as fh:
        client = subprocess.Popen([sys.executable, "-m", "easeml_buildbot",
                                   *evaluate_args(repo, keys, head, out, tmp_path / "c")],
                                  stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while "building and running" not in stdout.read_text():
        assert client.poll() is None and time.monotonic() < deadline, stdout.read_text()
        time.sleep(0.05)
    time.sleep(1.0)  # the model is running now
    (child,) = [p for p in server.pids("worker evaluate")]
    return client, child, out, stdout


def test_a_killed_client_takes_its_command_with_it(warm_server, digits_repo, service_keys, tmp_path):
    """Buildbot stops a command by killing its process group: the warm command (not in that
    group) must die as a cold one would, and the evaluation's watchdog cleans up after it."""
    client, child, out, _ = _start_sleeper(warm_server, digits_repo, service_keys, tmp_path, "warm-kill")
    assert alive(child)
    client.kill()
    client.wait(timeout=30)
    deadline = time.monotonic() + 15
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the warm command outlived its client"
    deadline = time.monotonic() + 15
    while _group(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group(child), ("left in the command's process group", _group(child))
    assert not out.exists()  # killed, as a cold command killed with SIGKILL: no result
    # the server goes on serving
    pr = digits_repo.commit_model(quality=0.9, branch="warm-after-kill")
    res = easeml(evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / "c"), warm=warm_server)
    assert res.returncode == 0, res.stderr


def test_a_stop_signal_reaches_the_warm_command(warm_server, digits_repo, service_keys, tmp_path):
    """SIGTERM to the client (a stop that lets the command unwind) is passed on: the
    evaluation ends as a cold one does, with an ``interrupted`` result and its exit code."""
    client, child, out, stdout = _start_sleeper(warm_server, digits_repo, service_keys, tmp_path, "warm-term")
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == 4, stdout.read_text()
    r = json.loads(out.read_text())
    assert r["status"] == "infra_error" and r["cause"] == "interrupted" and r["spent"] is True
    assert not alive(child)


def test_without_a_server_the_command_runs_cold(digits_repo, service_keys, tmp_path):
    pr = digits_repo.commit_model(quality=0.9, branch="warm-none")
    out = tmp_path / "r.json"
    res = easeml(evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / "c"), warm=None,
                 env={"EASEML_WARM_SOCKET": str(tmp_path / "no-such.sock")})
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["status"] == "scored"


def test_a_bad_request_is_refused_and_costs_the_server_nothing(warm_server, digits_repo, service_keys, tmp_path):
    for payload in (b"", b"\x00", b"\xff\xff\xff\xff"):  # nothing, short, over the bound; no fds
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(warm_server.sock))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            assert s.recv(100) in (b"cold\n", b"")
    assert warm_server.proc.poll() is None
    pr = digits_repo.commit_model(quality=0.9, branch="warm-after-junk")
    out = tmp_path / "r.json"
    assert easeml(evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / "c"),
                  warm=warm_server).returncode == 0


def _memory_holds(pid: int, needle: bytes) -> bool:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if "r" not in perms or "w" not in perms:
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except (OSError, ValueError, OverflowError):
                continue
    return False


def test_the_server_never_reads_what_a_command_is_given(warm_server, digits_repo, service_keys, tmp_path):
    """The child reads the request (argv, environment: a clone token), not the server: its
    memory never holds it. Negative control: the child's does, while it runs."""
    if not os.access(f"/proc/{warm_server.proc.pid}/mem", os.R_OK):
        pytest.skip("cannot read another process's memory here")
    token = f"ghs_{os.urandom(12).hex()}"
    head = digits_repo.commit_model(quality=0.9, branch="warm-token", predict_py=SLEEPER).sha
    env = {k: v for k, v in os.environ.items() if k != "EASEML_WARM_SOCKET"}
    env.update(EASEML_WARM_SOCKET=str(warm_server.sock), EASEML_GIT_TOKEN=token)
    stdout = tmp_path / "o.txt"
    with open(stdout, "w") as fh:
        client = subprocess.Popen([sys.executable, "-m", "easeml_buildbot",
                                   *evaluate_args(digits_repo, service_keys, head, tmp_path / "r.json",
                                                  tmp_path / "c")], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "building and running" not in stdout.read_text():
            assert client.poll() is None and time.monotonic() < deadline, stdout.read_text()
            time.sleep(0.05)
        (child,) = warm_server.pids("worker evaluate")
        assert _memory_holds(child, token.encode())  # the control: the search finds it where it is
        assert not _memory_holds(warm_server.proc.pid, token.encode())
    finally:
        client.kill()
        client.wait(timeout=30)


def test_the_request_is_json_for_any_environment():
    """The client writes its JSON by hand (no json import): whatever an environment holds
    (quotes, backslashes, control characters, non-ASCII, undecodable bytes as lone
    surrogates), json.loads reads back the same strings."""
    import random

    from easeml_buildbot.runner.warm_client import quote, request

    rng = random.Random(7)
    pool = ['"', "\\", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "\U0001f600", "\udc80", "\udcff", "a", " ", "/"]
    strings = ["", *pool, *("".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(500))]
    for s in strings:
        assert json.loads(quote(s)) == s, repr(s)
    env = {s: s[::-1] for s in strings if s}
    got = json.loads(request(["worker", "evaluate", *strings[:50]], "/tmp/\udc80x", 0o027, env))
    assert got == {"argv": ["worker", "evaluate", *strings[:50]], "cwd": "/tmp/\udc80x", "umask": 0o027, "env": env}


def _shim(tmp_path: Path) -> Path:
    import easeml_buildbot

    from easeml_buildbot.runner.warm_client import install_shim

    return Path(install_shim(str(tmp_path / "bin"), sys.executable, str(Path(easeml_buildbot.__file__).parents[1]),
                             str(Path(sys.executable).parent / "easeml")))


def test_the_shim_is_not_written_where_it_could_not_start_or_is_not_the_workers_own(tmp_path):
    """buildbot.tac then leaves PATH alone (the interpreter's easeml, still warm): no shim
    whose #! line the kernel splits or cuts, none without a real easeml behind it, none in a
    directory someone else can write, and none written through a planted symlink."""
    from easeml_buildbot.runner.warm_client import SHEBANG_MAX, install_shim

    real = str(Path(sys.executable).parent / "easeml")
    pkg = str(Path(__file__).parents[2])
    for python, easeml_, why in ((f"{tmp_path}/my python/python3", real, "#! line"),
                                 ("/" + "p" * SHEBANG_MAX, real, "#! line"),
                                 (sys.executable, str(tmp_path / "no-easeml"), "no executable"),
                                 (sys.executable, str(tmp_path), "no executable")):  # a directory
        with pytest.raises(ValueError, match=why):
            install_shim(str(tmp_path / "a"), python, pkg, easeml_)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(private)  # a 0700 directory of ours, but reached by a link
    for d in (shared, tmp_path / "link"):
        with pytest.raises(ValueError, match="this user's alone"):
            install_shim(str(d), sys.executable, pkg, real)
    # a symlink planted at the temporary name is replaced, its target never written
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("untouched")
    (own / "easeml.new").symlink_to(target)
    (own / "easeml").symlink_to(target)  # and one at the final name
    old_umask = os.umask(0o177)  # a umask that would drop the owner's x bit
    try:
        path = Path(install_shim(str(own), sys.executable, pkg, real))
    finally:
        os.umask(old_umask)
    assert target.read_text() == "untouched" and not path.is_symlink()
    assert path.read_text().startswith(f"#!{sys.executable} -IS\n") and path.stat().st_mode & 0o777 == 0o700
    assert not (own / "easeml.new").exists()


def test_the_worker_shim_runs_warm_without_site_and_cold_without_a_server(warm_server, digits_repo,
                                                                          service_keys, tmp_path):
    """worker/buildbot.tac puts this shim first on the steps' PATH: under ``python -IS`` it
    imports no site, socket, json or typing (what made a client cost ~0.1 s), runs the
    command warm, and with no server exec's the real easeml, which runs it cold."""
    shim = _shim(tmp_path)
    pr = digits_repo.commit_model(quality=0.9, branch="warm-shim")
    env = {k: v for k, v in os.environ.items() if k != "EASEML_WARM_SOCKET"}
    for mode, sock in (("warm", str(warm_server.sock)), ("cold", str(tmp_path / "no-such.sock"))):
        out = tmp_path / f"{mode}.json"
        res = subprocess.run([str(shim), *evaluate_args(digits_repo, service_keys, pr.sha, out, tmp_path / "c")],
                             capture_output=True, text=True, timeout=300, env={**env, "EASEML_WARM_SOCKET": sock})
        assert res.returncode == 0, res.stderr
        assert json.loads(out.read_text())["status"] == "scored"
        assert len(warm_server.pids("worker evaluate")) == 1  # the warm run only
    # a refused command: the same code and message as the real easeml's
    bad = ["worker", "inspect", "--bogus"]
    w = subprocess.run([str(shim), *bad], capture_output=True, text=True, timeout=60,
                       env={**env, "EASEML_WARM_SOCKET": str(warm_server.sock)})
    c = easeml(bad, warm=None)
    assert w.returncode == c.returncode == 2 and w.stderr == c.stderr
    # what the shim's interpreter imports before it hands the command over
    trace = subprocess.run([sys.executable, "-IS", "-X", "importtime", str(shim), "worker", "inspect", "--help"],
                           capture_output=True, text=True, timeout=60,
                           env={**env, "EASEML_WARM_SOCKET": str(warm_server.sock)})
    assert trace.returncode == 0 and "--no-plan" in trace.stdout, trace.stderr[-2000:]
    imported = {ln.split("|")[-1].strip() for ln in trace.stderr.splitlines() if ln.startswith("import time:")}
    assert "easeml_buildbot.runner.warm_client" in imported
    assert not imported & {"site", "socket", "json", "typing", "enum", "easeml_buildbot.cli", "argparse"}, imported
