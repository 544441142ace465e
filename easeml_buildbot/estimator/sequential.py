"""Sequential evaluation that stops early: anytime-valid betting tests over the rows in order.

For a clause with per-row values ``y_i`` in ``[a, b]`` and threshold C, the capital of a
gambler betting a constant fraction on "μ > C",

    K_t(λ) = prod_{i<=t} (1 + λ (y_i - C)),   0 <= λ < 1/(C - a),

is a non-negative supermartingale when μ <= C, and so is any fixed mixture
``K_t = sum_j w_j K_t(λ_j)``; by Ville's inequality ``P(sup_t K_t >= 1/α) <= α`` (the
method of mixtures; Waudby-Smith & Ramdas 2023, §4, with a discrete mixture of constant
bets). The mirror bet ``1 - λ (y_i - C)`` tests "μ < C". A clause is decided at the first
checkpoint (the end of a batch of rows, in the test set's fixed order) where either capital
reaches ``2/δ_c``; the scan stops as soon as the condition is determined (a clause failed,
or every clause passed). If it is not determined after the plan's ``N`` rows, the clauses
still open are decided by the plan's fixed-N technique on exactly those N rows; each of the
two tests has half the clause's share, so a verdict is wrong with probability at most δ_c.

*Optional continuation* stays valid: the capitals are supermartingales whatever the
stopping rule, so scanning on into more rows (a larger test set, a later continuation) may
reject later without any correction; the fixed-N bound is only ever used at N (it is never
peeked at before).

References
----------
I. Waudby-Smith, A. Ramdas, Estimating means of bounded random variables by betting,
JRSS-B 86(1), 2023. G. Shafer, V. Vovk, Game-Theoretic Foundations for Probability and
Finance, Wiley 2019. J. Ville, Étude critique de la notion de collectif, 1939.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from easeml_buildbot.estimator.condition import Clause

GRID = np.geomspace(1e-4, 0.95, 40)  # bet fractions of the largest admissible bet
BATCHES = 64  # checkpoints over the plan's N rows


def batch_size(n_max: int) -> int:
    return max(1, math.ceil(n_max / BATCHES))


@dataclass
class _Capital:
    """Log capitals of the mixture of constant bets for "μ > c" (sign +1) or "μ < c" (-1)."""

    c: float
    a: float
    b: float
    sign: int

    def __post_init__(self) -> None:
        span = (self.c - self.a) if self.sign > 0 else (self.b - self.c)
        self.lam = GRID / span if span > 0 else np.zeros(0)
        self.log_k = np.zeros(len(self.lam))

    def update(self, y: np.ndarray) -> None:
        if len(self.lam) and len(y):
            # per-row values take a handful of values (indicator sums): sum over them with counts
            vals, counts = np.unique(y, return_counts=True)
            self.log_k += np.log1p(self.sign * np.outer(self.lam, vals - self.c)) @ counts

    def log_mixture(self) -> float:
        if not len(self.lam):
            return -math.inf
        top = float(self.log_k.max())
        return top + math.log(float(np.exp(self.log_k - top).mean()))


def _rejects(y: np.ndarray, m: float, a: float, b: float, sign: int, log_level: float) -> bool:
    cap = _Capital(m, a, b, sign)
    cap.update(y)
    return cap.log_mixture() >= log_level


def bounds_at(y: np.ndarray, a: float, b: float, log_half: float, tol: float = 1e-4) -> tuple[float, float]:
    """The confidence-sequence bounds at time ``len(y)``: the largest m rejected by "μ > m"
    and the smallest rejected by "μ < m" (rejection is monotone in m: each factor
    ``1 + λ (y - m)`` with ``λ = g/(m - a)`` decreases in m)."""
    level = -log_half

    def search(sign: int) -> float:
        lo, hi = (a, b) if sign > 0 else (b, a)
        if not _rejects(y, lo + sign * tol * (b - a), a, b, sign, level):
            return lo
        while abs(hi - lo) > tol * (b - a):
            mid = (lo + hi) / 2
            if _rejects(y, mid, a, b, sign, level):
                lo = mid
            else:
                hi = mid
        return lo

    return search(+1), search(-1)


@dataclass(frozen=True)
class ClauseRun:
    """How a clause was decided: ``outcome`` at ``rows`` rows, by the sequential test or not."""

    outcome: str  # pass | fail | unknown (None while open)
    rows: int
    sequential: bool


def run(clauses: list[tuple[Clause, np.ndarray, float, float]], log_halves: list[float], n_max: int,
        n_avail: int) -> tuple[list[ClauseRun | None], int]:
    """Scan the rows in batches; return per clause its sequential decision (None if still
    open at the end) and the rows consumed.

    Parameters
    ----------
    clauses : list of (clause, per-row values y, a, b)
        Values for all available rows, in the test set's order.
    log_halves : list of float
        ln of half of each clause's share (the sequential test's level is 2/δ_c).
    n_max : int
        The plan's N (the scan stops there unless the condition is determined earlier).
    n_avail : int
        Rows available (>= 1).
    """
    caps = []
    for clause, _y, a, b in clauses:
        c = clause.const
        caps.append((_Capital(c, a, b, +1), _Capital(c, a, b, -1)))
    result: list[ClauseRun | None] = [None] * len(clauses)
    limit = min(n_max, n_avail)
    step = batch_size(n_max)
    t = 0
    while t < limit:
        end = min(limit, t + step)
        for i, (clause, y, _a, _b) in enumerate(clauses):
            if result[i] is not None:
                continue
            up, down = caps[i]
            up.update(y[t:end])
            down.update(y[t:end])
            level = -log_halves[i]
            above, below = up.log_mixture() >= level, down.log_mixture() >= level
            if above or below:
                passed = above if clause.op == ">" else below
                result[i] = ClauseRun("pass" if passed else "fail", end, True)
        t = end
        done = [r for r in result if r is not None]
        if any(r.outcome == "fail" for r in done) or len(done) == len(clauses):
            break
    return result, t


def expected_rows(y_sampler, clause: Clause, a: float, b: float, log_half: float, n_max: int,
                  paths: int = 32, seed: int = 15) -> float:
    """Mean rows the sequential test of one clause consumes (capped at ``n_max``) over seeded
    paths of per-row values drawn by ``y_sampler(rng, size)``."""
    rng = np.random.default_rng(seed)
    total = 0
    for _ in range(paths):
        y = y_sampler(rng, n_max)
        res, used = run([(clause, y, a, b)], [log_half], n_max, n_max)
        total += used
    return total / paths
