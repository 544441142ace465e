"""Estimator benchmark: labels needed per method on the paper's settings, and scoring speed.

Run: .venv/bin/python benchmarks/bench_estimator.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easeml_buildbot.estimator.decision import decide  # noqa: E402
from easeml_buildbot.estimator.samples import SampleSizeError, sample_size  # noqa: E402

METHODS = ("hoeffding", "bennett", "exact", "betting")
BASE = "995dbe2"  # main before issue 15 (the 'today' column is computed by that code, in this run)

# (condition, reliability, adaptivity, H, published number, where it is from)
SETTINGS = [
    ("n > 0.8 +/- 0.05", 0.9999, "full", 32, 6279, "MLSys'19 §4 example"),
    ("n > 0.5 +/- 0.01", 0.9999, "none", 32, 63381, "MLSys'19, one variable, eps 0.01"),
    ("n > 0.5 +/- 0.01", 0.9999, "firstChange", 32, None, "same, firstChange (orig. returned 0)"),
    ("n > 0.5 +/- 0.01", 0.9999, "full", 32, 156955, "MLSys'19, one variable, eps 0.01"),
    ("n > 0.9 +/- 0.01", 0.9999, "full", 32, None, "threshold 0.9 (exact gains)"),
    ("n - o > 0.1 +/- 0.1", 0.99, "full", 32, 5496, "MLSys'19, difference"),
    ("n - o > 0.02 +/- 0.01", 0.9999, "full", 32, None, "README example"),
    ("d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01", 0.9999, "none", 32, "29K", "MLSys'19 §5 (Bennett, '29K')"),
    ("d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01", 0.9999, "full", 32, "67K", "MLSys'19 §5 (Bennett, '67K')"),
    ("d < 0.05 +/- 0.01 /\\ n - o > 0.01 +/- 0.01", 0.999, "full", 16, None, "smaller d, H 16"),
]


def cell(cond: str, rel: float, adapt: str, h: int, method: str, labelling: str = "full") -> str:
    try:
        s = sample_size(cond, rel, adapt, h, method, labelling)
    except SampleSizeError:
        return "-"
    return f"{s.labels:,}" + (f" (+{s.unlabeled:,} u)" if s.unlabeled else "")


def table() -> None:
    print("Labels needed per method ('+N u' = samples that need predictions only)\n")
    head = f"{'condition':<44} {'rel':>6} {'adapt':>11} {'H':>3} {'paper':>8} " + " ".join(
        f"{m:>22}" for m in METHODS) + f" {'bennett+active':>24}  note"
    print(head)
    print("-" * len(head))
    for cond, rel, adapt, h, paper, note in SETTINGS:
        cells = [cell(cond, rel, adapt, h, m) for m in METHODS]
        act = cell(cond, rel, adapt, h, "bennett", "active")
        print(f"{cond:<44} {rel:>6} {adapt:>11} {h:>3} {paper if paper else '':>8} "
              + " ".join(f"{c:>22}" for c in cells) + f" {act:>24}  {note}")

    print("\nOne variable, worst-case threshold 0.5 vs 0.8 (hoeffding / exact@0.5 / exact@0.8), H 32")
    print(f"{'eps':>6} {'rel':>7} {'adapt':>6} {'hoeffding':>10} {'exact@0.5':>10} {'exact@0.8':>10}")
    for eps in (0.1, 0.05, 0.025, 0.01):
        for rel in (0.99, 0.999, 0.9999):
            for adapt in ("none", "full"):
                hoef = sample_size(f"n > 0.5 +/- {eps}", rel, adapt, 32, "hoeffding").labels
                e5 = sample_size(f"n > 0.5 +/- {eps}", rel, adapt, 32, "exact").labels
                e8 = sample_size(f"n > 0.8 +/- {eps}", rel, adapt, 32, "exact").labels
                print(f"{eps:>6} {rel:>7} {adapt:>6} {hoef:>10,} {e5:>10,} {e8:>10,}")


def decisiveness() -> None:
    """Rows after which each method's verdict is decided, for two models that disagree on 3%
    of rows with a true gain of 1 point (condition n - o > 0 +/- 0.01, 0.9999, full, H 32)."""
    rng = np.random.default_rng(1)
    big = 2_000_000
    y = rng.integers(0, 10, big)
    old = np.where(rng.random(big) < 0.8, y, (y + 1) % 10)
    new = old.copy()
    u = rng.random(big)
    fixed, broken = u < 0.02, (u >= 0.02) & (u < 0.03)  # new right/old wrong, and the reverse
    new[fixed], old[fixed] = y[fixed], (y[fixed] + 1) % 10
    new[broken], old[broken] = (y[broken] + 1) % 10, y[broken]
    cond = "n - o > 0 +/- 0.01"
    grid = [5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000]
    print(f"\nRows until decided: {cond}, reliability 0.9999, full, H 32; models disagree on "
          f"{np.mean(new != old):.3f} of rows, true gain ~{np.mean(new == y) - np.mean(old == y):.4f}")
    for method in ("hoeffding", "exact", "betting", "sequential"):
        planned = sample_size(cond, 0.9999, "full", 32, method).labels
        first = next((n for n in grid if decide(cond, y[:n], new[:n], old[:n], reliability=0.9999,
                      adaptivity="full", steps=32, mode="fp-free", method=method).raw == "pass"), None)
        if method == "sequential":
            v = decide(cond, y, new, old, reliability=0.9999, adaptivity="full", steps=32, mode="fp-free",
                       method=method)
            first = v.labels_consumed if v.raw == "pass" else None
        at = "never (<= 2M)" if first is None else f"{first:,}"
        print(f"  {method:<10} planned {planned:>9,}   first pass at {at:>13} rows")


def speed(n: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n, dtype=np.int32)
    old = np.where(rng.random(n) < 0.85, y, (y + 1) % 10).astype(np.int32)
    new = np.where(rng.random(n) < 0.03, y, old).astype(np.int32)
    cond = "d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01"
    kw = dict(reliability=0.9999, adaptivity="full", steps=32, mode="fp-free")
    _clear_caches()
    t = time.perf_counter()
    sample_size(cond, 0.9999, "full", 32)
    plan_s = time.perf_counter() - t
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        v = decide(cond, y, new, old, **kw)
        best = min(best, time.perf_counter() - t)
    print(f"\nScoring speed: {n:,} predictions of two models (n, o, d and a 2-clause verdict)")
    print(f"  plan (sample_size, all methods, uncached): {plan_s * 1000:.1f} ms")
    print(f"  decide: {best:.3f} s  = {n / best / 1e6:.1f} M predictions/s  (verdict {v.outcome}, raw {v.raw})")
    t = time.perf_counter()
    v = decide("n > 0.8 +/- 0.01", y, new, **kw)
    one = time.perf_counter() - t
    print(f"  decide, one model: {one:.3f} s = {n / one / 1e6:.1f} M predictions/s")
    t = time.perf_counter()
    v = decide(cond, y, new, old, method="betting", **kw)
    bet = time.perf_counter() - t
    print(f"  decide, method betting (betting half on the first 1M rows): {bet:.3f} s "
          f"= {n / bet / 1e6:.1f} M predictions/s (verdict {v.outcome})")


def _clear_caches() -> None:
    from easeml_buildbot.estimator import paired, tails

    for fn in (tails._binomial_samples, paired.paired_samples, paired.sup_log_tail, paired._critical,
               paired.lower_bound):
        fn.cache_clear()


def old_samples():
    """The sample-size module as it was before issue 15, loaded from git into this process."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{BASE}:easeml_buildbot/estimator/samples.py"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    mod = types.ModuleType("samples_before_issue_15")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, "samples_before_issue_15.py", "exec"), mod.__dict__)
    return mod


