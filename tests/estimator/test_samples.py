"""Sample sizes: the published ease.ml/ci numbers, firstChange, Bennett, and the exact method."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from easeml_buildbot.estimator.condition import parse_condition
from easeml_buildbot.estimator.samples import (
    SampleSizeError,
    bennett_h,
    binomial_samples,
    log_use_delta,
    sample_size,
)

# -- published numbers (Renggli et al., MLSys 2019), Hoeffding baseline ----------------


def test_published_one_variable_full() -> None:
    assert sample_size("n > 0.8 +/- 0.05", 0.9999, "full", 32, "hoeffding").labels == 6279


def test_published_eps_001_none() -> None:
    assert sample_size("n > 0.5 +/- 0.01", 0.9999, "none", 32, "hoeffding").labels == 63381


def test_published_eps_001_full() -> None:
    assert abs(sample_size("n > 0.5 +/- 0.01", 0.9999, "full", 32, "hoeffding").labels - 156955) <= 1


def test_published_difference() -> None:
    s = sample_size("n - o > 0.1 +/- 0.1", 0.99, "full", 32, "hoeffding")
    assert s.labels == 5496
    assert s.clauses[0].technique == "hoeffding-split"


def test_baseline_formula_splits_eps_and_delta() -> None:
    # a clause with k variables: each within eps/k at delta/k, c^2 scaling for a coefficient
    s = sample_size("2 * n - o > 0.1 +/- 0.1", 0.99, "none", 10, "hoeffding")
    want = 4 * math.log(2 * 10 / 0.01) / (2 * 0.05**2)
    assert s.labels == math.ceil(want - 1e-9)
    # m clauses split delta evenly
    s2 = sample_size("n > 0.8 +/- 0.05 /\\ o > 0.7 +/- 0.05", 0.99, "none", 10, "hoeffding")
    assert s2.labels == math.ceil(math.log(2 * 10 / 0.01) / (2 * 0.05**2))


def test_first_change_uses_delta_over_h_like_none() -> None:
    # the original ease.ml/ci returned 0 samples for firstChange; it is a union over H uses
    none = sample_size("n > 0.5 +/- 0.01", 0.9999, "none", 32, "hoeffding")
    first = sample_size("n > 0.5 +/- 0.01", 0.9999, "firstChange", 32, "hoeffding")
    hybrid = sample_size("n > 0.5 +/- 0.01", 0.9999, "hybrid", 32, "hoeffding")
    assert first.labels == none.labels == hybrid.labels == 63381
    assert first.adaptivity == "firstChange"
    assert sample_size("n > 0.5 +/- 0.01", 0.9999, "firstChange", 32).labels > 0


def test_full_grows_linearly_in_h_none_logarithmically() -> None:
    f = [sample_size("n > 0.8 +/- 0.05", 0.99, "full", h, "hoeffding").labels for h in (8, 16, 32)]
    assert f[1] - f[0] == pytest.approx(f[2] - f[1] - 8 * math.log(2) / (2 * 0.05**2), abs=2)
    n = [sample_size("n > 0.8 +/- 0.05", 0.99, "none", h, "hoeffding").labels for h in (8, 16, 32)]
    assert n[1] - n[0] == pytest.approx(n[2] - n[1], abs=2)


def test_large_h_does_not_underflow() -> None:
    assert log_use_delta(0.9999, "full", 5000) == pytest.approx(math.log(1e-4) - 5000 * math.log(2))
    s = sample_size("n > 0.8 +/- 0.05", 0.9999, "full", 5000)
    assert s.labels > 0 and math.isfinite(s.clauses[0].log_delta)


# -- Bennett (the paper's optimisation for small d) -----------------------------------

BENNETT = "d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01"


@pytest.mark.parametrize("adaptivity, log_h", [("none", lambda h: math.log(h)), ("full", lambda h: h * math.log(2))])
def test_bennett_paper_formula(adaptivity: str, log_h) -> None:
    s = sample_size(BENNETT, 0.9999, adaptivity, 32, "bennett")
    p, eps, delta = 0.1, 0.01, 1 - 0.9999
    h = (1 + eps / p) * math.log(1 + eps / p) - eps / p
    want = (log_h(32) - math.log(delta / 4)) / (p * h)
    assert s.clauses[1].technique == "bennett-paper"
    assert s.labels == math.ceil(want - 1e-9)
    # the d-filter needs predictions only
    assert s.clauses[0].labels == 0 and s.clauses[0].unlabeled > 0
    assert s.unlabeled == s.clauses[0].unlabeled
    assert s.labels < sample_size(BENNETT, 0.9999, adaptivity, 32, "hoeffding").labels / 5


def test_published_bennett_numbers() -> None:
    """MLSys'19 §5: with d < 0.1, reliability 0.9999 and a one-point tolerance, 'only 29K
    samples for 32 non-adaptive steps and 67K samples for 32 fully-adaptive steps'."""
    assert 29_000 <= sample_size(BENNETT, 0.9999, "none", 32, "bennett").labels < 30_000
    assert 67_000 <= sample_size(BENNETT, 0.9999, "full", 32, "bennett").labels < 68_000


