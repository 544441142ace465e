"""The warm server's client: ``easeml worker evaluate|inspect`` handed to the worker's warm
server (runner/warm.py), in an interpreter that imports almost nothing.

Why a module of its own: the client runs twice per build, and a ``python`` with ``site``,
``typing``, ``socket`` (``enum``, ``selectors``) and ``json`` spends ~50 ms importing before it
connects (~0.1 s with an editable install's finder), more than the fork it asks for. This
module imports only C modules of the standard library (``_socket``, ``_signal``) and
``parent_death`` (``ctypes``, for ``PR_SET_PDEATHSIG``), so the worker's ``easeml`` shim
(written by ``worker/buildbot.tac``, see :func:`shim`) starts it under ``python -IS`` in
~20 ms. ``easeml_buildbot.cli`` uses the same :func:`delegate`; when no server runs the shim
``exec``s the real ``easeml``, which runs the command cold: the build sees the same command
line, log and exit code either way.

The protocol (the server's side is in runner/warm.py): the client sends 4 bytes (the
request's length, big-endian) with its fds 0, 1, 2 attached, then the request, JSON
``{"argv", "cwd", "umask", "env"}``. The child answers ``started PID``, later ``exit N``;
``signal N`` if it died of a signal. ``cold`` or nothing before ``started``: nothing ran.
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

#: the environment variable naming the server's socket (set by worker/buildbot.tac)
ENV = "EASEML_WARM_SOCKET"
#: the commands that may run warm: what the build steps run on the worker, nothing else
COMMANDS = (("worker", "evaluate"), ("worker", "inspect"))
#: the stops a build sends; passed on to the command, which unwinds on them
STOPS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)

# JSON strings by hand (json imports re and its decoder): escape what JSON must (quote,
# backslash, control characters) and lone surrogates (an environment's undecodable bytes,
# as os.environ holds them), which UTF-8 cannot carry; json.loads gives back the same str
_ESCAPES = {c: f"\\u{c:04x}" for c in (*range(0x20), *range(0xD800, 0xE000))}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def quote(s: str) -> str:
    """``s`` as a JSON string: ``json.loads(quote(s)) == s`` for every str without a
    surrogate pair (os.environ and argv hold lone surrogates only; a pair comes back joined)."""
    return '"' + s.translate(_ESCAPES) + '"'


def request(argv: list[str], cwd: str, umask: int, env: dict[str, str]) -> bytes:
    """The request the server's child reads: JSON, UTF-8."""
    items = ",".join(f"{quote(k)}:{quote(v)}" for k, v in env.items())
    return (f'{{"argv":[{",".join(quote(a) for a in argv)}],"cwd":{quote(cwd)},'
            f'"umask":{int(umask)},"env":{{{items}}}}}').encode("utf-8")