PAIR = "d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01"
ISSUE_ROWS = [  # (label, condition, reliability, H, adaptivity, labelling, what exact tests reach per the issue)
    ("n > 0.9 +/- 0.01", "n > 0.9 +/- 0.01", 0.9999, 32, "full", "full", "fixed-N optimum; sequential ~19.7k at 0.92"),
    (PAIR, PAIR, 0.9999, 32, "none", "full", "~21,800"),
    (PAIR, PAIR, 0.9999, 32, "full", "full", "~58,300"),
    (PAIR + " (active)", PAIR, 0.9999, 32, "none", "active", "~2,123"),
    (PAIR + " (active)", PAIR, 0.9999, 32, "full", "active", "~5,672"),
    ("n - o > 0.02 +/- 0.02", "n - o > 0.02 +/- 0.02", 0.998, 7, "none", "full", "~29,761"),
    ("n - o > 0.02 +/- 0.02", "n - o > 0.02 +/- 0.02", 0.998, 7, "full", "full", "~43,441"),
    ("defect: n > 0.97 +/- 0.02", "n > 0.97 +/- 0.02", 0.99, 4, "none", "full", "701"),
    ("defect: n - o + d > 0.5 +/- 0.1", "n - o + d > 0.5 +/- 0.1", 0.999, 8, "none", "full", "range 2"),
]