def test_bennett_h() -> None:
    assert bennett_h(0.0) == 0.0
    assert bennett_h(1.0) == pytest.approx(2 * math.log(2) - 1)
    assert bennett_h(1e-4) == pytest.approx(1e-8 / 2, rel=1e-3)


def test_active_labelling_reports_labelled_and_unlabelled() -> None:
    full = sample_size(BENNETT, 0.9999, "full", 32, "bennett")
    active = sample_size(BENNETT, 0.9999, "full", 32, "bennett", labelling="active")
    c = active.clauses[1]
    assert c.technique == "bennett-paper+active"
    assert c.unlabeled == full.labels  # every sample needs predictions of both models
    assert c.labels == math.ceil(0.1 * full.labels)  # only the disagreements need labels
    assert active.labels == c.labels and active.unlabeled == max(full.labels, full.unlabeled)
    assert c.params["disagreements_high"] == stats.binom.ppf(0.999, full.labels, 0.1)


def test_bennett_needs_the_pattern() -> None:
    with pytest.raises(SampleSizeError, match="does not apply"):
        sample_size("n - o > 0.02 +/- 0.01", 0.9999, "full", 32, "bennett")
    with pytest.raises(SampleSizeError, match="active labelling"):
        sample_size("n > 0.8 +/- 0.05", 0.9999, "full", 32, labelling="active")
    with pytest.raises(SampleSizeError, match="only clauses on 'd' and on 'n - o'"):
        sample_size(BENNETT + " /\\ n > 0.8 +/- 0.05", 0.9999, "full", 32, labelling="active")


# -- the exact method and auto ----------------------------------------------------------


def test_exact_binomial_is_minimal_and_sufficient() -> None:
    log_d = math.log(0.01)
    n = binomial_samples(0.8, 0.05, log_d)

    def worst(n: int) -> float:
        up = stats.binom.sf(math.floor(n * 0.85 - 1e-9), n, 0.8)
        lo = stats.binom.cdf(math.ceil(n * 0.75 + 1e-9) - 1, n, 0.8)
        return max(up, lo)

    assert worst(n) <= 0.01
    assert all(worst(m) <= 0.01 for m in range(n, n + 50))
    assert worst(n - 1) > 0.01 or worst(n - 2) > 0.01
    # far fewer than Hoeffding's for a threshold away from 1/2 ...
    assert n < 0.7 * math.log(100) / (2 * 0.05**2)


def test_exact_never_worse_than_hoeffding() -> None:
    for cond in ("n > 0.5 +/- 0.01", "n > 0.8 +/- 0.05", "o < 0.3 +/- 0.1", "n - o > 0.1 +/- 0.1",
                 BENNETT, "n > 0.99 +/- 0.01", "-2 * n < -1.6 +/- 0.1"):
        for adaptivity in ("none", "full"):
            h = sample_size(cond, 0.999, adaptivity, 16, "hoeffding")
            e = sample_size(cond, 0.999, adaptivity, 16, "exact")
            assert e.labels <= h.labels and e.unlabeled <= max(h.unlabeled, h.labels), cond


