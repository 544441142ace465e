"""Master benchmarks with real processes (buildbot master + workers, GitHub stand-in).

1. Latency: webhook received -> check run completed, minus the model's own run time
   (the runner's ``run_*`` timings from the ledger's result), trivial numpy model,
   ProcessRunner, one worker; median over N runs (default 20).
2. Throughput: 50 pull_request events posted at once, 2 workers: time until every check
   run is completed; once with PyGithub's default pacing (>= 1 s between API writes, as
   GitHub advises against secondary rate limits) and once unpaced (what the master and
   workers themselves sustain).

    .venv/bin/python benchmarks/bench_master.py [--runs 20] [--events 50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.github_sim import fixtures_available  # noqa: E402
from support.github_sim_world import start_world  # noqa: E402
from support.gpgkeys import make_service_keys  # noqa: E402

COND = dict(quality=0.9, condition="n > 0.5 +/- 0.2", reliability=0.9, adaptivity="full")


def _completed_at(world, name: str, index: int) -> float | None:
    done = [r.t for r in world.sim.requests
            if r.path.startswith(f"/repos/acme/{name}/") and r.operation == "checks/update"
            and (r.body or {}).get("status") == "completed"]
    return done[index] if len(done) > index else None


def latency(base: Path, keys, runs: int) -> dict[str, float]:
    from easeml_buildbot.custody.ledger import Ledger

    world, stop = start_world(base / "lat", keys, workers=1)
    led = Ledger(world.ledger_url)  # read after each run, outside the timed part
    try:
        repo = world.repo("lat", steps=runs + 2, **COND)
        # warm-up: the first build also runs (and caches) the base model
        warm = repo.commit_model(quality=0.9, branch="pr-0", flip_seed=100)
        world.send("pull_request", world.pr_payload("lat", repo, 100, warm.sha))
        world.wait_completed("lat", 1)
        totals, overheads = [], []
        for i in range(runs):
            head = repo.commit_model(quality=0.9, branch=f"pr-{i + 1}", flip_seed=200 + i)
            payload = world.pr_payload("lat", repo, i + 1, head.sha)
            t0 = time.monotonic()
            code, _ = world.send("pull_request", payload)
            assert code == 200, code
            world.wait_completed("lat", i + 2, timeout=120)
            t1 = _completed_at(world, "lat", i + 1)
            mine = [u for u in led.uses("acme/lat", repo.dataset_id) if u.commit == head.sha]
            if not mine:
                raise SystemExit(f"run {i}: no ledger use for {head.sha[:12]}; check runs "
                                 f"{world.statuses('lat')[-3:]}; {world.calls('lat')[-1][1].get('output')}")
            use = mine[0]
            model = sum(v for k, v in ((use.result or {}).get("timings") or {}).items()
                        if k.startswith("run_"))
            totals.append(t1 - t0)
            overheads.append(t1 - t0 - model)
        assert world.sim.errors() == [], world.sim.errors()[:3]
        return {"runs": runs, "median_total_s": statistics.median(totals),
                "median_overhead_s": statistics.median(overheads),
                "p90_overhead_s": sorted(overheads)[int(0.9 * (runs - 1))],
                "min_overhead_s": min(overheads)}
    finally:
        led.close()
        stop()


UNPACED = {"github": {"seconds_between_requests": 0, "seconds_between_writes": 0}}


def drain(base: Path, keys, events: int, paced: bool = True) -> dict[str, float]:
    world, stop = start_world(base / ("drain" if paced else "drain-unpaced"), keys, workers=2,
                              extra_settings=None if paced else UNPACED)
    try:
        repo = world.repo("drain", steps=events + 2, **COND)
        payloads = []
        for i in range(events):
            head = repo.commit_model(quality=0.9, branch=f"pr-{i + 1}", flip_seed=300 + i)
            payloads.append(world.pr_payload("drain", repo, i + 1, head.sha))
        t0 = time.monotonic()
        for p in payloads:
            assert world.send("pull_request", p)[0] == 200
        t_posted = time.monotonic() - t0
        world.wait_completed("drain", events, timeout=1800)
        t1 = _completed_at(world, "drain", events - 1)
        conclusions = world.sim.conclusions("acme/drain")
        assert len(conclusions) == events and world.sim.errors() == []
        return {"events": events, "workers": 2, "post_all_s": t_posted, "drain_s": t1 - t0,
                "per_event_s": (t1 - t0) / events, "conclusions": {c: conclusions.count(c) for c in set(conclusions)}}
    finally:
        stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--events", type=int, default=50)
    args = ap.parse_args()
    reason = fixtures_available()
    if reason:
        print(f"bench_master: skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-master-") as tmp:
        base = Path(tmp)
        keys = make_service_keys(base / "keys")
        lat = latency(base, keys, args.runs)
        print(f"webhook -> check run completed (trivial model, process runner, 1 worker), {lat['runs']} runs:")
        print(f"  median total {lat['median_total_s']:.2f} s; minus model run time: median "
              f"{lat['median_overhead_s']:.2f} s, p90 {lat['p90_overhead_s']:.2f} s, min {lat['min_overhead_s']:.2f} s")
        for paced in (True, False):
            dr = drain(base, keys, args.events, paced=paced)
            print(f"{dr['events']} pull_request events on {dr['workers']} workers, "
                  f"{'GitHub pacing (1 s between writes)' if paced else 'unpaced'}: all posted in "
                  f"{dr['post_all_s']:.2f} s, drained in {dr['drain_s']:.1f} s ({dr['per_event_s']:.2f} s/event); "
                  f"conclusions {dr['conclusions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
