"""Load on several masters (issue 14): N pull requests (default 200) posted round robin to M
masters (default 2) sharing one PostgreSQL (Buildbot's database and the ledger) and a
crossbar router, W workers (default 4, spread evenly over the masters), ProcessRunner, trivial
numpy model, GitHub stand-in unpaced (the service's own capacity, not GitHub's advised 1 s
between writes).

Checks that every pull request was drained, none lost, duplicated or stuck: exactly one check
run per head (as the GitHub stand-in shows it), completed with success; ledger uses = PRs
exactly, one committed use per head; every build request complete, one build each; nothing
left in the check-run reconciler's desired state or the mail outbox. Prints the drain time,
builds per second, the per-build overhead (build wall time minus the model's run time from the
ledger's timings), p50/p95 of webhook -> completed check run per PR, each master's resident
memory before and after, and the machine's load average (the numbers depend on it).

    .venv/bin/python benchmarks/bench_multimaster.py                    # 200 PRs, 2 masters, 4 workers
    .venv/bin/python benchmarks/bench_multimaster.py --prs 20 --workers 2   # scaled down
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.crossbar import CROSSBAR, start_crossbar  # noqa: E402
from support.github_sim import fixtures_available  # noqa: E402
from support.gpgkeys import make_service_keys  # noqa: E402
from support.multimaster import start_cluster  # noqa: E402
from support.postgres import find_pg_bin, start_postgres  # noqa: E402

COND = dict(quality=0.9, condition="n > 0.5 +/- 0.2", reliability=0.9, adaptivity="full")
UNPACED = {"github": {"seconds_between_requests": 0, "seconds_between_writes": 0}}


def _rss_kib(bb) -> int:
    """VmRSS in KiB of the twistd process serving the harness's master."""
    pidfile = bb.master_dir / "twistd.pid"
    pid = int(pidfile.read_text().strip()) if pidfile.exists() else bb.master_proc.pid
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0])


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def completed_at(sim) -> dict[str, float]:
    """head sha -> when GitHub first showed its check run completed (monotonic seconds), from
    the stand-in's record: a run created completed, or updated to completed."""
    with sim._lock:
        reqs = list(sim.requests)
        head_of = {rid: run["head_sha"] for rid, run in sim.check_runs.items()}
    out: dict[str, float] = {}
    for r in reqs:
        if (r.body or {}).get("status") != "completed" or not 200 <= r.status < 300:
            continue
        if r.operation == "checks/create":
            head = r.body.get("head_sha")
        elif r.operation == "checks/update":
            head = head_of.get(int(r.path.split("/")[-1]))
        else:
            continue
        if head is not None and head not in out:
            out[head] = r.t
    return out