def test_auto_picks_fewest_labels() -> None:
    s = sample_size(BENNETT, 0.9999, "full", 32)
    assert s.method == min(s.candidates, key=s.candidates.get)
    assert set(s.candidates) == {"hoeffding", "bennett", "exact", "betting"}
    assert s.candidates["betting"] >= s.candidates["exact"]  # betting plans at half the share
    assert s.labels == s.candidates[s.method]
    s1 = sample_size("n > 0.8 +/- 0.05", 0.9999, "full", 32, "auto")
    assert s1.method == "exact" and s1.labels < 6279


def test_to_dict_has_contract_fields() -> None:
    d = sample_size(BENNETT, 0.9999, "full", 32).to_dict()
    assert {"labels", "unlabeled", "method", "clauses"} <= set(d)
    assert len(d["clauses"]) == 2 and {"technique", "labels", "unlabeled", "delta"} <= set(d["clauses"][0])


@pytest.mark.parametrize(
    "args, message",
    [
        ((1.0, "full", 32), "reliability"),
        ((0.0, "full", 32), "reliability"),
        ((0.9, "sometimes", 32), "adaptivity"),
        ((0.9, "full", 0), "steps"),
        ((0.9, "full", 2.5), "steps"),
    ],
)
def test_bad_arguments(args, message: str) -> None:
    with pytest.raises(SampleSizeError, match=message):
        sample_size(parse_condition("n > 0.8 +/- 0.05"), *args)
    with pytest.raises(SampleSizeError, match="method"):
        sample_size("n > 0.8 +/- 0.05", 0.9, "full", 3, "magic")


def test_exact_switches_to_chernoff_where_floats_underflow() -> None:
    """2^-H underflows scipy's binomial tails for H in the thousands: the exact method then
    uses the (rigorous) Chernoff bound, and keeps growing linearly in H like the baseline."""
    from easeml_buildbot.estimator.decision import chernoff_bounds, clopper_pearson

    e = {h: sample_size("n > 0.8 +/- 0.05", 0.9999, "full", h, "exact").labels for h in (500, 1000, 2000, 3000)}
    hoef = {h: sample_size("n > 0.8 +/- 0.05", 0.9999, "full", h, "hoeffding").labels for h in e}
    assert all(e[h] < hoef[h] for h in e)
    assert e[3000] - e[2000] == pytest.approx(e[2000] - e[1000], rel=0.02)
    # Chernoff bounds are valid but looser than Clopper-Pearson where both compute
    for k, n in ((30, 100), (5, 1000), (990, 1000)):
        c_lo, c_hi = chernoff_bounds(k, n, math.log(1e-6))
        e_lo, e_hi = clopper_pearson(k, n, math.log(1e-6))
        assert c_lo <= e_lo <= k / n <= e_hi <= c_hi


def test_exact_plan_for_huge_steps_needs_no_saw_tooth_scan() -> None:
    """Where the exact method falls back to Chernoff the tail is N times a constant, monotone
    in N, so no window of N is scanned: steps 10^8 (a typo away from 10) plans in a 2 GiB
    address space instead of allocating a window of ~10^9 candidate N."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import math, resource\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from easeml_buildbot.estimator.samples import _chernoff_log_tail, log_use_delta, sample_size\n"
            "s = sample_size('n > 0.8 +/- 0.05', 0.9999, 'full', 10**8, 'exact')\n"
            "c = s.clauses[0]\n"
            "tail = lambda n: float(_chernoff_log_tail(n, 0.8, 0.05))\n"
            "assert c.technique == 'binomial' and c.log_delta == log_use_delta(0.9999, 'full', 10**8)\n"
            "assert tail(s.labels) <= c.log_delta < tail(s.labels - 1), s.labels\n"
            "print(s.labels)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OPENBLAS_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert int(p.stdout) < sample_size("n > 0.8 +/- 0.05", 0.9999, "full", 10**8, "hoeffding").labels


@pytest.mark.parametrize("condition", ["1e300 * n > 0.5 +/- 0.1", "n > 0.5 +/- 1e-200"])
def test_uncomputable_sizes_are_a_clear_error(condition):
    """Overflow or division by zero inside a bound is the user's tolerance, not a crash."""
    with pytest.raises(SampleSizeError, match="needs more samples than can be computed"):
        sample_size(condition, 0.9999, "full", 32)


