"""Master overhead benchmarks with real processes (buildbot master + workers, GitHub stand-in).

Each measurement runs twice in the same invocation, side by side: once on the code before the
overhead work of issue 14 (``BASE``, extracted from git into a temporary tree that the master
and worker processes import through ``PYTHONPATH``) and once on this tree.

1. Latency: webhook received -> check run completed, minus the model's own run time (the
   runner's ``run_*`` timings from the ledger's result), trivial numpy model, ProcessRunner,
   one worker, GitHub's pacing (PyGithub's defaults: >= 1 s between API writes, as GitHub
   advises against secondary rate limits); median over N runs. Also: check-run writes per
   build, steps per build, and where the time went (median per step, from the master's own
   step start/finish events, and per ``easeml`` worker command start-up).
2. Buildbot's own overhead, on the same master and worker: a one-step build (``true``)
   forced through the REST API, until the build's ``finished`` event.
3. Throughput: N pull_request events posted at once, 2 workers, unpaced (what the master and
   workers themselves sustain): time until every check run is completed, builds per second
   per worker. ``--paced`` adds the same with GitHub's pacing.

    .venv/bin/python benchmarks/bench_master.py [--runs 10] [--events 30] [--base REV] [--paced]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.github_sim import fixtures_available  # noqa: E402
from support.github_sim_world import start_world  # noqa: E402
from support.gpgkeys import make_service_keys  # noqa: E402

BASE = "9014b95"  # main before the overhead work of issue 14 (the 'before' column, run here)
COND = dict(quality=0.9, condition="n > 0.5 +/- 0.2", reliability=0.9, adaptivity="full")
UNPACED = {"github": {"seconds_between_requests": 0, "seconds_between_writes": 0}}

# appended to master.cfg: a clock of every step and build (the master's own mq events, wall
# time, to a JSON-lines file) and Buildbot's own one-step build, forced on the same workers
CLOCK_CFG = '''
import json as _bench_json, time as _bench_time
from twisted.internet import defer as _bench_defer
from buildbot.util import service as _bench_service
from buildbot.plugins import schedulers as _bench_sch, steps as _bench_steps, util as _bench_util


class _BenchClock(_bench_service.BuildbotService):
    name = "bench-clock"

    def reconfigService(self, path):
        self.path = path

    @_bench_defer.inlineCallbacks
    def startService(self):
        yield super().startService()
        self._fh = open(self.path, "a", buffering=1)
        for key in (("steps", None, None), ("builds", None, None)):
            yield self.master.mq.startConsuming(self._on, key)

    def _on(self, key, msg):
        self._fh.write(_bench_json.dumps({"t": _bench_time.time(), "key": [str(k) for k in key],
                                          "buildid": msg.get("buildid"), "name": msg.get("name"),
                                          "number": msg.get("number"), "builderid": msg.get("builderid"),
                                          "results": msg.get("results")}) + "\\n")


c["services"].append(_BenchClock(path=%(clock)r))
_bench_f = _bench_util.BuildFactory()
_bench_f.addStep(_bench_steps.ShellCommand(name="true", command=["true"], logEnviron=False))
c["builders"].append(_bench_util.BuilderConfig(name="plain", workernames=[w.name for w in c["workers"]],
                                               factory=_bench_f))
c["schedulers"].append(_bench_sch.ForceScheduler(name="plain-force", builderNames=["plain"]))
'''


#: the simulator stamps requests with time.monotonic(); the master's clock writes time.time()
_WALL = time.time() - time.monotonic()


def _completed_times(world, name: str) -> list[float]:
    return [r.t + _WALL for r in world.sim.requests
            if r.path.startswith(f"/repos/acme/{name}/") and r.operation in ("checks/update", "checks/create")
            and (r.body or {}).get("status") == "completed"]


def _writes(world, name: str) -> list:
    return [r for r in world.sim.requests if r.path.startswith(f"/repos/acme/{name}/")
            and r.operation in ("checks/update", "checks/create")]


def _clock(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _tree(rev: str, dest: Path) -> Path:
    """The source tree at ``rev`` (git archive), for the 'before' column."""
    dest.mkdir(parents=True)
    arch = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def _world(base: Path, keys, tree: Path | None, workers: int, extra_settings=None):
    clock = base / "clock.jsonl"
    kw = {"master_cfg_extra": CLOCK_CFG % {"clock": str(clock)}}
    if tree is not None:
        kw.update(root=tree, env={"PYTHONPATH": str(tree)})
    world, stop = start_world(base, keys, workers=workers, extra_settings=extra_settings, **kw)
    return world, stop, clock


def _step_profile(events: list[dict], buildids: set[int]) -> dict[str, float]:
    """Median seconds per step name (started -> finished) over ``buildids``, and 'between
    steps' (a step's finish to the next one's start, summed per build)."""
    per: dict[str, list[float]] = defaultdict(list)
    gaps: dict[int, float] = defaultdict(float)
    open_: dict[tuple, float] = {}
    last_end: dict[int, float] = {}
    build_new: dict[int, float] = {}
    build_end: dict[int, float] = {}
    for e in events:
        k = e["key"]
        if k[0] == "builds" and e["buildid"] in buildids:
            if k[2] == "new":
                build_new[e["buildid"]] = e["t"]
            elif k[2] == "finished":
                build_end[e["buildid"]] = e["t"]
        if k[0] != "steps" or e["buildid"] not in buildids:
            continue
        sid = (e["buildid"], e["number"])
        if k[2] == "started":
            open_[sid] = e["t"]
            prev = last_end.get(e["buildid"], build_new.get(e["buildid"]))
            if prev is not None:
                gaps[e["buildid"]] += e["t"] - prev
        elif k[2] == "finished" and sid in open_:
            per[e["name"]].append(e["t"] - open_.pop(sid))
            last_end[e["buildid"]] = e["t"]
    n = max(len(buildids), 1)
    # a step skipped in some builds counts 0 there: the medians add up to a build
    out = {name: statistics.median(v + [0.0] * (n - len(v))) for name, v in per.items()}
    out["(between steps)"] = statistics.median(gaps.values()) if gaps else 0.0
    out["(last step -> build finished)"] = statistics.median(
        [build_end[b] - last_end[b] for b in buildids if b in build_end and b in last_end] or [0.0])
    return out


