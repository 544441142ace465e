"""The registry of bounds (plan and decision use one object per technique) and the planner
defects of issue 15 (exact near 0 or 1, sums of three variables, a plan of zero rows)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from easeml_buildbot.estimator import techniques
from easeml_buildbot.estimator.condition import parse_condition
from easeml_buildbot.estimator.decision import decide
from easeml_buildbot.estimator.samples import sample_size
from easeml_buildbot.estimator.tails import binom_log_tail, binomial_samples, chernoff_samples

CONDITIONS = ["n > 0.8 +/- 0.05", "n - o > 0.02 +/- 0.02", "d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01",
              "2 * n - o > 0.1 +/- 0.1", "n - o + d > 0.5 +/- 0.1", "o < 0.3 +/- 0.1"]


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("method", ["hoeffding", "exact", "betting", "auto"])
def test_plan_names_the_object_that_decides(condition: str, method: str) -> None:
    """Every technique a plan names is found in the registry, and that object's size is the
    plan's: the decision cannot use another bound than the plan sized."""
    cond = parse_condition(condition)
    s = sample_size(cond, 0.999, "full", 8, method)
    ctx = techniques.Context.of(cond)
    for cs, clause in zip(s.clauses, cond.clauses):
        t = techniques.get(cs.technique)
        assert t.name == cs.technique
        assert t.size(clause, cs.log_delta, ctx)[0] == max(cs.labels, cs.unlabeled)


def test_unknown_technique_is_refused() -> None:
    with pytest.raises(KeyError, match="unknown technique"):
        techniques.get("binomial+magic")


def test_exact_near_one_widens_its_window_instead_of_falling_back() -> None:
    """`n > 0.97 +/- 0.02` at 0.99, none, H 4: the exact tails need 701 rows, not Hoeffding's
    7,490 (the saw-tooth window used to run out and fall back)."""
    s = sample_size("n > 0.97 +/- 0.02", 0.99, "none", 4, "exact")
    assert s.labels < 800 and s.clauses[0].technique == "binomial"
    log_d = s.clauses[0].log_delta
    n = s.labels
    # every N' from the plan up to the Chernoff size (beyond which Chernoff guarantees it) is good
    ns = np.arange(n, chernoff_samples(0.97, 0.02, log_d) + 1)
    assert (binom_log_tail(ns, 0.97, 0.02, log_d) <= log_d).all()
    assert binom_log_tail(n - 1, 0.97, 0.02, log_d)[0] > log_d


@pytest.mark.parametrize("t", [0.01, 0.03, 0.97, 0.995])
def test_exact_near_the_ends_beats_hoeffding(t: float) -> None:
    for rel, adapt in ((0.99, "none"), (0.9999, "full")):
        e = sample_size(f"n > {t} +/- 0.005", rel, adapt, 4, "exact").labels
        h = sample_size(f"n > {t} +/- 0.005", rel, adapt, 4, "hoeffding").labels
        assert e < h / 3, (t, rel, e, h)


def test_planning_for_tiny_eps_is_bounded() -> None:
    """eps 1e-4 plans without a multi-GB window (1 GiB address space) and in bounded time."""
    code = ("import resource, time\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from easeml_buildbot.estimator.samples import sample_size\n"
            "t = time.perf_counter()\n"
            "for c in ('n > 0.5 +/- 0.0001', 'n > 0.99 +/- 0.0001', 'n - o > 0.01 +/- 0.0001'):\n"
            "    print(sample_size(c, 0.9999, 'full', 32, 'exact').labels)\n"
            "assert time.perf_counter() - t < 60\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    half, near_one, _ = (int(x) for x in p.stdout.split())
    assert near_one < half / 10


def test_three_variable_sum_has_range_two() -> None:
    """n - o + d lies in [0, 2] (both right: same prediction; exactly one right: they differ)."""
    clause = parse_condition("n - o + d > 0.5 +/- 0.1").clauses[0]
    assert techniques.value_range(clause) == (0.0, 2.0)
    s = sample_size("n - o + d > 0.5 +/- 0.1", 0.999, "none", 8, "exact")
    c = s.clauses[0]
    assert c.technique == "hoeffding-sum" and c.params["range"] == 2.0
    assert c.labels == math.ceil(4 * (-c.log_delta) / (2 * 0.1**2) - 1e-9)
    assert techniques.value_range(parse_condition("n - o > 0 +/- 0.1").clauses[0]) == (-1.0, 1.0)
    assert techniques.value_range(parse_condition("2 * n - o > 0 +/- 0.1").clauses[0]) == (-1.0, 2.0)


def test_tiny_coefficient_plans_a_row_that_decide_accepts() -> None:
    """`1e-300*n > 0 +/- 0.5` used to plan 0 rows, which decide then refused."""
    s = sample_size("1e-300*n > 0 +/- 0.5", 0.9999, "full", 32)
    assert s.rows >= 1
    y = np.ones(s.rows, dtype=int)
    v = decide("1e-300*n > 0 +/- 0.5", y, y, reliability=0.9999, adaptivity="full", steps=32, mode="fp-free",
               plan=s)
    assert v.raw in ("pass", "unknown")


def test_binomial_samples_is_the_first_clean_n() -> None:
    log_d = math.log(1e-3)
    n = binomial_samples(0.8, 0.05, log_d)
    ns = np.arange(n, chernoff_samples(0.8, 0.05, log_d) + 1)
    assert (binom_log_tail(ns, 0.8, 0.05, log_d) <= log_d).all()
    assert binom_log_tail(n - 1, 0.8, 0.05, log_d)[0] > log_d