def test_k_pass_sizes_between_first_change_and_full() -> None:
    """k-pass retirement: a union over sum_{j<=k} C(H, j) models (H for k = 1, 2^H - 1 for k = H)."""
    from easeml_buildbot.estimator.samples import log_transcripts

    assert math.exp(log_transcripts(1, 32)) == pytest.approx(32)
    assert math.exp(log_transcripts(2, 32)) == pytest.approx(32 + 32 * 31 / 2)
    assert math.exp(log_transcripts(32, 32)) == pytest.approx(2**32 - 1)
    sizes = [sample_size("n > 0.8 +/- 0.05", 0.9999, a, 32, "hoeffding").labels
             for a in ("firstChange", "1-pass", "2-pass", "4-pass", "32-pass", "full")]
    assert sizes[0] == sizes[1] < sizes[2] < sizes[3] < sizes[4] <= sizes[5]
    assert log_use_delta(0.99, "3-pass", 10) == pytest.approx(math.log(0.01) - math.log(10 + 45 + 120))
    with pytest.raises(SampleSizeError, match="k-pass"):
        sample_size("n > 0.8 +/- 0.05", 0.9999, "0-pass", 32)


@pytest.mark.parametrize("condition,method,labelling", [
    ("n > 0.5 +/- 0.2", "auto", "full"),
    ("n - o > 0.02 +/- 0.01", "sequential", "full"),
    ("d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01", "betting", "full"),
    ("d < 0.1 +/- 0.01 /\\ n - o > 0.02 +/- 0.01", "auto", "active"),
])
def test_a_plan_survives_json_and_is_checked_against_its_configuration(condition, method, labelling) -> None:
    """The master plans once and hands the plan to the worker as JSON: it must come back
    equal, and be refused for any other configuration (a changed reliability, adaptivity,
    steps, labelling, method or condition)."""
    import json

    from easeml_buildbot.estimator.samples import SampleSize, SampleSizeError, plan_mismatch

    plan = sample_size(condition, 0.999, "full", 8, method, labelling=labelling)
    back = SampleSize.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.rows == plan.rows
    assert plan_mismatch(back, condition, 0.999, "full", 8, method, labelling) is None
    assert plan_mismatch(back, condition, 0.999, "hybrid" if plan.adaptivity == "firstChange" else "full",
                         8, method, labelling) is None
    for changed in (dict(reliability=0.99), dict(adaptivity="none"), dict(steps=9),
                    dict(labelling="full" if labelling == "active" else "active"),
                    dict(method="hoeffding"), dict(condition=condition.replace("+/- 0.", "+/- 0.0", 1))):
        args = {**dict(condition=condition, reliability=0.999, adaptivity="full", steps=8, method=method,
                       labelling=labelling), **changed}
        assert plan_mismatch(back, **args) is not None, changed
    with pytest.raises(SampleSizeError, match="not a sample-size plan"):
        SampleSize.from_dict({"labels": 3})


def test_clopper_pearson_without_scipy_stats_is_scipy_stats_bit_for_bit() -> None:
    """The worker decides without importing ``scipy.stats`` (tails._beta_ppf): the bounds
    must be exactly ``stats.beta.ppf`` / ``stats.beta.isf``, or a verdict could differ
    from the one the master's tests and simulations checked."""
    from easeml_buildbot.estimator.tails import clopper_pearson

    for n in [*range(1, 60), 71, 151, 505, 5000, 246126]:
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n, *range(0, n + 1, max(1, n // 15))}):
            for log_delta in (math.log(0.05), math.log(1e-6), math.log(0.1 / 2 ** 8 / 3), -30.0):
                a = math.exp(log_delta)
                lo, hi = clopper_pearson(k, n, log_delta)
                assert lo == (0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))), (k, n, log_delta)
                assert hi == (1.0 if k == n else float(stats.beta.isf(a, k + 1, n - k))), (k, n, log_delta)