def latency(base: Path, keys, runs: int, tree: Path | None) -> dict:
    from easeml_buildbot.custody.ledger import Ledger

    world, stop, clock = _world(base, keys, tree, workers=1)
    led = Ledger(world.ledger_url)  # read after each run, outside the timed part
    try:
        repo = world.repo("lat", steps=runs + 2, **COND)
        # warm-up: the first build also runs (and caches) the base model
        warm = repo.commit_model(quality=0.9, branch="pr-0", flip_seed=100)
        world.send("pull_request", world.pr_payload("lat", repo, 100, warm.sha))
        world.wait_completed("lat", 1)
        time.sleep(1.5)  # GitHub's pacing: the first timed build starts without a write pending
        totals, overheads, writes, t_build = [], [], [], []
        buildids: set[int] = set()
        for i in range(runs):
            head = repo.commit_model(quality=0.9, branch=f"pr-{i + 1}", flip_seed=200 + i)
            payload = world.pr_payload("lat", repo, i + 1, head.sha)
            n_writes = len(_writes(world, "lat"))
            t0 = time.time()
            code, _ = world.send("pull_request", payload)
            assert code == 200, code
            world.wait_completed("lat", i + 2, timeout=120)
            t1 = _completed_times(world, "lat")[i + 1]
            writes.append(len(_writes(world, "lat")) - n_writes)
            mine = [u for u in led.uses("acme/lat", repo.dataset_id) if u.commit == head.sha]
            if not mine:
                raise SystemExit(f"run {i}: no ledger use for {head.sha[:12]}; check runs "
                                 f"{world.statuses('lat')[-3:]}")
            model = sum(v for k, v in ((mine[0].result or {}).get("timings") or {}).items()
                        if k.startswith("run_"))
            totals.append(t1 - t0)
            overheads.append(t1 - t0 - model)
            b = world.bb.api("builds", order="-buildid", limit=1)[0]
            buildids.add(b["buildid"])
            ev = {(e["key"][2]): e["t"] for e in _clock(clock)
                  if e["key"][0] == "builds" and e["buildid"] == b["buildid"]}
            t_build.append((ev.get("new", t0) - t0, ev.get("finished", t1) - ev.get("new", t0),
                            t1 - ev.get("finished", t1)))
            time.sleep(1.1)  # the next run starts with GitHub's pacing satisfied, as one PR would
        assert world.sim.errors() == [], world.sim.errors()[:3]
        events = _clock(clock)
        steps = [e for e in events if e["key"][0] == "steps" and e["key"][2] == "new" and e["buildid"] in buildids]
        plain = one_step(world, clock)
        return {"runs": runs, "median_total_s": statistics.median(totals),
                "median_overhead_s": statistics.median(overheads),
                "p90_overhead_s": sorted(overheads)[int(0.9 * (runs - 1))],
                "min_overhead_s": min(overheads), "writes": statistics.median(writes),
                "steps": len(steps) / len(buildids),
                "to_build_s": statistics.median(x[0] for x in t_build),
                "build_s": statistics.median(x[1] for x in t_build),
                "to_check_run_s": statistics.median(x[2] for x in t_build),
                "profile": _step_profile(events, buildids), "plain": plain}
    finally:
        led.close()
        stop()


