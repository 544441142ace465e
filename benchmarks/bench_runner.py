"""Runner benchmark: one pull-request evaluation on the digits test set, broken into
checkout / build / run / parse / decrypt / score, DockerRunner beside ProcessRunner.

    .venv/bin/python benchmarks/bench_runner.py [--repeats 3]

The repository is made by tests/support/models.py (logistic regression trained here,
numpy-only predict.py, test set encrypted to a fresh key). The condition
``n - o > 0.02 +/- 0.1`` at reliability 0.99, adaptivity none, 4 steps needs 1199 of the
1297 test rows and both models. "cold": nothing cached, both the head and the base model
are built and run; "warm": the base model's predictions come from the worker's cache (the
usual case for the second and later pull requests on a base). Medians over the repeats.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from easeml_buildbot.custody.keys import create_keypair  # noqa: E402
from easeml_buildbot.runner.base import Limits  # noqa: E402
from easeml_buildbot.runner.evaluate import evaluate_pr  # noqa: E402
from support.models import make_model_repo  # noqa: E402

PHASES = ("checkout", "build", "run", "parse", "decrypt", "score")


def phases(timings: dict[str, float]) -> dict[str, float]:
    out = {p: 0.0 for p in PHASES}
    for key, value in timings.items():
        name = key.split("_")[0]
        if name in out:
            out[name] += value
    out["total"] = timings["total"]
    return out


def one(repo, head: str, private_key: Path, runner: str, cache: Path, limits: Limits) -> dict[str, float]:
    """One evaluation as ``easeml worker evaluate`` does it; returns its phase timings."""
    r = evaluate_pr(repo.path, head=head, base=repo.base.sha, key=private_key, passphrase=None,
                    runner=runner, cache_dir=cache, limits=limits)
    if r["status"] != "scored":
        raise SystemExit(f"{runner}: {r['status']} {r.get('cause')}: {r.get('message')}")
    return {**phases(r["timings"]), "rows": r["samples_used"]}


SLOW_DOCKERFILE = """\
FROM {base}
WORKDIR /model
# the slow dependency step (a pip install or a compile): ~10 s, no network
RUN echo deps-{salt} > /deps && sleep 10
COPY model.py /model/model.py
CMD ["python3", "/model/model.py"]
"""


def bench_build_cache(repeats: int = 1) -> None:
    """Cold vs warm build of a model with a slow dependency step: the DockerRunner (with its
    image cache) beside the same image built by hand with ``docker build``. "cold": no layer
    cached; "next PR": the model code changed, the dependency layer is reused; "same model":
    the same build context again (another PR or a re-run) finds the image itself."""
    import secrets
    import subprocess

    import docker

    from easeml_buildbot.runner.base import BoundedLog
    from easeml_buildbot.runner.docker_runner import DockerRunner
    from easeml_buildbot.runner.image_cache import ImageCache
    from support.models import DEFAULT_BASE_IMAGE

    client = docker.from_env(timeout=300)
    limits = Limits.from_env()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        t = Path(tmp)
        for i in range(repeats):
            salt = secrets.token_hex(6)  # a fresh prefix: nothing cached from earlier runs
            dirs = []
            for n, body in enumerate(("print(1)\n", "print(2)\n")):
                d = t / f"{i}-pr{n}"
                d.mkdir()
                (d / "Dockerfile").write_text(SLOW_DOCKERFILE.format(base=DEFAULT_BASE_IMAGE, salt=salt))
                (d / "model.py").write_text(body)
                dirs.append(d)
            cache = ImageCache(client, t / f"cache-{i}", budget=1 << 40)
            runner = DockerRunner(client, image_cache=cache, keep_images=True)
            refs = []
            for label, d in (("cold", dirs[0]), ("next PR", dirs[1]), ("same model", dirs[1])):
                t0 = time.perf_counter()
                ref, _ = runner.build(d, tag="bench", model={}, limits=limits, log_out=BoundedLog(1 << 16))
                rows.setdefault(f"runner {label}", []).append(time.perf_counter() - t0)
                runner._remove_images([ref])
                refs.append(ref)
            cli_tags = []
            salt2 = secrets.token_hex(6)
            for label, d in (("cold", dirs[0]), ("next PR", dirs[1]), ("same model", dirs[1])):
                (d / "Dockerfile").write_text(SLOW_DOCKERFILE.format(base=DEFAULT_BASE_IMAGE, salt=salt2))
                tag_ = f"easeml-bench/cli:{salt2}-{len(cli_tags)}"
                t0 = time.perf_counter()
                subprocess.run(["docker", "build", "-q", "--network=none", "-t", tag_, str(d)],
                               check=True, capture_output=True)
                rows.setdefault(f"docker build {label}", []).append(time.perf_counter() - t0)
                cli_tags.append(tag_)
            for tag_ in cli_tags:
                subprocess.run(["docker", "rmi", tag_], capture_output=True)
            cache.budget = 0
            cache.prune()
    print(f"{'build':26} {'seconds':>8}")
    for label, values in rows.items():
        print(f"{label:26} {statistics.median(values):8.2f}")
    print("# the dependency step sleeps 10 s; median of", repeats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--build-cache", action="store_true",
                    help="only the cold/warm image build with a slow dependency step")
    args = ap.parse_args()
    if args.build_cache:
        bench_build_cache(args.repeats)
        return 0
    runners = ["process"]
    try:
        import docker

        docker.from_env().ping()
        runners.insert(0, "docker")
    except Exception as exc:  # noqa: BLE001
        print(f"# no Docker daemon ({exc}); ProcessRunner only")
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        t = Path(tmp)
        # "cold" means no image cached: the worker's image cache keeps nothing here (budget 0,
        # each model image is pruned after its run); --build-cache measures the cache itself
        import os

        os.environ["EASEML_IMAGE_CACHE_BYTES"] = "0"
        os.environ["EASEML_IMAGE_CACHE_DIR"] = str(t / "image-cache")
        keys = create_keypair(t / "keys", "bench", "bench@example.com", None)
        t0 = time.perf_counter()
        repo = make_model_repo(t / "repo", public_key=keys[0], quality=0.85,
                               condition="n - o > 0.02 +/- 0.1", reliability=0.99,
                               adaptivity="none", steps=4)
        head = repo.commit_model(quality=None, branch="pr")
        print(f"# repo made in {time.perf_counter() - t0:.2f}s; test set {repo.n_test} rows; "
              f"head accuracy {head.accuracy:.3f}, base {repo.base.accuracy:.3f}")
        limits = Limits.from_env()
        print(f"{'runner':8} {'cache':5} {'rows':>5} " + " ".join(f"{p:>8}" for p in (*PHASES, "total")))
        for runner in runners:
            for mode in ("cold", "warm"):
                runs = []
                for i in range(args.repeats):
                    cache = t / f"cache-{runner}-{mode}-{i}"
                    if mode == "warm":  # the base model's predictions are already cached
                        one(repo, head.sha, keys[1], runner, cache, limits)
                        shutil.rmtree(cache / head.sha)
                    runs.append(one(repo, head.sha, keys[1], runner, cache, limits))
                med = {k: statistics.median(r[k] for r in runs) for k in (*PHASES, "total")}
                print(f"{runner:8} {mode:5} {runs[0]['rows']:>5} "
                      + " ".join(f"{med[p]:8.3f}" for p in (*PHASES, "total")))
    print("# seconds, median of", args.repeats, "runs; build/run/parse summed over the models run")
    if "docker" in runners:
        run_limits_cost(max(5, args.repeats * 3))
    return 0


def run_limits_cost(repeats: int) -> None:
    """What the run-time limits add per model run: the output tmpfs (volume + keeper
    container, read back with get_archive) and resolving a named image USER (a created,
    never started probe container), timed alone."""
    from easeml_buildbot.runner.docker_runner import DockerRunner
    from easeml_buildbot.runner.workspace import Workspace

    runner = DockerRunner()
    limits = Limits(output=16 << 20)
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        feats = Path(tmp) / "f.csv"
        feats.write_text("x\n1\n")
        ws = Workspace.create(feats, prefix="bench-")
        try:
            tmpfs, probe = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                volume, keeper = runner._output_volume(ws, "65534:65534", limits, {})
                runner._copy_output(keeper, ws, limits.output)
                runner._drop(keeper)
                runner._drop(volume)
                tmpfs.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                runner._image_file("easeml/busybox:latest", ("/etc/passwd", "/etc/group"))
                probe.append(time.perf_counter() - t0)
        finally:
            ws.remove()
    print(f"# per model run: output tmpfs + keeper {statistics.median(tmpfs):.3f}s, "
          f"named-USER probe {statistics.median(probe):.3f}s (only for images with a named USER); "
          f"median of {repeats}")


if __name__ == "__main__":
    sys.exit(main())
