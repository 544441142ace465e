"""``easeml demo``: run the whole service end to end on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole service end to end here (no GitHub, no outside SMTP)",
        description="Make throwaway keys, a model repository with a real encrypted test set, "
        "start a local SMTP server, a Buildbot master (SQLite, local git polling) and a worker, "
        "commit a better, a worse and a broken model, and print what the service decided for each.",
    )
    p.add_argument("--dir", dest="directory", type=Path, default=Path("demo-out"),
                   help="working directory, replaced on every run (default: ./demo-out)")
    p.add_argument("--runner", choices=("auto", "docker", "process"), default="auto",
                   help="auto: Docker when a daemon answers and the base image exists, else a local process")
    p.add_argument("--port", type=int, help="port of the Buildbot UI (default 8010 when free; 0: any free port)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=None,
                      help="keep the UI up until Ctrl-C (the default on a terminal)")
    wait.add_argument("--no-wait", dest="wait", action="store_false", help="stop as soon as it is done")
    p.add_argument("--build-timeout", type=float, default=300.0, help="seconds to wait for each commit's build")
    p.add_argument("--summary-json", type=Path, help="also write the results as JSON here")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    try:
        import aiosmtpd  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        print(f"easeml demo: needs {exc.name} (pip install 'easeml-buildbot[demo]', "
              "or run bash scripts/demo.sh)", file=sys.stderr)
        return 1
    from easeml_buildbot.demo.run import DemoError, DemoOptions, run_demo

    options = DemoOptions(directory=args.directory, runner=args.runner, port=args.port, wait=args.wait,
                          build_timeout=args.build_timeout, summary_json=args.summary_json)
    try:
        result = run_demo(options)
    except DemoError as exc:
        print(f"easeml demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("easeml demo: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    wrong = [c for c in result.commits if (c.verdict if c.status == "evaluated" else c.status) != c.expected]
    if wrong:
        print("easeml demo: unexpected outcome for " + ", ".join(c.sha[:10] for c in wrong), file=sys.stderr)
    if result.ledger_agrees is False:
        print("easeml demo: the ledger disagrees with the announced results", file=sys.stderr)
    return 1 if wrong or result.ledger_agrees is False else 0