def issue_table() -> None:
    """Issue 15's table: the paper's Hoeffding, the best of today's methods (the code before
    the issue, run here), and the best now (fixed-N; and sequential: worst case / expected)."""
    old = old_samples()
    print("Issue 15: labels, paper (hoeffding) | best before | best now (fixed N) | sequential worst / expected\n")
    head = (f"{'condition':<52} {'rel':>6} {'H':>3} {'adapt':>5} {'paper':>9} {'before':>9} {'now':>9} "
            f"{'now/before':>10} {'seq worst':>10} {'seq exp':>8}  issue's exact column")
    print(head)
    print("-" * len(head))
    for label, cond, rel, h, adapt, lab, target in ISSUE_ROWS:
        paper = sample_size(cond, rel, adapt, h, "hoeffding").labels if lab == "full" else None
        try:
            before = old.sample_size(cond, rel, adapt, h, "auto", lab).labels
        except Exception:  # noqa: BLE001 - the old code may refuse a setting
            before = None
        t = time.perf_counter()
        now = sample_size(cond, rel, adapt, h, "auto", lab)
        dt = time.perf_counter() - t
        seq = sample_size(cond, rel, adapt, h, "sequential", lab) if lab == "full" else None
        ratio = f"{now.labels / before:.3f}" if before else "-"
        def f(x: int | None) -> str:
            return "" if x is None else f"{x:,}"
        print(f"{label:<52} {rel:>6} {h:>3} {adapt:>5} {f(paper):>9} {f(before):>9} {now.labels:>9,} "
              f"{ratio:>10} {f(seq.labels if seq else None):>10} {f(seq.expected_labels if seq else None):>8}  "
              f"{target}  [{now.clauses[-1].technique}, {dt:.1f} s]")


def planning_time() -> None:
    """Planning time and peak memory for tolerances down to 1e-4 (bounded: no multi-GB windows)."""
    import resource

    print("\nPlanning time (method exact, reliability 0.9999, full, H 32), uncached")
    for cond in ("n > 0.5 +/- {e}", "n > 0.99 +/- {e}", "n - o > 0.01 +/- {e}", "d < 0.1 +/- 0.01 /\\ n - o > 0.01 +/- {e}"):
        for e in (1e-2, 1e-3, 1e-4):
            _clear_caches()
            t = time.perf_counter()
            s = sample_size(cond.format(e=e), 0.9999, "full", 32, "exact")
            dt = time.perf_counter() - t
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  {cond.format(e=e):<44} labels {s.labels:>14,}  {s.clauses[-1].technique:<15} "
                  f"{dt:6.2f} s  peak RSS {rss:6.0f} MiB")


if __name__ == "__main__":
    issue_table()
    planning_time()
    print()
    table()
    decisiveness()
    speed(1_000_000 if "--quick" in sys.argv else 10_000_000)
