"""``easeml init`` and ``easeml run-local``: the data scientist's side before a push."""

from __future__ import annotations

import argparse
import sys
import shutil
import subprocess
from pathlib import Path

BASE_IMAGE = "easeml/python:bookworm"


def base_image_dockerfile() -> str:
    """The shipped Dockerfile of the scaffold's base image."""
    from importlib.resources import files

    return files("easeml_buildbot.scaffold").joinpath("base-image", "Dockerfile").read_text()


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

    b = subparsers.add_parser(
        "base-image",
        help="build easeml/python:bookworm, the scaffold's base image, with plain docker build",
        description="Build the base image of a scaffolded Dockerfile on your machine from a small "
        "Dockerfile shipped with easeml (FROM debian:bookworm-slim + Debian's python3 and "
        "python3-numpy, the packages the service's workers have), so `easeml run-local --docker` "
        "works without the service's debootstrap script. Needs Docker Hub and Debian's mirror once.",
    )
    b.add_argument("--tag", default=BASE_IMAGE, help=f"image tag (default: {BASE_IMAGE})")
    b.add_argument("--print", dest="print_only", action="store_true",
                   help="print the Dockerfile instead (e.g. for `docker build -t TAG -`)")
    b.set_defaults(func=_base_image)


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


def _base_image(args: argparse.Namespace) -> int:
    text = base_image_dockerfile()
    if args.print_only:
        print(text, end="")
        return 0
    docker = shutil.which("docker")
    if not docker:
        print("easeml base-image: no docker command on PATH; install Docker, or build the image "
              "from `easeml base-image --print` elsewhere", file=sys.stderr)
        return 1
    print(f"docker build -t {args.tag} -   (the Dockerfile of `easeml base-image --print`)")
    try:
        r = subprocess.run([docker, "build", "-t", args.tag, "-"], input=text, text=True)
    except OSError as exc:
        print(f"easeml base-image: {docker}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if r.returncode != 0:
        print(f"easeml base-image: docker build failed (exit {r.returncode}); it pulls "
              "debian:bookworm-slim from Docker Hub and installs python3 and python3-numpy from "
              "Debian's mirror", file=sys.stderr)
        return 1
    print(f"built {args.tag}: `easeml run-local --docker` can use it now")
    return 0
