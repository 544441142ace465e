"""The ``easeml`` command line: one sub-command group per concept.

Each module named in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its sub-commands and sets ``func`` (called with the parsed namespace, returns an exit
code). Keeping the table here, and the commands beside the code they drive, lets every
part of the project own its CLI without touching the others.

``COMMANDS`` names the module of each top-level command, so ``easeml worker ...`` (what a
build runs on the worker, several times per build) imports only the worker's module, not
SQLAlchemy, SciPy or the other command groups; ``easeml --help`` still lists them all.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from easeml_buildbot import __version__

if TYPE_CHECKING:
    import argparse

COMMAND_MODULES: tuple[str, ...] = (
    "easeml_buildbot.estimator.cli",
    "easeml_buildbot.custody.cli",
    "easeml_buildbot.runner.cli",
    "easeml_buildbot.scaffold.cli",
    "easeml_buildbot.scaffold.migrate",
    "easeml_buildbot.demo.cli",
)

#: top-level command -> the module in ``COMMAND_MODULES`` that registers it
COMMANDS: dict[str, str] = {
    "samples": "easeml_buildbot.estimator.cli",
    "check-config": "easeml_buildbot.estimator.cli",
    "evaluate": "easeml_buildbot.estimator.cli",
    "keys": "easeml_buildbot.custody.cli",
    "dataset": "easeml_buildbot.custody.cli",
    "ledger": "easeml_buildbot.custody.cli",
    "worker": "easeml_buildbot.runner.cli",
    "init": "easeml_buildbot.scaffold.cli",
    "run-local": "easeml_buildbot.scaffold.cli",
    "base-image": "easeml_buildbot.scaffold.cli",
    "migrate": "easeml_buildbot.scaffold.migrate",
    "demo": "easeml_buildbot.demo.cli",
}


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The ``easeml`` parser with the commands of ``modules`` (default: all)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="easeml",
        description="ease.ml/ci for Buildbot: statistically sound CI for ML models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # a known command first: only its module (a worker command starts in a fraction of the time)
    if args_list[:1] == ["worker"] and os.environ.get("EASEML_WARM_SOCKET"):
        # forked from the worker's warm server, which has imported the command's code
        # already (runner/warm.py); None: no server answered, the command runs here
        from easeml_buildbot.runner.warm_client import delegate

        code = delegate(args_list)
        if code is not None:
            return code
    module = COMMANDS.get(args_list[0]) if args_list else None
    parser = build_parser((module,) if module else COMMAND_MODULES)
    argv = args_list
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
