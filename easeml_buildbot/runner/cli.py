"""``easeml worker inspect`` and ``easeml worker evaluate``: what the master's build steps
run on the worker. Both write their JSON to ``--out`` (the master reads the status from the
file); usage errors exit 2 with a message on stderr. ``inspect`` exits 0 once its JSON is
written. ``evaluate`` exits with ``EXIT_CODES[status]`` once result.json is written, so the
build step that failed is the one Buildbot shows red: 0 scored (whatever the verdict: the exit
code is in the developer-visible log, the verdict may not be), 1 the model failed, 3 not
evaluated for a configuration or test-set reason, 4 a service-side failure.
Neither ever prints labels, estimates or the verdict: stdout is the Buildbot build log."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any


#: ``easeml worker evaluate``'s exit code per result.json status (see the module docstring)
# labels_needed (labels on demand) exits like scored: the public log must not tell them apart
EXIT_CODES = {"scored": 0, "labels_needed": 0, "model_error": 1, "config_error": 3, "dataset_error": 3,
              "infra_error": 4}


def _write_json(path: str, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        # not ASCII-escaped: a model's log of non-ASCII text must not grow sixfold
        json.dump(data, fh, indent=2, default=str, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, p)


def _inspect(args: argparse.Namespace) -> int:
    from easeml_buildbot.runner.evaluate import inspect_repo

    if not Path(args.repo).is_dir():
        print(f"easeml worker inspect: --repo {args.repo}: not a directory", file=sys.stderr)
        return 2
    if (args.base_ref is None) != (args.default_branch is None):
        print("easeml worker inspect: --base-ref and --default-branch go together", file=sys.stderr)
        return 2
    data = inspect_repo(args.repo, args.base, args.head, config_rev=args.config_rev,
                        base_ref=args.base_ref, default_branch=args.default_branch, plan=args.plan)
    _write_json(args.out, data)
    where = f"configuration {str(data['config_rev'])[:12]}" if data.get("config_rev") else "configuration"
    if data["ok"]:
        print(f"inspected {where}: dataset {data['dataset_id'][:12]}"
              + (f", {data['samples_needed']} samples needed" if data["samples_needed"] is not None else ""))
    elif data.get("not_evaluated"):
        print(f"inspected {where}: {data['not_evaluated']}")
    else:
        print(f"inspected {where}: {data['error']}")
    if data["protected_changed"]:
        print("the pull request changes protected files: " + ", ".join(data["protected_changed"]))
    return 0


class Interrupted(BaseException):
    """SIGTERM/SIGINT/SIGHUP (a stopped build, or the worker died: ``parent_death``).
    A BaseException, so no ``except Exception`` on the way swallows it and every
    ``finally`` (container, features copy, decrypted test set) runs."""


_interrupted: list[int] = []


def _on_signal(signum: int, frame: Any) -> None:
    _interrupted.append(signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # one unwinding; a second signal must not cut it short
    raise Interrupted(signum)


def _start_watchdog(dirs: list[Path], runner: str) -> int | None:
    """Fork a watchdog in its own session (a build stop kills the worker's process group
    with SIGKILL, which no handler survives). It waits on a pipe: our normal end writes a
    byte first; EOF alone means we died, and it removes what we left: the private
    directories of our pid (decrypted test set, features copy) and our Docker containers
    and volumes. Returns the pipe's write end, or None when forking is not possible."""
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        return None
    if pid:
        os.close(r)
        return w
    # -- the watchdog (single-threaded: forked before any thread or client exists)
    code = 0
    try:
        os.close(w)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # never hold the build log's pipe open
            os.dup2(devnull, fd)
        owner_pid = os.getppid()
        try:
            done = os.read(r, 1)
        except OSError:
            done = b""
        if not done:
            _clean_after(owner_pid, dirs, runner)
    except BaseException:  # noqa: BLE001 - a watchdog never raises into the caller's code
        code = 1
    os._exit(code)