def one_step(world, clock: Path, runs: int = 10) -> dict:
    """Buildbot's own one-step build on the same master and worker: force -> build finished."""
    bb = world.bb
    bid = {b["name"]: b["builderid"] for b in bb.api("builders")}["plain"]
    out = []
    for _ in range(runs):
        seen = {e["buildid"] for e in _clock(clock) if e["key"][0] == "builds" and e["builderid"] == bid}
        t0 = time.time()
        bb.force_build(builder="plain", scheduler="plain-force")
        deadline = time.time() + 60
        while time.time() < deadline:
            done = [e for e in _clock(clock) if e["key"][0] == "builds" and e["key"][2] == "finished"
                    and e["builderid"] == bid and e["buildid"] not in seen]
            if done:
                out.append(done[0]["t"] - t0)
                break
            time.sleep(0.02)
        time.sleep(0.3)
    return {"median_s": statistics.median(out), "min_s": min(out)}


def drain(base: Path, keys, events: int, tree: Path | None, paced: bool) -> dict:
    world, stop, _ = _world(base, keys, tree, workers=2, extra_settings=None if paced else UNPACED)
    try:
        repo = world.repo("drain", steps=events + 2, **COND)
        payloads = []
        for i in range(events):
            head = repo.commit_model(quality=0.9, branch=f"pr-{i + 1}", flip_seed=300 + i)
            payloads.append(world.pr_payload("drain", repo, i + 1, head.sha))
        t0 = time.time()
        for p in payloads:
            assert world.send("pull_request", p)[0] == 200
        world.wait_completed("drain", events, timeout=1800)
        t1 = max(_completed_times(world, "drain"))
        conclusions = world.sim.conclusions("acme/drain")
        assert len(conclusions) == events and world.sim.errors() == []
        return {"events": events, "drain_s": t1 - t0, "per_event_s": (t1 - t0) / events,
                "per_worker_per_s": events / (t1 - t0) / 2,
                "conclusions": {c: conclusions.count(c) for c in set(conclusions)}}
    finally:
        stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--events", type=int, default=30, help="pull requests drained (0: none)")
    ap.add_argument("--base", default=BASE, help=f"the 'before' commit (default {BASE})")
    ap.add_argument("--paced", action="store_true", help="also drain with GitHub's pacing")
    ap.add_argument("--after", help="the 'after' commit (default: this working tree)")
    ap.add_argument("--only", choices=("before", "after"), help="run one column only")
    args = ap.parse_args()
    reason = fixtures_available()
    if reason:
        print(f"bench_master: skipped: {reason}")
        return 0
    res: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-master-") as tmp:
        top = Path(tmp)
        keys = make_service_keys(top / "keys")
        cols = [("before", _tree(args.base, top / "before-tree")),
                ("after", _tree(args.after, top / "after-tree") if args.after else None)]
        for col, tree in cols:
            if args.only and col != args.only:
                continue
            r = res[col] = {"lat": latency(top / f"{col}-lat", keys, args.runs, tree)}
            if args.events > 0:  # --events 0: latency only
                r["drain"] = drain(top / f"{col}-drain", keys, args.events, tree, paced=False)
            if args.paced:
                r["paced"] = drain(top / f"{col}-paced", keys, args.events, tree, paced=True)
            print(f"[{col} done]", json.dumps({k: v for k, v in r["lat"].items() if k != "profile"}), flush=True)
    _print(res, args)
    return 0


