"""The adaptive attacker shared by the estimator simulations (fixed-N and sequential)."""

from __future__ import annotations

import numpy as np

from easeml_buildbot.estimator.condition import parse_condition
from easeml_buildbot.estimator.decision import decide
from easeml_buildbot.estimator.samples import sample_size


def adaptive_attack(adaptivity: str, steps: int, trials: int, seed: int, *, reliability: float,
                    method: str = "hoeffding") -> tuple[int, int]:
    """A developer who learns from every verdict (Blum & Hardt's boosting attack).

    Labels are independent of anything a model sees, so every model has true accuracy
    exactly 0.5 and the condition ``n > 0.45 +/- 0.05`` is true: a raw *fail* is wrong.
    With the planned N, a random guesser passes iff its test accuracy is above 0.5, so
    each verdict leaks one bit about the test labels without being wrong. After
    ``steps - 1`` such guesses the developer submits the vote that disagrees with the
    guessers that passed and agrees with those that failed: a fixed function of the row,
    still of true accuracy 0.5, whose accuracy *on this test set* is far below 0.5.

    Returns (wrong verdicts among ``trials`` runs of the attack, planned rows)."""
    cond = parse_condition("n > 0.45 +/- 0.05")
    plan = sample_size(cond, reliability, adaptivity, steps, method)
    n = plan.rows  # the worst case for a sequential method, which may stop before
    rng = np.random.default_rng(seed)
    kw = dict(reliability=reliability, adaptivity=adaptivity, steps=steps, mode="fp-free", plan=plan)
    failures = 0
    for _ in range(trials):
        y = rng.integers(0, 2, n, dtype=np.int8)
        votes = np.zeros(n, dtype=np.int32)
        wrong = False
        for _ in range(steps - 1):
            guess = rng.integers(0, 2, n, dtype=np.int8)
            v = decide(cond, y, guess, **kw)
            wrong |= v.raw == "fail"
            sign = 1 if v.raw == "pass" else -1
            votes += sign * np.where(guess == 1, -1, 1)
        v = decide(cond, y, (votes > 0).astype(np.int8), **kw)
        wrong |= v.raw == "fail"
        failures += wrong
    return failures, n
