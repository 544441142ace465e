"""Warm worker commands: ``easeml worker evaluate`` and ``inspect`` forked from a process that
has imported their code already, instead of a fresh interpreter importing it each build.

Why: a trivial build ran two of them, and each spent most of its time importing. Python and
the package take ~0.1 s, NumPy ~0.15 s, SciPy's special functions (the Clopper-Pearson bounds)
~0.3 s. That is more than half of the service's own time per build.

How (a "zygote", as Android and ``multiprocessing``'s forkserver do it):

* the worker's ``buildbot.tac`` starts ``python -m easeml_buildbot.runner.warm SOCKET`` under
  Twisted's ``ProcessMonitor`` (restarted if it dies; it dies with the worker). It imports the
  commands' modules, freezes the GC and listens on a Unix socket in a private directory;
  only its own user may connect (``SO_PEERCRED`` is checked too);
* ``easeml worker evaluate|inspect`` (the worker's ``easeml`` shim, or ``easeml_buildbot.cli``;
  the client is ``runner/warm_client.py``) first tries the socket named by
  ``EASEML_WARM_SOCKET`` and hands over its stdin, stdout and stderr (``SCM_RIGHTS``); if no
  server answers, it runs in its own process as before. The build's command line, its log and
  its exit code are the same either way;
* the server forks one child per request and never reads the request itself: the child reads
  the argv, the working directory and the environment (which may hold a clone token), runs
  the command exactly as ``easeml`` would, and reports its exit code. So the server never
  holds a key, a token, a passphrase or any test-set byte; each evaluation is a fresh process
  that exits, and one evaluation cannot see another's memory;
* the client killed (a build stopped or timed out: Buildbot kills the command's process
  group), or the Buildbot worker killed (the client dies with it: ``PR_SET_PDEATHSIG``): the
  server sees the socket hang up and kills the child's process group with SIGKILL, as
  Buildbot's stop does to a cold command; the evaluation's own watchdog then cleans up.

The protocol is described in ``runner/warm_client.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence

from easeml_buildbot.runner.parent_death import die_with_parent
from easeml_buildbot.runner.warm_client import ENV, signal_group as _signal_group

#: what the server imports before it forks; a module that cannot be imported is skipped
PRELOAD = (
    "easeml_buildbot.cli",
    "easeml_buildbot.runner.cli",
    "easeml_buildbot.runner.evaluate",
    "easeml_buildbot.runner.base",
    "easeml_buildbot.runner.workspace",
    "easeml_buildbot.runner.process_runner",
    "easeml_buildbot.runner.docker_runner",
    "easeml_buildbot.custody.gpghome",
    "easeml_buildbot.custody.keys",
    "easeml_buildbot.custody.dataset",
    "easeml_buildbot.config",
    "easeml_buildbot.estimator.decision",
    "easeml_buildbot.estimator.samples",
    "scipy.special",
    "scipy.stats",
)
_HEADER = struct.Struct("!I")
#: the stops a build sends; the command unwinds on them, and once it is done they are held off
_STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: a request is argv, a path and an environment: bounded, as any input the server reads
MAX_REQUEST = 4 * 1024 * 1024

# ---------------------------------------------------------------------------------------
# server


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except OSError:
        return None
    return uid


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(min(65536, n - len(data)))
        if not chunk:
            raise EOFError("the client went away")
        data += chunk
    return bytes(data)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _child(conn: socket.socket, fds: list[int], length: int, inherited: list) -> None:
    """In the forked child: become the command, then exit (never returns)."""
    code = 1
    try:
        os.setpgid(0, 0)  # one group: the server kills it whole when the client hangs up
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter has it
        signal.set_wakeup_fd(-1)
        for other in inherited:  # the server's socket, its signal pipe, other clients
            other.close() if isinstance(other, socket.socket) else os.close(other)
        conn.settimeout(30)  # a client that stalls mid-request does not keep a child forever
        request = json.loads(_recv_exactly(conn, length))
        conn.settimeout(None)
        argv = [str(a) for a in request["argv"]]
        # to the server's log (the worker's twistd.log, the operator's): the command's name only
        print(f"easeml warm: {os.getpid()} runs {' '.join(argv[:2])}", flush=True)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.umask(int(request["umask"]))
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(ENV, None)  # the command runs here: it must not hand itself over again
        import tempfile

        tempfile.tempdir = None  # TMPDIR is the command's, not the server's
        sys.argv = ["easeml", *argv]
        conn.sendall(f"started {os.getpid()}\n".encode())
        from easeml_buildbot.cli import main

        try:
            code = int(main(argv) or 0)
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 - as an uncaught exception ends `easeml`
            import traceback

            traceback.print_exc()
            code = 1
        # done: a stop arriving now must not change the code or cut the report short (the
        # command's own handlers raise into whatever runs)
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        import atexit

        atexit._run_exitfuncs()  # what the interpreter's exit would run (temp dirs, ...)
    except BaseException:  # noqa: BLE001 - the child never returns into the server's loop
        code = 1
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:
            conn.sendall(f"exit {code & 0xFF}\n".encode())
        except OSError:
            pass
        os._exit(code & 0xFF)


def _listen(path: str) -> socket.socket:
    if os.path.exists(path) and not os.path.isdir(path):
        os.unlink(path)  # a server killed before it could remove it
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(16)
    return server


def serve(path: str, preload: Sequence[str] = PRELOAD) -> None:
    """Import ``preload``, then fork one child per request on the socket ``path`` until
    SIGTERM (or the parent's death). Single-threaded: a fork copies only the calling thread."""
    import gc
    import importlib
    import select

    die_with_parent(signal.SIGTERM)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no BLAS threads in a process that forks
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the command imports it itself, or fails as it would cold
            print(f"easeml warm: not preloaded: {name}: {type(exc).__name__}: {exc}", flush=True)
    try:
        from easeml_buildbot.estimator import tails

        tails._beta_ppf_ufunc()  # the Clopper-Pearson bounds' SciPy function, imported on first use
    except Exception:  # noqa: BLE001
        pass
    gc.collect()
    gc.freeze()  # the children share these pages instead of copying them when the GC runs

    stop: list[int] = []
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda s, _f: stop.append(s))
    signal.signal(signal.SIGINT, lambda s, _f: stop.append(s))
    server = _listen(path)
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    by_fd: dict[int, int] = {}  # a connection's fd -> the child's pid
    poller = select.poll()
    poller.register(server, select.POLLIN)
    poller.register(rfd, select.POLLIN)
    served = 0
    print(f"easeml warm: serving {path} (pid {os.getpid()})", flush=True)
    try:
        while not stop:
            for fd, _events in poller.poll():
                if fd == rfd:
                    os.read(rfd, 4096)
                    _reap(children, by_fd, poller)
                elif fd == server.fileno():
                    pid = _accept(server, children, [server, rfd, wfd])
                    if pid is not None:
                        served += 1
                        conn = children[pid]
                        by_fd[conn.fileno()] = pid
                        # a hang-up only (POLLRDHUP): the request's bytes are the child's to read
                        poller.register(conn, select.POLLRDHUP)
                elif fd in by_fd:  # the client hung up before its command ended
                    _signal_group(by_fd.pop(fd), signal.SIGKILL)
                    poller.unregister(fd)
    finally:
        server.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        # running commands are left to end (an evaluation is told by its PR_SET_PDEATHSIG)
        print(f"easeml warm: stopped after {served} commands", flush=True)