def delegate(argv: list[str]) -> int | None:
    """Run ``easeml ARGV`` in the warm server; the exit code, or None when it did not run
    there (no server, not a warm command): then the caller runs it itself."""
    path = os.environ.get(ENV)
    if not path or tuple(argv[:2]) not in COMMANDS:
        return None
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    from easeml_buildbot.runner.parent_death import die_with_parent

    # the Buildbot worker killed with -9: we die, the server sees the hang-up, the child goes
    die_with_parent(_signal.SIGKILL)
    umask = os.umask(0o077)
    os.umask(umask)
    body = request(list(argv), os.getcwd(), umask, dict(os.environ))
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2))
    answer, child, code = b"", None, None
    try:
        conn.sendmsg([len(body).to_bytes(4, "big")], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        conn.sendall(body)
        # until the code, not EOF: what the command forked (its watchdog) may hold the socket
        while (code := answer_code(answer, "exit", "signal")) is None and (chunk := conn.recv(4096)):
            answer += chunk
            if child is None and (child := answer_code(answer, "started")) is not None:
                # a stop (SIGTERM, ...) reaches the command as it would reach it cold: it
                # unwinds (container, features copy, plaintext removed) and answers its code
                for sig in STOPS:
                    _signal.signal(sig, lambda signum, _f, pid=child: signal_group(pid, signum))
    except OSError:
        code = None
    finally:
        conn.close()
        if child is not None:  # no late stop to a pid that may be another process's by now
            for sig in STOPS:
                _signal.signal(sig, _signal.SIG_DFL)
    if child is None:
        return None  # refused, or dropped before anything ran
    if code is None:
        print("easeml: the warm worker server went away during the command", file=sys.stderr)
        return 4
    return code


def signal_group(pid: int, signum: int) -> None:
    """``signum`` to the command's process group (a stop, as Buildbot's reaches a cold
    command's; SIGKILL when its client hung up), or to the command if it has none yet."""
    try:
        os.killpg(pid, signum)
    except OSError:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def answer_code(answer: bytes, *words: str) -> int | None:
    """The number of the first complete line ``WORD N`` (``signal N``: 128 + N, as a shell says)."""
    for line in answer.decode("ascii", "replace").splitlines(keepends=True):
        parts = line.split()
        if line.endswith("\n") and len(parts) == 2 and parts[0] in words and parts[1].isdigit():
            return int(parts[1]) + (128 if parts[0] == "signal" else 0)
    return None


def shim(python: str, package_parent: str, easeml: str) -> str:
    """The text of the worker's ``easeml`` shim: this client under ``python -IS`` (no ``site``,
    no environment-given paths; the package's directory appended to ``sys.path`` only),
    ``exec``-ing the real ``easeml`` when the command does not run warm."""
    return (f"#!{python} -IS\n"
            "# the warm client (easeml_buildbot/runner/warm_client.py); written by buildbot.tac\n"
            f"import sys\nsys.path.append({package_parent!r})\n"
            "from easeml_buildbot.runner.warm_client import main\n"
            f"main({easeml!r})\n")


#: the longest interpreter path a ``#!`` line carries whole (Linux: 255 bytes, 127 before 5.1)
SHEBANG_MAX = 120


def install_shim(directory: str, python: str, package_parent: str, easeml: str) -> str:
    """Write the shim as ``DIRECTORY/easeml`` (mode 0700); its path.

    Raises ValueError (the reason) instead of writing a shim that cannot start: an
    interpreter path a ``#!`` line does not carry (whitespace, longer than
    :data:`SHEBANG_MAX`), no executable ``easeml`` to fall back on, or a directory that is
    not this user's own (a symlink, another owner, group or other permissions). The file is
    created anew (``O_EXCL | O_NOFOLLOW``) and renamed into place."""
    if len(os.fsencode(python)) > SHEBANG_MAX or any(c.isspace() for c in python):
        raise ValueError(f"the interpreter path {python!r} does not fit a #! line")
    if not (os.path.isfile(easeml) and os.access(easeml, os.X_OK)):
        raise ValueError(f"no executable {easeml} to run cold commands with")
    import stat  # here, not at the top: the shim itself starts on C modules only

    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ValueError(f"{directory} is not a directory of this user's alone (mode 0700)")
    new, final = os.path.join(directory, "easeml.new"), os.path.join(directory, "easeml")
    try:
        os.unlink(new)
    except FileNotFoundError:
        pass
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o700)  # whatever the umask: the worker user must be able to run it
        fh.write(shim(python, package_parent, easeml))
    os.replace(new, final)
    return final


def main(easeml: str) -> None:
    """The shim's entry point: the command warm, else ``exec`` of the real ``easeml`` (which
    then runs it cold, as it would with no shim)."""
    argv = sys.argv[1:]
    code = delegate(argv)
    if code is not None:
        sys.exit(code)
    os.environ.pop(ENV, None)  # it did not run warm: the real easeml need not ask again
    os.execv(easeml, [easeml, *argv])