def _clean_after(pid: int, dirs: list[Path], runner: str) -> None:
    import socket
    import time

    from easeml_buildbot.custody.gpghome import secure_tmp_base, sweep_stale

    for _ in range(100):  # wait for the kernel to finish the dead process off
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            break
        time.sleep(0.05)
    from easeml_buildbot.runner.process_runner import MODEL_PGID_FILE

    for base in dirs:  # process runner: its model runs in its own session
        for f in Path(base).glob(f"easeml-proc-{pid}-*/{MODEL_PGID_FILE}"):
            try:
                os.killpg(int(f.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    for base in {*dirs, secure_tmp_base()}:
        if base is not None:
            sweep_stale(Path(base))
    if runner == "docker":
        try:
            from easeml_buildbot.runner.docker_runner import DockerRunner

            DockerRunner().reap_owner(f"{socket.gethostname()}:{pid}")
        except Exception:  # noqa: BLE001 - no daemon: nothing of ours runs there
            pass


def _evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from easeml_buildbot.custody.gpghome import sweep_stale
    from easeml_buildbot.custody.keys import KeysError, resolve_passphrase
    from easeml_buildbot.runner.base import Limits
    from easeml_buildbot.runner.parent_death import die_with_parent
    from easeml_buildbot.runner.evaluate import evaluate_pr
    from easeml_buildbot.runner.workspace import run_base_dir

    # Die with the worker, unwind on a stop; clean up after a SIGKILL of ourselves too.
    die_with_parent(signal.SIGTERM)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _on_signal)
    dirs = [Path(run_base_dir() or tempfile.gettempdir()), Path(tempfile.gettempdir())]
    for d in set(dirs):
        sweep_stale(d)  # left by an evaluation killed with -9 before its watchdog ran
    watchdog = _start_watchdog(dirs, args.runner)
    try:
        return _evaluate_guarded(args, limits_cls=Limits, resolve_passphrase=resolve_passphrase,
                                 keys_error=KeysError, evaluate_pr=evaluate_pr)
    finally:
        # after a signal the watchdog checks too: the signal may have cut a step of the
        # clean-up short (a container the daemon created while we were being stopped)
        if watchdog is not None:
            try:
                if not _interrupted:
                    os.write(watchdog, b"x")
                os.close(watchdog)
            except OSError:
                pass


def _evaluate_guarded(args: argparse.Namespace, *, limits_cls: Any, resolve_passphrase: Any,
                      keys_error: Any, evaluate_pr: Any) -> int:
    Limits, KeysError = limits_cls, keys_error  # noqa: N806

    try:
        passphrase = resolve_passphrase(args.passphrase_file, required=False)
    except KeysError as exc:  # names the file
        print(f"easeml worker evaluate: {exc}", file=sys.stderr)
        return 2
    try:
        limits = Limits.from_env()
    except ValueError as exc:
        print(f"easeml worker evaluate: operator limits: {exc}", file=sys.stderr)
        return 2
    if not Path(args.repo).is_dir():
        print(f"easeml worker evaluate: --repo {args.repo}: not a directory", file=sys.stderr)
        return 2
    # SIGTERM (a stopped build, or the worker died) raises Interrupted: the running container,
    # the features copy and the decrypted test set are removed on the way out (finally
    # blocks); SIGKILL of this process is the watchdog's and DockerRunner.reap_stale's.
    progress: dict[str, Any] = {"spent": False}
    try:
        result = evaluate_pr(args.repo, head=args.head, base=args.base, config_rev=args.config_rev,
                             key=args.key,
                             passphrase=passphrase, runner=args.runner, cache_dir=args.cache_dir,
                             limits=limits, echo=_echo, progress=progress, plan=args.plan)
    except Interrupted as exc:
        result = {"status": "infra_error", "cause": "interrupted", "scored": False,
                  "spent": bool(progress["spent"]), "verdict": None,
                  "message": f"the evaluation was stopped (signal {exc.args[0]})", "dataset_id": None,
                  "samples_used": 0, "timings": {}}
    except Exception as exc:  # noqa: BLE001 - a bug here must still leave a result for the master
        # evaluate_pr returns as soon as decide() has a verdict, so nothing was scored; a model
        # may have seen the features already (progress), then the use is spent.
        # type and place only: an exception's message could quote data
        where = traceback.extract_tb(exc.__traceback__)[-1]
        _echo(f"worker error: {type(exc).__name__} at {where.filename}:{where.lineno}", sys.stderr)
        result = {"status": "infra_error", "cause": "worker", "scored": False,
                  "spent": bool(progress["spent"]), "verdict": None,
                  "message": f"the worker failed: {type(exc).__name__}", "dataset_id": None,
                  "samples_used": 0, "timings": {}}
    _write_json(args.out, result)
    # labels on demand: a use waiting for the owners' labels reads like a scored one here
    # (the build log is the developer's; that labels are needed, or how many, is not)
    line = f"status: {'scored' if result['status'] == 'labels_needed' else result['status']}"
    if result["status"] not in ("scored", "labels_needed"):
        line += f" ({result.get('cause')}): {result.get('message')}"
        line += ("\nthe test-set use is counted: a model was started with the features"
                 if result.get("spent") else "\nthe test-set use is not counted (no model saw the test set)")
    _echo(line)
    return EXIT_CODES.get(result["status"], 4)


def _echo(text: str, stream: Any = None) -> None:
    """Print to the build log; a worker that went away (closed pipe) must not stop the
    evaluation from cleaning up and writing its result."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def register(subparsers: Any) -> None:
    worker = subparsers.add_parser("worker", help="worker-side steps of an evaluation build",
                                   description=__doc__)
    sub = worker.add_subparsers(dest="worker_command", metavar="STEP")
    worker.set_defaults(func=lambda a: (worker.print_help(sys.stderr), 2)[1])

    config_rev_help = ("the commit .easeml.yml and the test set are read from: the default "
                       "branch's accepted commit (default: --base)")
    p = sub.add_parser("inspect", help="read .easeml.yml and the test set id from the default branch")
    p.add_argument("--repo", required=True, help="the repository checkout")
    p.add_argument("--base", required=True, help="base commit (or ref) of the pull request: the old "
                   "model o, and where the protected-files diff starts")
    p.add_argument("--config-rev", help=config_rev_help)
    p.add_argument("--base-ref", help="the branch the pull request targets; with --default-branch, "
                   "a branch the configuration does not list is not evaluated")
    p.add_argument("--default-branch", help="the repository's default branch")
    p.add_argument("--head", help="head commit; lists the protected files it changes")
    p.add_argument("--out", required=True, help="where to write inspect.json")
    p.add_argument("--no-plan", dest="plan", action="store_false",
                   help="leave samples_needed to the master (no SciPy import on the worker)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("evaluate", help="run the models, score them on the decrypted test set")
    p.add_argument("--repo", required=True, help="the repository checkout")
    p.add_argument("--head", required=True, help="the commit under test")
    p.add_argument("--base", required=True, help="the base commit (the old model o)")
    p.add_argument("--config-rev", help=config_rev_help)
    p.add_argument("--key", required=True, help="the worker's private key (easeml_priv.asc)")
    p.add_argument("--passphrase-file", help="file holding the key's passphrase "
                   "(default: $EASEML_KEY_PASSPHRASE, else none)")
    p.add_argument("--runner", choices=("docker", "process"), default="docker",
                   help="docker (sandbox) or process (local subprocess, NOT a sandbox)")
    p.add_argument("--cache-dir", required=True, help="predictions cache per (commit, dataset id)")
    p.add_argument("--out", required=True, help="where to write result.json")
    p.add_argument("--plan", help="the master's sample-size plan for this configuration (JSON of "
                   "SampleSize.to_dict()); checked against .easeml.yml, saves planning (and "
                   "SciPy's import) here")
    p.set_defaults(func=_evaluate)
