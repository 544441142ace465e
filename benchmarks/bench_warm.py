"""Warm worker commands (runner/warm.py) beside cold ones: the two ``easeml`` commands a build
runs on its worker, ``worker inspect --no-plan`` and ``worker evaluate --plan``, as processes
started the way the build starts them (a fresh ``easeml`` process each; warm: with
``EASEML_WARM_SOCKET`` naming a running server), on a trivial digits model and the process
runner. Wall time per command, median and min over the repeats. The head's and the base's
predictions are cached by the first run (as for a re-run of a commit), so no model runs:
what is left is the command's own cost (start-up, decryption, scoring, writing the result).

    .venv/bin/python benchmarks/bench_warm.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from easeml_buildbot.config import parse_config  # noqa: E402
from support.gpgkeys import make_service_keys  # noqa: E402
from support.models import make_model_repo  # noqa: E402

EASEML = [sys.executable, "-m", "easeml_buildbot"]


def _server(sock: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "easeml_buildbot.runner.warm", str(sock)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the warm server did not start")
        time.sleep(0.05)
    return proc


def _timed(args: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args[3:5])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="easeml-bench-warm-"))
    try:
        keys = make_service_keys(work / "keys")
        repo = make_model_repo(work / "repo", public_key=keys.public, quality=0.8,
                               condition="n > 0.5 +/- 0.2", reliability=0.9, adaptivity="full")
        head = repo.commit_model(quality=0.9, branch="pr").sha
        base = repo.base.sha
        text = subprocess.run(["git", "-C", str(repo.path), "show", f"{base}:.easeml.yml"],
                              capture_output=True, text=True, check=True).stdout
        plan = json.dumps(parse_config(text).required_samples().to_dict())
        out = work / "out"
        out.mkdir()
        inspect = [*EASEML, "worker", "inspect", "--repo", ".", "--head", head, "--base", base,
                   "--out", str(out / "inspect.json"), "--no-plan"]
        evaluate = [*EASEML, "worker", "evaluate", "--repo", ".", "--head", head, "--base", base,
                    "--key", str(keys.private), "--runner", "process", "--cache-dir", str(work / "cache"),
                    "--out", str(out / "result.json"), "--plan", plan]
        sock = Path(tempfile.mkdtemp(prefix="easeml-warm-")) / "sock"
        server = _server(sock)
        cold_env = {k: v for k, v in os.environ.items() if k != "EASEML_WARM_SOCKET"}
        warm_env = {**cold_env, "EASEML_WARM_SOCKET": str(sock)}
        res: dict[str, dict[str, list[float]]] = {m: {"inspect": [], "evaluate": []}
                                                  for m in ("cold", "warm")}
        try:
            _timed(evaluate, cold_env, repo.path)  # caches the base model's predictions: both columns alike
            for _ in range(args.repeats):
                for mode, env in (("cold", cold_env), ("warm", warm_env)):
                    res[mode]["inspect"].append(_timed(inspect, env, repo.path))
                    res[mode]["evaluate"].append(_timed(evaluate, env, repo.path))
                    assert json.loads((out / "result.json").read_text())["status"] == "scored"
        finally:
            server.terminate()
            server.wait(timeout=30)
            shutil.rmtree(sock.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(label: str, fn) -> None:
        cells = [fn(res[m]) for m in ("cold", "warm")]
        print(f"  {label:<44}{cells[0]:>10.3f}{cells[1]:>10.3f}")

    print(f"\neaseml worker commands as a build runs them, trivial model, process runner, {args.repeats} repeats")
    print(f"  {'seconds':<44}{'cold':>10}{'warm':>10}")
    row("worker inspect, median", lambda r: statistics.median(r["inspect"]))
    row("worker inspect, min", lambda r: min(r["inspect"]))
    row("worker evaluate, median", lambda r: statistics.median(r["evaluate"]))
    row("worker evaluate, min", lambda r: min(r["evaluate"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