def _print(res: dict, args) -> None:
    cols = list(res)
    w = 12

    def row(label: str, fn, fmt: str = "{:.2f}") -> None:
        cells = []
        for c in cols:
            try:
                cells.append(fmt.format(fn(res[c])))
            except (KeyError, TypeError, ValueError):
                cells.append("-")
        print(f"  {label:<52}" + "".join(f"{x:>{w}}" for x in cells))

    print(f"\nwebhook -> check run completed: trivial model, process runner, 1 worker, GitHub pacing, "
          f"median of {args.runs} (before = {args.base}, after = {args.after or 'this tree'})")
    print(f"  {'':<52}" + "".join(f"{c:>{w}}" for c in cols))
    row("total, s", lambda r: r["lat"]["median_total_s"])
    row("minus model run time (overhead), s", lambda r: r["lat"]["median_overhead_s"])
    row("  p90 / min overhead, s", lambda r: f"{r['lat']['p90_overhead_s']:.2f}/{r['lat']['min_overhead_s']:.2f}", "{}")
    row("  webhook -> build started, s", lambda r: r["lat"]["to_build_s"])
    row("  build started -> finished, s", lambda r: r["lat"]["build_s"])
    row("  build finished -> check run completed, s", lambda r: r["lat"]["to_check_run_s"])
    row("check-run writes per build", lambda r: r["lat"]["writes"], "{:.0f}")
    row("steps per build", lambda r: r["lat"]["steps"], "{:.0f}")
    row("Buildbot's own one-step build (force -> finished), s", lambda r: r["lat"]["plain"]["median_s"])
    print(f"\n{args.events} pull_request events at once on 2 workers, unpaced" if args.events > 0 else "")
    row("drained in, s", lambda r: r["drain"]["drain_s"], "{:.1f}")
    row("s per event", lambda r: r["drain"]["per_event_s"])
    row("builds per second per worker", lambda r: r["drain"]["per_worker_per_s"])
    if args.paced:
        print(f"\n{args.events} pull_request events at once on 2 workers, GitHub pacing")
        row("drained in, s", lambda r: r["paced"]["drain_s"], "{:.1f}")
        row("s per event", lambda r: r["paced"]["per_event_s"])
    print("\nwhere a build's time goes (median seconds per step; 0 where skipped)")
    names: list[str] = []
    for c in cols:
        names += [n for n in res[c]["lat"]["profile"] if n not in names]
    for n in names:
        row(n, lambda r, n=n: r["lat"]["profile"][n] if n in r["lat"]["profile"] else "-",
            "{:.3f}" if True else "{}")


if __name__ == "__main__":
    sys.exit(main())
