"""Sequential evaluation: anytime-valid at the threshold, under an adaptive attacker, and
with far fewer labels than the fixed-N plan when the truth is clearly on one side."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from easeml_buildbot.estimator import sequential
from easeml_buildbot.estimator.condition import parse_condition
from easeml_buildbot.estimator.decision import Verdict, decide
from easeml_buildbot.estimator.samples import sample_size
from easeml_buildbot.estimator.tails import clopper_pearson
from estimator.attacks import adaptive_attack

REL, DELTA, H = 0.8, 0.2, 4


def ci_low(failures: int, trials: int) -> float:
    return stats.binomtest(failures, trials).proportion_ci(0.999).low


def within_delta(failures: int, trials: int, delta: float = DELTA) -> bool:
    return failures <= stats.binom.ppf(1 - 1e-3, trials, delta)


def one_var_trials(condition: str, truth: float, trials: int, seed: int) -> tuple[int, list[int]]:
    cond = parse_condition(condition)
    plan = sample_size(cond, REL, "none", H, "sequential")
    rng = np.random.default_rng(seed)
    n = plan.rows
    y = np.ones(n, dtype=np.int8)
    failures, used = 0, []
    for _ in range(trials):
        wrong = False
        for _ in range(H):
            pred = (rng.random(n) < truth).astype(np.int8)
            v = decide(cond, y, pred, reliability=REL, adaptivity="none", steps=H, mode="fn-free", plan=plan)
            wrong |= v.raw == ("pass" if cond.clauses[0].op == ">" else "fail") and not cond.holds({"n": truth})
            wrong |= v.raw == "fail" and cond.holds({"n": truth})
            used.append(v.labels_consumed)
        failures += wrong
    return failures, used


@pytest.mark.parametrize("condition", ["n > 0.8 +/- 0.05", "n < 0.2 +/- 0.05"])
def test_sequential_one_variable_at_the_threshold(condition: str) -> None:
    """Truth exactly at the threshold (the condition is false): measured rate of wrong
    verdicts over H uses below δ (99.9% interval), although every use may stop at any batch."""
    trials = 300
    f, _ = one_var_trials(condition, 0.8 if ">" in condition else 0.2, trials, seed=2023)
    assert ci_low(f, trials) <= DELTA and within_delta(f, trials), f / trials


def test_peeking_at_a_fixed_n_bound_is_caught() -> None:
    """Negative control: stopping at the first batch where the *fixed-N* Clopper-Pearson bound
    at δ_c decides (peeking) breaks the level that the sequential test keeps."""
    cond = parse_condition("n > 0.8 +/- 0.05")
    plan = sample_size(cond, REL, "none", H, "sequential")
    log_dc = plan.clauses[0].log_delta
    n, step = plan.rows, sequential.batch_size(plan.rows)
    rng = np.random.default_rng(11)
    trials, failures = 300, 0
    for _ in range(trials):
        wrong = False
        for _ in range(H):
            k = np.cumsum(rng.random(n) < 0.8)
            for t in range(step, n + 1, step):
                if clopper_pearson(int(k[t - 1]), t, log_dc)[0] > 0.8:
                    wrong = True
                    break
        failures += wrong
    assert not within_delta(failures, trials), failures / trials


def test_sequential_paired_at_the_threshold() -> None:
    cond = parse_condition("d < 0.2 +/- 0.05 /\\ n - o > 0 +/- 0.05")
    plan = sample_size(cond, REL, "none", H, "sequential")
    assert plan.clauses[1].technique == "paired+sequential"
    rng = np.random.default_rng(7)
    n, trials, failures = plan.rows, 80, 0
    y = np.ones(n, dtype=np.int8)
    for _ in range(trials):
        wrong = False
        for _ in range(H):
            u = rng.random(n)
            both = rng.random(n) < 0.5
            new = np.where(u < 0.1, 1, np.where(u < 0.2, 0, both)).astype(np.int8)
            old = np.where(u < 0.1, 0, np.where(u < 0.2, 1, both)).astype(np.int8)
            v = decide(cond, y, new, old, reliability=REL, adaptivity="none", steps=H, mode="fp-free", plan=plan)
            wrong |= v.clauses[1].outcome == "pass"
        failures += wrong
    assert ci_low(failures, trials) <= DELTA and within_delta(failures, trials), failures / trials


def test_sequential_full_survives_the_adaptive_attack_that_breaks_none() -> None:
    """Blum & Hardt's boosting attack against the sequential method: the developer sees one
    bit per use (not the stopping time)."""
    steps = 100
    broken, _ = adaptive_attack("none", steps, trials=30, seed=1, reliability=REL, method="sequential")
    assert not within_delta(broken, 30), broken
    held, _ = adaptive_attack("full", steps, trials=8, seed=2, reliability=REL, method="sequential")
    assert within_delta(held, 8), held


def test_sequential_stops_early_and_reports_what_it_consumed() -> None:
    """n > 0.9 +/- 0.01 at 0.9999, full, H 32: the plan states the worst case and the
    expected labels at true 0.92, at most a third of the paper's 156,956; a decision at true
    0.92 consumes about that many labels, and says so in the verdict (for the ledger)."""
    s = sample_size("n > 0.9 +/- 0.01", 0.9999, "full", 32, "sequential")
    paper = sample_size("n > 0.9 +/- 0.01", 0.9999, "full", 32, "hoeffding").labels
    exact = sample_size("n > 0.9 +/- 0.01", 0.9999, "full", 32, "exact").labels
    assert s.clauses[0].params["expected_at"] == pytest.approx(0.92)
    assert s.expected_labels <= paper / 3 and s.expected_labels < exact / 2 < s.labels
    d = s.to_dict()
    assert d["expected_labels"] == s.expected_labels and d["labels"] == s.labels
    rng = np.random.default_rng(0)
    used = []
    for _ in range(5):
        pred = (rng.random(s.rows) < 0.92).astype(np.int8)
        v = decide("n > 0.9 +/- 0.01", np.ones(s.rows, dtype=np.int8), pred, reliability=0.9999,
                   adaptivity="full", steps=32, mode="fp-free", plan=s)
        assert v.raw == "pass" and v.labels_consumed == v.samples_used < s.rows
        assert v.to_dict()["labels_consumed"] == v.labels_consumed
        assert Verdict.from_dict(v.to_dict()) == v
        used.append(v.labels_consumed)
    assert np.mean(used) <= paper / 3


def test_undetermined_after_n_rows_uses_the_fixed_n_half() -> None:
    """At the threshold the test rarely stops: the verdict then comes from the fixed-N bound
    on exactly the plan's N rows, and every row was consumed."""
    s = sample_size("n > 0.8 +/- 0.05", REL, "none", H, "sequential")
    rng = np.random.default_rng(5)
    extra = s.rows + 500  # more rows than planned: the scan still ends at N
    pred = (rng.random(extra) < 0.8).astype(np.int8)
    v = decide("n > 0.8 +/- 0.05", np.ones(extra, dtype=np.int8), pred, reliability=REL, adaptivity="none",
               steps=H, mode="fp-free", plan=s)
    if v.samples_used == s.rows:
        assert v.clauses[0].samples == s.rows
    assert v.samples_used <= s.rows
