"""Labels on demand decide exactly as a fully labelled test set (seeded): the technique is the
existing ``paired+active`` over the planned rows, so its failure rate is the full-label one
(tests/estimator/test_simulation.py); here the identity of the verdicts is checked, rows by
id in a shuffled labels file, and the negative control: a disagreeing row without a label is
never decided."""

from __future__ import annotations

import numpy as np
import pytest

from easeml_buildbot.config import parse_config
from easeml_buildbot.custody.labels import LabelsFile, normalize_ids
from easeml_buildbot.estimator.decision import DecisionError, decide
from easeml_buildbot.runner import on_demand

CFG = parse_config("condition: d < 0.2 +/- 0.05 /\\ n - o > 0.0 +/- 0.05\nreliability: 0.9\n"
                   "adaptivity: full\nsteps: 2\nlabels: data/labels.csv.gpg\n")


def _rows(rng, n, n_right, d):
    y = rng.integers(0, 5, n)
    new = np.where(rng.random(n) < n_right, y, (y + 1) % 5)
    old = np.where(rng.random(n) < d, np.where(new == y, (y + 2) % 5, y), new)  # disagree on about d
    return y, new, old


def test_the_verdict_is_the_fully_labelled_one_for_every_seed():
    plan = CFG.required_samples()
    assert [c.technique for c in plan.clauses] == ["binomial", "paired+active"]
    n, wins, fails = plan.rows, 0, 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        y, new, old = _rows(rng, n, rng.uniform(0.7, 0.95), rng.uniform(0.05, 0.25))
        ids = normalize_ids([f"r{seed}-{i}" for i in range(n)])
        differ = new != old
        order = rng.permutation(np.flatnonzero(differ))  # the owners' file: any order, by id
        labels = LabelsFile("l", {ids[i]: int(y[i]) for i in order})
        kind, out = on_demand.score(CFG, plan, ids, new, old, labels, decide=decide)
        assert kind == "scored"
        full = decide(CFG.condition, y, new, old, reliability=0.9, adaptivity="full", steps=2,
                      mode="fp-free", plan=plan)
        v = out["verdict"]
        assert v["outcome"] == full.outcome and v["raw"] == full.raw
        assert [c["interval"] for c in v["clauses"]] == [[c.lower, c.upper] for c in full.clauses]
        assert v["labels_consumed"] == int(differ.sum())
        wins += full.raw == "pass"
        fails += full.raw == "fail"
    assert wins and fails  # both outcomes were exercised


def test_a_missing_label_is_asked_for_never_decided():
    plan = CFG.required_samples()
    rng = np.random.default_rng(7)
    y, new, old = _rows(rng, plan.rows, 0.9, 0.05)  # d clearly below 0.2: the d clause passes
    ids = normalize_ids([f"q{i}" for i in range(plan.rows)])
    differ = np.flatnonzero(new != old)
    labels = LabelsFile("l", {ids[i]: int(y[i]) for i in differ[1:]})
    kind, out = on_demand.score(CFG, plan, ids, new, old, labels, decide=decide)
    assert kind == "labels_needed" and out["labels_needed"]["ids"] == [ids[differ[0]]]
    # negative control: deciding anyway with that row unlabelled is refused by the estimator
    y_partial = np.asarray([int(v) if i in set(differ[1:]) else None for i, v in enumerate(y)], dtype=object)
    with pytest.raises(DecisionError, match="no label but the two models disagree"):
        decide(CFG.condition, y_partial, new, old, reliability=0.9, adaptivity="full", steps=2,
               mode="fp-free", plan=plan)


def test_config_refuses_conditions_that_need_every_label():
    from easeml_buildbot.config import ConfigError

    with pytest.raises(ConfigError, match=r"\.easeml\.yml:2: key 'labels': labels on demand need"):
        parse_config("condition: n > 0.8 +/- 0.05\nlabels: data/labels.csv.gpg\n")
    assert CFG.labelling == "active" and CFG.split_column == "id"
    assert CFG.required_samples().labels < CFG.required_samples().rows


def test_a_model_that_disagrees_too_often_fails_without_asking_for_labels():
    """The d clause needs no labels: when it fails (or is unknown under fp-free) the condition
    fails whatever n - o is, so the owners are not asked to label a flood of rows that a
    developer's model made disagree on purpose. Under fn-free an unknown d clause decides
    nothing: the labels are needed (the control)."""
    plan = CFG.required_samples()
    rng = np.random.default_rng(11)
    ids = normalize_ids([f"z{i}" for i in range(plan.rows)])
    y, new, old = _rows(rng, plan.rows, 0.9, 0.6)
    kind, out = on_demand.score(CFG, plan, ids, new, old, None, decide=decide)
    v = out["verdict"]
    assert kind == "scored" and v["outcome"] == v["raw"] == "fail" and v["labels_consumed"] == 0
    assert [c["outcome"] for c in v["clauses"]] == ["fail", "unknown"]
    assert v["clauses"][1]["interval"] == [-1.0, 1.0]
    fn_free = parse_config("condition: d < 0.2 +/- 0.05 /\\ n - o > 0.0 +/- 0.05\nreliability: 0.9\n"
                           "adaptivity: full\nsteps: 2\nmode: fn-free\nlabels: data/labels.csv.gpg\n")
    plan = fn_free.required_samples()
    for d, want in ((0.6, "scored"), (0.2, "labels_needed")):  # d = p: the d clause is unknown
        rng = np.random.default_rng(3)
        y, new, old = _rows(rng, plan.rows, 0.9, d)
        kind, out = on_demand.score(fn_free, plan, ids[: plan.rows], new, old, None, decide=decide)
        assert kind == want, (d, out)
