"""``easeml init`` and ``easeml run-local``: the data scientist's side before a push."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "init",
        help="scaffold a model repository (.easeml.yml, Dockerfile, predict.py, README)",
        description="Write a model repository that satisfies the model contract. Never "
        "overwrites: without --existing the directory must not hold any of the files; with "
        "it, only missing files are added and existing ones stay byte-identical.",
    )
    p.add_argument("directory", nargs="?", default=".", help="where to scaffold (default: .)")
    p.add_argument("--existing", action="store_true", help="add only the files that are missing")
    p.set_defaults(func=_init)

    r = subparsers.add_parser(
        "run-local",
        help="run the model contract on a plaintext dev set, as the CI worker would",
        description="Run the repository's model on a plaintext dev set with the ProcessRunner "
        "(or inside its Docker image with --docker) and report what the CI service would see: "
        "the number of predictions, timings and, when labels are known, the accuracy. Labels "
        "come from --labels or from the label column of the features file (removed before the "
        "model sees the file). Never use the real test set for this.",
    )
    r.add_argument("--features", required=True, type=Path, help="dev set: .csv (header row), .jsonl or .npz")
    r.add_argument("--labels", type=Path, help="labels: .csv/.txt (one per line, optional header), .npy or .jsonl")
    r.add_argument("--dir", dest="directory", type=Path, default=Path("."), help="the model repository (default: .)")
    r.add_argument("--config", type=Path, help="the .easeml.yml to read (default: DIR/.easeml.yml)")
    r.add_argument("--docker", action="store_true", help="build and run the Docker image (needs a daemon)")
    r.add_argument("--timeout", type=float, help="wall-time limit in seconds for the model")
    r.add_argument("--show", type=int, default=5, metavar="N", help="print the first N predictions (default 5)")
    r.set_defaults(func=_run_local)


def _init(args: argparse.Namespace) -> int:
    from easeml_buildbot.scaffold.init import ScaffoldError, scaffold

    try:
        result = scaffold(args.directory, existing=args.existing)
    except (ScaffoldError, OSError) as exc:
        print(f"easeml init: {exc}", file=sys.stderr)
        return 1
    for name in result.created:
        print(f"  created  {name}")
    for name in result.kept:
        print(f"  kept     {name} (exists, unchanged)")
    where = result.directory
    print(
        f"\nScaffolded {where}. Next:\n"
        f"  cd {where}\n"
        "  easeml check-config                      # the condition and how many samples it needs\n"
        "  python3 train.py dev.csv                 # optional: train the template's linear model\n"
        "  easeml run-local --features dev.csv      # run predict.py on a dev set\n"
        "  see README.md ('The test set') to add the encrypted test set"
    )
    return 0


def _run_local(args: argparse.Namespace) -> int:
    from easeml_buildbot.scaffold.local import LocalRunError, run_local

    try:
        report = run_local(
            repo_dir=args.directory,
            features=args.features,
            labels=args.labels,
            config_path=args.config,
            docker=args.docker,
            timeout=args.timeout,
        )
    except LocalRunError as exc:
        print(f"easeml run-local: {exc}", file=sys.stderr)
        return 1
    print(report.render(show=args.show))
    return 0 if report.ok else 1
