"""Egress benchmark: the realistic scikit-learn repository (tests/fixtures/sklearn_repo,
``RUN pip install -r requirements.txt`` through the egress proxy) evaluated as a worker
does it, beside the same image built and run by hand with the Docker CLI (the floor).

    sudo .venv/bin/python benchmarks/bench_egress.py        (root: squid + iptables)

First PR ("cold"): nothing cached, the image is built from scratch (apt + pip + model).
Second PR ("warm"): only model/params.npz changed; with a layer cache only the layers
after ``COPY model/`` are rebuilt. The floor is ``docker build`` (``--no-cache`` for the
first PR, the daemon's cache for the second) plus ``docker run`` on the features file.
"model run" is the floor's ``docker run`` of the warm image: the model's own cost. The
floor gets the operator's CPU and memory limits (``EASEML_CPUS``, ``EASEML_MEMORY``) like the
service's builds and runs, so the comparison is of the service's overhead, not of limits.
Targets (issue 12): cold within 1.2x of the floor; warm within 3 s of the model run.

Each invocation adds a ``LABEL`` with a fresh id after ``FROM`` (to both the service's
and the floor's Dockerfile, different ids), so neither reuses the other's layers nor a
previous invocation's: "cold" is cold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from easeml_buildbot.custody.keys import create_keypair  # noqa: E402
from easeml_buildbot.runner.base import Limits  # noqa: E402
from easeml_buildbot.runner.egress import proxy_buildargs  # noqa: E402
from easeml_buildbot.runner.evaluate import evaluate_pr, export_commit  # noqa: E402
from support import squid  # noqa: E402
from support.models import _git  # noqa: E402
from support.sklearn_repo import make_sklearn_repo  # noqa: E402

DOMAINS = ("pypi.org", "files.pythonhosted.org", "deb.debian.org")


def _bust(repo, sha: str, branch: str, run_id: str) -> str:
    """The commit ``sha`` plus a LABEL after FROM (a new commit on ``branch``)."""
    _git(repo.path, "checkout", "-q", "-B", branch, sha)
    df = repo.path / "Dockerfile"
    lines = df.read_text().splitlines(keepends=True)
    i = next(k for k, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    lines.insert(i + 1, f"LABEL easeml.bench.run={run_id}\n")
    df.write_text("".join(lines))
    _git(repo.path, "commit", "-q", "-am", f"bench run {run_id}")
    return _git(repo.path, "rev-parse", "HEAD")


def service(repo, head: str, base: str, key: Path, cache: Path, limits: Limits) -> dict[str, float]:
    t0 = time.perf_counter()
    r = evaluate_pr(repo.path, head=head, base=base, key=key, passphrase=None, runner="docker",
                    cache_dir=cache, limits=limits)
    wall = time.perf_counter() - t0
    if r["status"] != "scored":
        raise SystemExit(f"service: {r['status']} {r.get('cause')}: {r.get('message')}")
    t = r["timings"]
    return {"total": wall, "build": t.get("build_head", 0.0), "run": t.get("run_head", 0.0),
            "other": wall - t.get("build_head", 0.0) - t.get("run_head", 0.0),
            "detail": {k: v for k, v in t.items() if k not in ("build_head", "run_head", "total")}}


def floor(repo, sha: str, work: Path, features: Path, route, limits: Limits, *,
          cold: bool) -> dict[str, float]:
    ctx = export_commit(repo.path, sha, work / f"ctx-{sha[:12]}")
    tag = f"easeml-bench-floor:{sha[:12]}"
    args = ["docker", "build", "-q", "--network", route.network_name, "-t", tag, str(ctx)]
    for k, v in proxy_buildargs(route.proxy_url).items():
        args[2:2] = ["--build-arg", f"{k}={v}"]
    # the operator's CPU and memory limits, as the service applies them to builds and runs
    cpus = min(limits.cpus, os.cpu_count() or 1)
    args[2:2] = ["--cpu-period", "100000", "--cpu-quota", str(int(cpus * 100000)),
                 "--memory", str(limits.memory), "--memory-swap", str(limits.memory)]
    if cold:
        args.insert(2, "--no-cache")
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    t_build = time.perf_counter() - t0
    out = work / f"out-{sha[:12]}"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    t0 = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--read-only", "--user", "65534:65534",
                    "--cpus", str(cpus), "--memory", str(limits.memory),
                    "--tmpfs", "/tmp", "-e", "EASEML_FEATURES=/easeml/input/features.csv",
                    "-e", "EASEML_OUTPUT=/easeml/output", "-e", "HOME=/tmp",
                    "-v", f"{features}:/easeml/input/features.csv:ro", "-v", f"{out}:/easeml/output", tag],
                   check=True, capture_output=True)
    t_run = time.perf_counter() - t0
    shutil.rmtree(ctx)
    if not (out / "predictions.csv").exists():
        raise SystemExit("floor: the model wrote no predictions")
    return {"total": t_build + t_run, "build": t_build, "run": t_run, "other": 0.0, "tag": tag}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    reason = squid.unavailable()
    if reason:
        print(f"# skipped: {reason}")
        return 0
    limits = Limits.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-egress-") as tmp, \
            squid.SquidEgress(domains=DOMAINS) as route:
        t = Path(tmp)
        pub, priv = create_keypair(t / "keys", "bench", "bench@example.com", None)
        repo = make_sklearn_repo(t / "repo", public_key=pub, ca_file=squid.HOST_CA_BUNDLE)
        pr1 = repo.commit_weights("pr-1", rows=2000)
        pr2 = repo.commit_weights("pr-2", rows=2000, C=0.01)
        from easeml_buildbot.config import parse_config

        need = parse_config((repo.path / ".easeml.yml").read_text(),
                            source=".easeml.yml").required_samples().rows
        x = repo.x_test[:need]
        features = t / "features.csv"  # what the worker hands the model: features only
        features.write_text(",".join(f"f{i}" for i in range(x.shape[1])) + "\n"
                            + "".join(",".join(f"{v:g}" for v in row) + "\n" for row in x))
        features.chmod(0o644)

        for k, v in route.env.items():
            os.environ[k] = v
        base = repo.base.sha
        runs: dict[str, list[dict]] = {k: [] for k in ("floor cold", "service cold", "floor warm",
                                                       "service warm")}
        for i in range(args.repeats):
            a, b = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
            s1, s2 = _bust(repo, pr1.sha, f"svc-1-{i}", a), _bust(repo, pr2.sha, f"svc-2-{i}", a)
            f1, f2 = _bust(repo, pr1.sha, f"floor-1-{i}", b), _bust(repo, pr2.sha, f"floor-2-{i}", b)

            def svc() -> None:
                runs["service cold"].append(service(repo, s1, base, priv, t / f"cache-1-{i}", limits))
                runs["service warm"].append(service(repo, s2, base, priv, t / f"cache-2-{i}", limits))

            def flr() -> None:
                runs["floor cold"].append(floor(repo, f1, t, features, route, limits, cold=True))
                runs["floor warm"].append(floor(repo, f2, t, features, route, limits, cold=False))
                for r in (runs["floor cold"][-1], runs["floor warm"][-1]):
                    subprocess.run(["docker", "rmi", "-f", r["tag"]], capture_output=True)
            # alternate which goes first: the machine's load drifts
            for step in ((svc, flr) if i % 2 == 0 else (flr, svc)):
                step()
        med = {name: {k: statistics.median(r[k] for r in rs) for k in ("build", "run", "other", "total")}
               for name, rs in runs.items()}
        model_run = med["floor warm"]["run"]
        print(f"# sklearn repository ({need} test rows); seconds, median of {args.repeats}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{'':14} {'build':>8} {'run':>8} {'other':>8} {'total':>8}")
        for name, r in med.items():
            print(f"{name:14} {r['build']:8.2f} {r['run']:8.2f} {r['other']:8.2f} {r['total']:8.2f}")
        detail = runs["service warm"][-1]["detail"]
        print("# service 'other' = wall time outside build and run: the runner's start, image "
              "clean-up and, of those timed (last warm run), "
              + ", ".join(f"{k} {v:.2f}" for k, v in detail.items()))
        print(f"cold ratio service/floor: {med['service cold']['total'] / med['floor cold']['total']:.2f}"
              "  (target <= 1.2)")
        print(f"warm service - model run: {med['service warm']['total'] - model_run:.2f} s  "
              f"(target <= 3; model run = the floor's docker run, {model_run:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