def _accept(server: socket.socket, children: dict[int, socket.socket], own: list) -> int | None:
    try:
        conn, _ = server.accept()
    except OSError:
        return None
    if _peer_uid(conn) != os.getuid():
        conn.close()
        return None
    # the client sends its header right after connecting; a same-user client that stalls holds
    # the loop (hang-ups, reaping) for at most this long
    conn.settimeout(1.0)
    fds: list[int] = []
    try:
        header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
        (length,) = _HEADER.unpack(header) if len(header) == _HEADER.size else (-1,)
        if len(fds) != 3 or not 0 < length <= MAX_REQUEST:
            raise ValueError("not a request")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        try:
            conn.send(b"cold\n", socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()
        return None
    if pid == 0:
        try:
            _child(conn, fds, length, [*own, *children.values()])
        finally:  # never back into the server's loop (its finally would remove the live socket)
            os._exit(1)
    try:
        os.setpgid(pid, pid)  # also here: a hang-up right after the fork must find the group
    except OSError:
        pass
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    return pid


def _reap(children: dict[int, socket.socket], by_fd: dict[int, int], poller) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        if by_fd.pop(conn.fileno(), None) is not None:
            poller.unregister(conn)
        # the child reports its own code; this is the same code, for a child that could not
        # (the client takes the first code line)
        answer = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                  else f"exit {os.waitstatus_to_exitcode(status) & 0xFF}")
        try:
            conn.send(f"{answer}\n".encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m easeml_buildbot.runner.warm SOCKET", file=sys.stderr)
        return 2
    serve(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
