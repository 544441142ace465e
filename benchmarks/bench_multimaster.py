"""Load on several masters (issue 14): N pull requests (default 200) posted round robin to 2
masters sharing one PostgreSQL (Buildbot's database and the ledger) and a crossbar router, 4
workers (2 on each master), ProcessRunner, trivial numpy model, GitHub stand-in unpaced (the
service's own capacity, not GitHub's advised 1 s between writes).

Checks that every pull request was drained: exactly one check run each, completed once
with success, one committed use each in the ledger, no build request left unclaimed or
incomplete, no build twice. Prints the drain time, builds per second per worker, the
per-build overhead (build duration minus the model's run time from the ledger's timings)
and each master's resident memory (now and peak).

    .venv/bin/python benchmarks/bench_multimaster.py [--prs 200] [--repos 10]
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

from support.crossbar import CROSSBAR, start_crossbar  # noqa: E402
from support.github_sim import fixtures_available  # noqa: E402
from support.gpgkeys import make_service_keys  # noqa: E402
from support.multimaster import start_cluster  # noqa: E402
from support.postgres import find_pg_bin, start_postgres  # noqa: E402

COND = dict(quality=0.9, condition="n > 0.5 +/- 0.2", reliability=0.9, adaptivity="full")
UNPACED = {"github": {"seconds_between_requests": 0, "seconds_between_writes": 0}}


def _rss_kib(bb) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB of the twistd process serving the harness's master."""
    pidfile = bb.master_dir / "twistd.pid"
    pid = int(pidfile.read_text().strip()) if pidfile.exists() else bb.master_proc.pid
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def run(base: Path, prs: int, repos: int) -> dict:
    from easeml_buildbot.custody.ledger import Ledger

    keys = make_service_keys(base / "keys")
    pg = start_postgres()
    router = start_crossbar(base / "crossbar")
    try:
        world, stop = start_cluster(base / "cluster", keys, pg, router, masters=2, workers_per_master=2,
                                    extra_settings=UNPACED)
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
                payloads.append((name, world.pr_payload(name, repo_objs[name], i + 1, head.sha)))
            rss_idle = [_rss_kib(m) for m in world.masters]
            t0 = time.monotonic()
            for name, p in payloads:
                code, body = world.send("pull_request", p)
                assert code == 200, (code, body)
            t_posted = time.monotonic() - t0
            counts = {n: sum(1 for h in heads.values() if h == n) for n in repo_objs}
            world.wait(lambda: all(sum(1 for _, s, _c in world.statuses(n) if s == "completed") >= k
                                   for n, k in counts.items()),
                       f"{prs} completed check runs", timeout=prs * 20 + 300)
            done_t = [r.t for r in world.sim.requests if r.operation == "checks/update"
                      and (r.body or {}).get("status") == "completed"]
            drain = max(done_t) - t0  # first webhook posted -> last check run completed
            time.sleep(3)  # anything duplicated would land now
            rss_end = [_rss_kib(m) for m in world.masters]

            # nothing lost, duplicated or stuck
            problems = []
            for n in repo_objs:
                calls = world.calls(n)
                creates = [b for v, b in calls if v == "create"]
                completed = [b for v, b in calls if b.get("status") == "completed"]
                if len(creates) != counts[n] or len(completed) != counts[n]:
                    problems.append(f"{n}: {len(creates)} check runs created, {len(completed)} completed, "
                                    f"expected {counts[n]}")
                if {b.get("conclusion") for b in completed} != {"success"}:
                    problems.append(f"{n}: conclusions {sorted({b.get('conclusion') for b in completed})}")
            led = Ledger(world.ledger_url)
            try:
                uses = [u for n, r in repo_objs.items() for u in led.uses(f"acme/{n}", r.dataset_id)]
            finally:
                led.close()
            committed = [u for u in uses if u.state == "committed"]
            by_head: dict[str, int] = {}
            for u in committed:
                by_head[u.commit] = by_head.get(u.commit, 0) + 1
            if len(committed) != prs or set(by_head) != set(heads) or max(by_head.values()) != 1:
                problems.append(f"ledger: {len(committed)} committed uses for {len(by_head)} heads (expected {prs})")
            brs = world.live().api("buildrequests")
            stuck = [b["buildrequestid"] for b in brs if not b["complete"]]
            builds = world.builds()
            if stuck or len(brs) != prs:
                problems.append(f"{len(brs)} build requests, incomplete: {stuck[:10]}")
            if len(builds) != prs or any(not b["complete"] for b in builds):
                problems.append(f"{len(builds)} builds for {prs} PRs")
            if world.sim.errors():
                problems.append(f"GitHub stand-in rejected requests: {world.sim.errors()[:3]}")

            model = {u.commit: sum(v for k, v in ((u.result or {}).get("timings") or {}).items()
                                   if k.startswith("run_")) for u in committed}
            sha_of = {}
            for b in builds:
                props = world.live().build_properties(b["buildid"])
                sha_of[b["buildid"]] = props.get("easeml_head_sha")
            durations = [b["complete_at"] - b["started_at"] for b in builds]
            overheads = [b["complete_at"] - b["started_at"] - model.get(sha_of[b["buildid"]], 0.0) for b in builds]
            per_master = {}
            for b in builds:
                per_master[b["masterid"]] = per_master.get(b["masterid"], 0) + 1
            return {"prs": prs, "repos": repos, "post_all_s": t_posted, "drain_s": drain,
                    "builds_per_s_per_worker": prs / drain / 4, "worker_s_per_build": drain * 4 / prs, "median_build_s": statistics.median(durations),
                    "median_overhead_s": statistics.median(overheads),
                    "p90_overhead_s": sorted(overheads)[int(0.9 * (len(overheads) - 1))],
                    "median_model_s": statistics.median(model.values()), "builds_per_master": per_master,
                    "rss_idle_mib": [round(r / 1024) for r, _ in rss_idle],
                    "rss_end_mib": [round(r / 1024) for r, _ in rss_end],
                    "rss_peak_mib": [round(h / 1024) for _, h in rss_end], "problems": problems}
        finally:
            stop()
    finally:
        router.stop()
        pg.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prs", type=int, default=200)
    ap.add_argument("--repos", type=int, default=10, help="repositories (test sets) the PRs are spread over")
    args = ap.parse_args()
    reason = fixtures_available()
    if reason or find_pg_bin() is None or not CROSSBAR.exists():
        print(f"bench_multimaster: skipped: {reason or 'PostgreSQL or crossbar missing (scripts/setup.sh)'}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-multimaster-") as tmp:
        r = run(Path(tmp), args.prs, min(args.repos, args.prs))
    print(f"{r['prs']} pull requests ({r['repos']} repositories) on 2 masters, 4 workers, process runner, "
          f"trivial model, GitHub unpaced:")
    print(f"  all posted in {r['post_all_s']:.1f} s; drained in {r['drain_s']:.1f} s "
          f"({r['builds_per_s_per_worker']:.3f} builds/s per worker); builds per master {r['builds_per_master']}")
    print(f"  worker time per build (4 x drain / PRs) {r['worker_s_per_build']:.2f} s")
    print(f"  per build (Buildbot's started..complete, 1 s resolution): median {r['median_build_s']:.2f} s, model run {r['median_model_s']:.2f} s, overhead median "
          f"{r['median_overhead_s']:.2f} s, p90 {r['p90_overhead_s']:.2f} s")
    print(f"  master RSS MiB: idle {r['rss_idle_mib']}, end {r['rss_end_mib']}, peak {r['rss_peak_mib']}")
    if r["problems"]:
        print("  PROBLEMS: " + "; ".join(r["problems"]))
        return 1
    print("  nothing lost, duplicated or stuck: one check run, one completed update and one committed use per PR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
