"""``easeml worker inspect`` and ``easeml worker evaluate``: what the master's build steps
run on the worker. Both write their JSON to ``--out`` and exit 0 once it is written (the
master reads the status from the file); usage errors exit 2 with a message on stderr.
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


def _write_json(path: str, data: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=str)
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
                        base_ref=args.base_ref, default_branch=args.default_branch)
    _write_json(args.out, data)
    where = f"configuration {str(data['config_rev'])[:12]}" if data.get("config_rev") else "configuration"
    if data["ok"]:
        print(f"inspected {where}: dataset {data['dataset_id'][:12]}, "
              f"{data['samples_needed']} samples needed")
    elif data.get("not_evaluated"):
        print(f"inspected {where}: {data['not_evaluated']}")
    else:
        print(f"inspected {where}: {data['error']}")
    if data["protected_changed"]:
        print("the pull request changes protected files: " + ", ".join(data["protected_changed"]))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from easeml_buildbot.custody.keys import KeysError, resolve_passphrase
    from easeml_buildbot.runner.base import Limits
    from easeml_buildbot.runner.evaluate import evaluate_pr

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
    # SIGTERM (a stopped build) unwinds normally, so the running container and image are
    # removed by the runner's cleanup; SIGKILL is handled by DockerRunner.reap_stale.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        result = evaluate_pr(args.repo, head=args.head, base=args.base, config_rev=args.config_rev,
                             key=args.key,
                             passphrase=passphrase, runner=args.runner, cache_dir=args.cache_dir,
                             limits=limits, echo=lambda s: print(s, flush=True))
    except Exception as exc:  # noqa: BLE001 - a bug here must still leave a result for the master
        # evaluate_pr returns as soon as decide() has a verdict, so nothing was scored.
        # type and place only: an exception's message could quote data
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"worker error: {type(exc).__name__} at {where.filename}:{where.lineno}", file=sys.stderr)
        result = {"status": "infra_error", "cause": "worker", "scored": False, "verdict": None,
                  "message": f"the worker failed: {type(exc).__name__}", "dataset_id": None,
                  "samples_used": 0, "timings": {}}
    _write_json(args.out, result)
    line = f"status: {result['status']}"
    if result["status"] != "scored":
        line += f" ({result.get('cause')}): {result.get('message')}"
        line += "\nthe test-set use is not counted (nothing was scored)"
    print(line)
    return 0


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
    p.set_defaults(func=_evaluate)