def run(base: Path, prs: int, repos: int, masters: int, workers: int) -> dict:
    from easeml_buildbot.custody.ledger import Ledger
    from easeml_buildbot.master.checkruns import CheckRunStore
    from easeml_buildbot.master.outbox import Outbox

    keys = make_service_keys(base / "keys")
    pg = start_postgres()
    router = start_crossbar(base / "crossbar")
    try:
        world, stop = start_cluster(base / "cluster", keys, pg, router, masters=masters,
                                    workers_per_master=workers // masters, extra_settings=UNPACED)
        try:
            per_repo = -(-prs // repos)
            repo_objs, payloads, heads = {}, [], {}
            for r in range(repos):
                name = f"load{r}"
                repo_objs[name] = world.repo(name, steps=per_repo + 2, **COND)
            for i in range(prs):
                name = f"load{i % repos}"
                head = repo_objs[name].commit_model(quality=0.9, branch=f"pr-{i + 1}", flip_seed=300 + i)
                heads[head.sha] = name
                payloads.append((name, head.sha, world.pr_payload(name, repo_objs[name], i + 1, head.sha)))
            rss_before = [_rss_kib(m) for m in world.masters]
            load_before = os.getloadavg()
            posted: dict[str, float] = {}
            t0 = time.monotonic()
            for name, sha, p in payloads:
                posted[sha] = time.monotonic()
                code, body = world.send("pull_request", p)
                assert code == 200, (code, body)
            t_posted = time.monotonic() - t0
            world.wait(lambda: len(completed_at(world.sim)) >= prs, f"{prs} completed check runs",
                       timeout=prs * 20 + 300)
            done = completed_at(world.sim)
            drain = max(done.values()) - t0  # first webhook posted -> last check run completed
            load_after = os.getloadavg()
            time.sleep(3)  # anything duplicated would land now
            rss_after = [_rss_kib(m) for m in world.masters]

            # nothing lost, duplicated or stuck
            problems = []
            runs_per_head = {sha: world.sim.check_runs_for(sha) for sha in heads}
            bad_runs = {sha[:12]: len(r) for sha, r in runs_per_head.items() if len(r) != 1}
            if bad_runs:
                problems.append(f"check runs per head != 1: {dict(list(bad_runs.items())[:10])}")
            conclusions = {r["conclusion"] for rs in runs_per_head.values() for r in rs}
            if conclusions != {"success"}:
                problems.append(f"conclusions {sorted(map(str, conclusions))}")
            for n in repo_objs:
                completed = [b for v, b in world.calls(n) if b.get("status") == "completed"]
                want = sum(1 for h in heads.values() if h == n)
                if len(completed) != want:
                    problems.append(f"{n}: {len(completed)} completed writes for {want} PRs")
            led = Ledger(world.ledger_url)
            try:
                uses = [u for n, r in repo_objs.items() for u in led.uses(f"acme/{n}", r.dataset_id)]
                checkrun_depth = CheckRunStore(led.engine).depth()
                outbox_depth = Outbox(led).depth()
            finally:
                led.close()
            committed = [u for u in uses if u.state == "committed"]
            by_head: dict[str, int] = {}
            for u in uses:
                by_head[u.commit] = by_head.get(u.commit, 0) + 1
            if len(uses) != prs or len(committed) != prs or set(by_head) != set(heads) or max(by_head.values()) != 1:
                problems.append(f"ledger: {len(uses)} uses ({len(committed)} committed) for {len(by_head)} heads, "
                                f"expected {prs}")
            brs = world.live().api("buildrequests")
            stuck = [b["buildrequestid"] for b in brs if not b["complete"]]
            builds = world.builds()
            if stuck or len(brs) != prs:
                problems.append(f"{len(brs)} build requests, incomplete: {stuck[:10]}")
            if len(builds) != prs or any(not b["complete"] for b in builds):
                problems.append(f"{len(builds)} builds for {prs} PRs")
            if checkrun_depth or outbox_depth:
                problems.append(f"left pending: {checkrun_depth} check runs, {outbox_depth} mails")
            if world.sim.errors():
                problems.append(f"GitHub stand-in rejected requests: {world.sim.errors()[:3]}")

            model = {u.commit: sum(v for k, v in ((u.result or {}).get("timings") or {}).items()
                                   if k.startswith("run_")) for u in committed}
            sha_of = {b["buildid"]: world.live().build_properties(b["buildid"]).get("easeml_head_sha")
                      for b in builds}
            durations = [b["complete_at"] - b["started_at"] for b in builds]
            overheads = [b["complete_at"] - b["started_at"] - model.get(sha_of[b["buildid"]], 0.0) for b in builds]
            latency = [done[sha] - posted[sha] for sha in heads if sha in done]
            per_master: dict[int, int] = {}
            for b in builds:
                per_master[b["masterid"]] = per_master.get(b["masterid"], 0) + 1
            return {"prs": prs, "repos": repos, "masters": masters, "workers": workers, "post_all_s": t_posted,
                    "drain_s": drain, "builds_per_s": prs / drain,
                    "worker_s_per_build": drain * workers / prs, "median_build_s": statistics.median(durations),
                    "median_overhead_s": statistics.median(overheads), "p95_overhead_s": _pct(overheads, 0.95),
                    "median_model_s": statistics.median(model.values()) if model else float("nan"),
                    "p50_latency_s": _pct(latency, 0.5), "p95_latency_s": _pct(latency, 0.95),
                    "builds_per_master": per_master, "uses": len(uses),
                    "runs_per_head": sorted({len(r) for r in runs_per_head.values()}),
                    "stuck": len(stuck), "pending": (checkrun_depth, outbox_depth),
                    "rss_before_mib": [round(r / 1024) for r in rss_before],
                    "rss_after_mib": [round(r / 1024) for r in rss_after],
                    "load": (load_before, load_after), "problems": problems}
        finally:
            stop()
    finally:
        router.stop()
        pg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prs", type=int, default=200, help="pull requests (default 200)")
    ap.add_argument("--masters", type=int, default=2, help="masters (default 2)")
    ap.add_argument("--workers", type=int, default=4, help="workers, spread evenly over the masters (default 4)")
    ap.add_argument("--repos", type=int, default=10, help="repositories (test sets) the PRs are spread over")
    args = ap.parse_args()
    if args.prs < 1 or args.masters < 1 or args.workers < args.masters or args.workers % args.masters:
        ap.error("--prs >= 1, --masters >= 1, and --workers a multiple of --masters")
    reason = fixtures_available()
    if reason or find_pg_bin() is None or not CROSSBAR.exists():
        print(f"bench_multimaster: skipped: {reason or 'PostgreSQL or crossbar missing (scripts/setup.sh)'}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-multimaster-") as tmp:
        r = run(Path(tmp), args.prs, min(args.repos, args.prs), args.masters, args.workers)
    (l1b, _, _), (l1a, _, _) = r["load"]
    print(f"{r['prs']} pull requests ({r['repos']} repositories) on {r['masters']} masters, {r['workers']} workers, "
          f"process runner, trivial model, GitHub unpaced; load average {l1b:.2f} at the start, {l1a:.2f} at the end "
          f"({os.cpu_count()} cores):")
    print(f"  all posted in {r['post_all_s']:.1f} s; drained in {r['drain_s']:.1f} s: {r['builds_per_s']:.3f} builds/s "
          f"({r['builds_per_s'] / r['workers']:.3f} per worker); builds per master {r['builds_per_master']}")
    print(f"  webhook -> completed check run: p50 {r['p50_latency_s']:.1f} s, p95 {r['p95_latency_s']:.1f} s "
          f"(all posted at once: mostly waiting for a worker)")
    print(f"  per build: wall time median {r['median_build_s']:.2f} s (Buildbot's started..complete, 1 s resolution), "
          f"model run {r['median_model_s']:.3f} s; overhead (wall - model) median {r['median_overhead_s']:.2f} s, "
          f"p95 {r['p95_overhead_s']:.2f} s; worker time per build ({r['workers']} x drain / PRs) "
          f"{r['worker_s_per_build']:.2f} s")
    print(f"  master RSS MiB before {r['rss_before_mib']}, after {r['rss_after_mib']}")
    print(f"  ledger uses {r['uses']} for {r['prs']} PRs; check runs per head {r['runs_per_head']}; "
          f"build requests incomplete {r['stuck']}; check runs / mails pending {list(r['pending'])}")
    if r["problems"]:
        print("  PROBLEMS: " + "; ".join(r["problems"]))
        return 1
    print("  nothing lost, duplicated or stuck")
    return 0


if __name__ == "__main__":
    sys.exit(main())
