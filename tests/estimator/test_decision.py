"""Decisions: scoring, intervals consistent with the plan, three-valued verdicts and modes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from easeml_buildbot.estimator.decision import DecisionError, Verdict, clopper_pearson, decide
from easeml_buildbot.estimator.samples import sample_size

KW = dict(reliability=0.9999, adaptivity="full", steps=32)


def _labels_and_predictions(n: int, acc: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels in {0,1,2} and predictions right on exactly round(acc * n) rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    pred = (y + 1) % 3
    right = rng.permutation(n)[: round(acc * n)]
    pred[right] = y[right]
    return y, pred


def test_estimates_are_accuracies_and_disagreement() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    new = np.array([0, 1, 2, 0, 1, 2, 1, 2])  # 6/8 right
    old = np.array([0, 1, 0, 1, 1, 2, 1, 1])  # 5/8 right, differs from new on 3
    v = decide("n - o > 0 +/- 0.1 /\\ d < 0.9 +/- 0.1", y, new, old, mode="fp-free", **KW)
    assert v.estimates == {"n": 0.75, "o": 0.625, "d": 0.375}
    assert v.clauses[0].estimate == pytest.approx(0.125)
    assert v.samples_used == 8
    assert not v.enough_samples and v.notes  # 8 rows are far too few: said so
    assert v.raw == "unknown" and v.outcome == "fail"


def test_pass_fail_unknown_and_modes() -> None:
    s = sample_size("n > 0.8 +/- 0.05", method="exact", **KW)
    n = s.labels
    for acc, raw in ((0.9, "pass"), (0.7, "fail"), (0.81, "unknown")):
        y, p = _labels_and_predictions(n, acc)
        fp = decide("n > 0.8 +/- 0.05", y, p, mode="fp-free", method="exact", **KW)
        fn = decide("n > 0.8 +/- 0.05", y, p, mode="fn-free", method="exact", **KW)
        assert fp.raw == fn.raw == raw
        assert fp.outcome == ("fail" if raw == "unknown" else raw)
        assert fn.outcome == ("pass" if raw == "unknown" else raw)
        assert fp.deciding_clause == (None if raw == "pass" else 0)


def test_less_than_clause_is_mirrored() -> None:
    y, p = _labels_and_predictions(8000, 0.6)
    assert decide("n < 0.7 +/- 0.05", y, p, mode="fp-free", **KW).raw == "pass"
    assert decide("n < 0.5 +/- 0.05", y, p, mode="fp-free", **KW).raw == "fail"
    assert decide("-1 * n > -0.7 +/- 0.05", y, p, mode="fp-free", **KW).raw == "pass"


@pytest.mark.parametrize("method", ["hoeffding", "exact"])
def test_interval_width_matches_tolerance_at_planned_n(method: str) -> None:
    """With exactly the planned samples the clause interval is (at most) +/- eps and an
    estimate beyond eps from the threshold is decided; more samples narrow it."""
    cond = "n > 0.8 +/- 0.05"
    n = sample_size(cond, method=method, **KW).labels
    y, p = _labels_and_predictions(n, 0.8)
    c = decide(cond, y, p, mode="fp-free", method=method, **KW).clauses[0]
    assert c.outcome == "unknown"
    if method == "hoeffding":  # symmetric: exactly the tolerance
        assert c.estimate - c.lower == pytest.approx(0.05, rel=1e-3)
        assert c.upper - c.estimate == pytest.approx(0.05, rel=1e-3)
    else:  # exact bounds are asymmetric, but narrower than Hoeffding's at the same N and delta
        w = math.sqrt(-sample_size(cond, method=method, **KW).clauses[0].log_delta / (2 * n))
        assert c.estimate - c.lower < w and c.upper - c.estimate < w
    y2, p2 = _labels_and_predictions(n, 0.8 + 0.05 + 2 / n)
    assert decide(cond, y2, p2, mode="fp-free", method=method, **KW).raw == "pass"
    y3, p3 = _labels_and_predictions(n, 0.8 - 0.05 - 2 / n)
    assert decide(cond, y3, p3, mode="fp-free", method=method, **KW).raw == "fail"
    y4, p4 = _labels_and_predictions(4 * n, 0.8)
    c4 = decide(cond, y4, p4, mode="fp-free", method=method, **KW).clauses[0]
    assert c4.upper - c4.lower < 0.6 * (c.upper - c.lower)


def test_bennett_interval() -> None:
    cond = "d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01"
    s = sample_size(cond, method="bennett", **KW)
    n = s.labels
    rng = np.random.default_rng(3)
    y = np.ones(n, dtype=int)
    old = (rng.random(n) < 0.8).astype(int)
    new = old.copy()
    idx = rng.permutation(n)[: int(0.05 * n)]
    new[idx] = 1 - new[idx]
    v = decide(cond, y, new, old, mode="fp-free", method="bennett", **KW)
    c = v.clauses[1]
    assert c.technique == "bennett-paper"
    assert c.estimate - c.lower == pytest.approx(0.01, rel=1e-3)  # planned N -> width eps
    assert v.clauses[0].outcome == "pass"  # d = 0.05 < 0.1


def test_clopper_pearson_is_one_sided_exact() -> None:
    from scipy import stats

    lo, hi = clopper_pearson(30, 100, math.log(0.05))
    assert stats.binom.sf(29, 100, lo) == pytest.approx(0.05, rel=1e-6)
    assert stats.binom.cdf(30, 100, hi) == pytest.approx(0.05, rel=1e-6)
    assert clopper_pearson(0, 10, math.log(0.05))[0] == 0.0
    assert clopper_pearson(10, 10, math.log(0.05))[1] == 1.0


def test_verdict_round_trips_through_json() -> None:
    import json

    y, p = _labels_and_predictions(5000, 0.85)
    v = decide("n - o > 0.01 +/- 0.05 /\\ d < 0.5 +/- 0.1", y, p, np.roll(p, 1), mode="fn-free", **KW)
    d = json.loads(json.dumps(v.to_dict()))
    assert Verdict.from_dict(d) == v
    assert set(d) >= {"outcome", "raw", "estimates", "intervals", "samples_used", "clauses", "deciding_clause"}


def test_string_labels_and_column_vectors() -> None:
    y = np.array(["cat", "dog", "cat", "eel"])
    v = decide("n > 0.5 +/- 0.4", y, np.array([["cat"], ["dog"], ["dog"], ["eel"]]), mode="fn-free",
               reliability=0.9, adaptivity="none", steps=1)
    assert v.estimates["n"] == 0.75


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(new_predictions=[1, 0]), "2 predictions for 3 labels"),
        (dict(new_predictions=[1, 0, 1], old_predictions=[1]), "old model gave 1"),
        (dict(new_predictions=[1, 0, 1], condition="n - o > 0 +/- 0.1"), "no old-model predictions"),
        (dict(new_predictions=[1, 0, 1], mode="strict"), "mode"),
        (dict(labels=[], new_predictions=[]), "no test samples"),
    ],
)
def test_bad_inputs(kwargs: dict, message: str) -> None:
    args = dict(condition="n > 0.5 +/- 0.1", labels=[1, 0, 1], mode="fp-free")
    args.update(kwargs)
    with pytest.raises(DecisionError, match=message):
        decide(args.pop("condition"), args.pop("labels"), args.pop("new_predictions"),
               args.pop("old_predictions", None), **args, **KW)


def test_betting_decides_rare_disagreements_and_stays_consistent() -> None:
    """When two models disagree on 3% of rows, betting decides n - o > 0 with 20k rows where
    the worst-case bounds (planned for 600k) cannot; its interval lies inside the plan's
    bound at half the share (it is their intersection)."""
    rng = np.random.default_rng(1)
    n = 20000
    y = rng.integers(0, 3, n)
    old = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
    new = old.copy()
    fix = rng.random(n) < 0.03
    new[fix] = y[fix]
    cond = "n - o > 0 +/- 0.01"
    ex = decide(cond, y, new, old, mode="fp-free", method="exact", **KW)
    bt = decide(cond, y, new, old, mode="fp-free", method="betting", **KW)
    assert ex.raw == "unknown" and bt.raw == "pass"
    c = bt.clauses[0]
    assert c.technique == "paired+betting" and c.lower > 0
    half = sample_size(cond, method="betting", **KW).clauses[0].log_delta - math.log(2)
    w = 2 * math.sqrt(-half / (2 * n))  # Hoeffding at half the share: the exact paired half is inside it
    assert c.estimate - w - 1e-12 <= c.lower and c.upper <= c.estimate + w + 1e-12
    assert bt.samples_needed >= ex.samples_needed


def test_active_labelling_needs_labels_only_where_models_disagree() -> None:
    rng = np.random.default_rng(4)
    n = 30000
    y = rng.integers(0, 3, n)
    old = np.where(rng.random(n) < 0.75, y, (y + 1) % 3)
    new = old.copy()
    u = rng.random(n)
    new[u < 0.04] = y[u < 0.04]
    new[(u >= 0.04) & (u < 0.05)] = (y[(u >= 0.04) & (u < 0.05)] + 2) % 3
    cond = "d < 0.1 +/- 0.02 /\\ n - o > 0 +/- 0.02"
    full = decide(cond, y, new, old, mode="fp-free", method="bennett", **KW)
    partial = np.where(new != old, y.astype(float), np.nan)  # labels only on disagreements
    act = decide(cond, partial, new, old, mode="fp-free", method="bennett", **KW)
    # n - o and d, and so every clause interval, are the same as with all labels
    for a, f in zip(act.clauses, full.clauses):
        assert (a.estimate, a.lower, a.upper) == pytest.approx((f.estimate, f.lower, f.upper), abs=1e-12)
        assert a.outcome == f.outcome
    assert act.estimates["n"] is None and act.estimates["o"] is None and act.estimates["d"] == full.estimates["d"]
    assert any("active labelling" in note for note in act.notes)
    # an unlabelled disagreement, or a clause on n alone, is refused
    holes = partial.copy()
    holes[np.flatnonzero(new != old)[0]] = np.nan
    with pytest.raises(DecisionError, match="no label but the two models disagree"):
        decide(cond, holes, new, old, mode="fp-free", **KW)
    with pytest.raises(DecisionError, match="needs a label on every row"):
        decide("n > 0.5 +/- 0.1", partial, new, old, mode="fp-free", **KW)
