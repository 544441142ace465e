"""The ``easeml`` command line: one sub-command group per concept.

Each module named in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its sub-commands and sets ``func`` (called with the parsed namespace, returns an exit
code). Keeping the table here, and the commands beside the code they drive, lets every
part of the project own its CLI without touching the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from easeml_buildbot import __version__

COMMAND_MODULES: tuple[str, ...] = (
    "easeml_buildbot.estimator.cli",
    "easeml_buildbot.custody.cli",
    "easeml_buildbot.runner.cli",
    "easeml_buildbot.scaffold.cli",
    "easeml_buildbot.scaffold.migrate",
    "easeml_buildbot.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="easeml",
        description="ease.ml/ci for Buildbot: statistically sound CI for ML models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
