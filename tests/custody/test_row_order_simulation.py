"""Seeded simulations of a test set stored sorted by class, through the real dataset path.

Each trial writes a class-sorted CSV whose rows the "model" gets right or wrong by file
position (right on the first 80 %), encrypts it with a throw-away service key (real gpg:
every trial is a new ciphertext, hence a new row order), decrypts it with
:func:`decrypted_dataset`, predicts from the features it was given (in the order given) and
decides the condition at reliability 0.9. The true value sits exactly on the condition's
boundary, so a ``pass`` is a wrong verdict; it must happen in fewer than δ = 10 % of trials
for every method. The negative control keeps file order (the old "first N rows" rule): it
must be wrong far more often than δ, which shows the simulation can see the flaw.

A method needing N rows uses the first N rows of the full order, which is what
``decrypted_dataset(rows=N)`` returns (tests/custody/test_custody_dataset.py checks that
prefix property), so one decryption serves every method of a trial.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from easeml_buildbot.custody import rows as rows_mod
from easeml_buildbot.custody.dataset import decrypted_dataset, encrypt_dataset
from easeml_buildbot.estimator.decision import EmptyIntervalError, decide
from easeml_buildbot.estimator.samples import sample_size

RELIABILITY = 0.9
DELTA = 1 - RELIABILITY
TRIALS = 30


@dataclass(frozen=True)
class Scenario:
    name: str
    condition: str
    rows: int            # rows in the file
    methods: tuple[str, ...]

    def write(self, path: Path, rng: np.random.Generator) -> None:
        """Labels sorted by class; the new model is right on the first 80 % of the file (and
        the old model, for ``n - o``, right where the new one is wrong, in the last rows)."""
        n = self.rows
        y = np.sort(rng.integers(0, 10, size=n))
        pos = np.arange(n)
        if "o" in self.condition:  # d = 10 %, n - o = 0 exactly: the new model wins the first half
            k = n // 10 // 2 * 2
            new = y.copy()
            old = y.copy()
            new[-k // 2:] = (y[-k // 2:] + 1) % 10              # new wrong on the last k/2 rows
            old[: k // 2] = (y[: k // 2] + 1) % 10             # old wrong on the first k/2 rows
        else:  # n = 80 % exactly
            new = np.where(pos < int(0.8 * n), y, (y + 1) % 10)  # 0.8 exactly for n = 1000
            old = y
        assert "o" in self.condition or np.mean(new == y) <= 0.8  # the condition is false
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["x", "new", "old", "label"])
            w.writerows(zip(np.round(rng.normal(size=n), 4), new, old, y))


SCENARIOS = (
    Scenario("first N of a longer file", "n > 0.8 +/- 0.05", 1000, ("hoeffding", "exact", "betting", "auto")),
    Scenario("all rows, sequential bound", "n > 0.8 +/- 0.05", 197, ("betting",)),
    Scenario("n - o, first N of a longer file", "d < 0.2 +/- 0.05 /\\ n - o > 0 +/- 0.05", 1300, ("bennett",)),
)


def _model(features: Path, column: str) -> np.ndarray:
    """What a model answers: it only sees the features file, rows in the order given."""
    with open(features, newline="") as fh:
        r = csv.DictReader(fh)
        assert "label" not in (r.fieldnames or [])
        return np.asarray([int(row[column]) for row in r])


def _simulate(keys, tmp_path: Path, seed: int, trials: int) -> dict[tuple[str, str], dict[str, int]]:
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, str], dict[str, int]] = {}
    for _trial in range(trials):
        for sc in SCENARIOS:
            plain, enc = tmp_path / "t.csv", tmp_path / "t.csv.gpg"
            sc.write(plain, rng)
            encrypt_dataset(keys.public, plain, enc)
            with decrypted_dataset(enc, keys.private) as ds:
                y, new, old = ds.labels, _model(ds.features_path, "new"), _model(ds.features_path, "old")
            for method in sc.methods:
                plan = sample_size(sc.condition, RELIABILITY, "none", 1, method)
                assert plan.rows <= sc.rows
                m = plan.rows
                tally = out.setdefault((sc.name, method), {"wrong": 0, "empty": 0, "trials": 0})
                tally["trials"] += 1
                try:
                    v = decide(sc.condition, y[:m], new[:m], old[:m] if "o" in sc.condition else None,
                               reliability=RELIABILITY, adaptivity="none", steps=1, mode="fp-free",
                               method=method, plan=plan)
                except EmptyIntervalError:
                    tally["empty"] += 1
                    continue
                tally["wrong"] += v.outcome == "pass"  # the condition is false: pass is wrong
    return out


def test_sorted_test_set_every_method_fails_below_delta(service_keys, tmp_path):
    """Below δ pooled over the six (scenario, method) cells (180 trials), and per cell no
    more failures than Binomial(30, δ) gives with probability 0.999 (a method at exactly δ
    would fail that check in 1 of 1000 runs; the row order is not seeded: gpg picks a new
    session key, hence a new ciphertext id and order, on every encryption)."""
    res = _simulate(service_keys, tmp_path, seed=20261201, trials=TRIALS)
    print(res)
    bad = sum(t["wrong"] + t["empty"] for t in res.values())
    assert len(res) == 6 and bad / (6 * TRIALS) < DELTA, res
    per_cell = int(stats.binom.ppf(0.999, TRIALS, DELTA))
    for (scenario, method), t in res.items():
        assert t["trials"] == TRIALS
        assert t["wrong"] + t["empty"] <= per_cell, (scenario, method, res)


def test_negative_control_file_order_is_wrong_far_more_than_delta(service_keys, tmp_path, monkeypatch):
    """The old rule (rows in file order, the first N): every method passes the false
    condition far more often than δ (betting even when it reads every row, where the
    betting half's lower bound lands above the binomial half's upper bound: the empty
    interval that used to come out as a pass)."""
    def file_order(self, k):
        return np.arange(self.count, self.count + k, dtype=np.uint64)

    monkeypatch.setattr(rows_mod.RowSelection, "_next_ranks", file_order)
    res = _simulate(service_keys, tmp_path, seed=20261202, trials=10)
    print(res)
    for (scenario, method), t in res.items():
        assert (t["wrong"] + t["empty"]) / t["trials"] > 3 * DELTA, (scenario, method, res)
