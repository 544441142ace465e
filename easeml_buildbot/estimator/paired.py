"""Exact paired bounds for ``n - o``: only the rows where exactly one model is right count.

Per row the clause's value is ``X = 1[new right] - 1[old right]`` in {-1, 0, 1}; with
``p+ = P(X = 1)``, ``p- = P(X = -1)`` the clause's left-hand side is ``μ = p+ - p-`` and the
*nuisance* ``ν = p+ + p- = E[X^2]`` (the rate of rows where exactly one model is right) is at
most ``d``. The sum ``S = n+ - n-`` of N rows is a difference of trinomial counts: given the
``D = n+ + n-`` informative rows, ``n+ ~ Bin(D, (ν + μ)/(2ν))`` (McNemar's conditioning), so

    P_{μ,ν}(S >= s) = sum_D Bin(N, ν)(D) · P(Bin(D, (ν+μ)/(2ν)) >= ceil((s + D)/2))

is computed exactly. The test of ``μ <= C`` rejects when ``S >= s`` has probability at most
δ_c for *every* nuisance ``ν`` in ``[|C|, ν_max]`` (``ν_max`` = the condition's ``d`` bound p,
or 1 without one: then the worst case is ``ν = 1``, a binomial in ``(1 + μ)/2``):

* smaller μ is covered: from ``(μ, ν)`` with ``μ < C`` a coupling that only raises rows
  (``-1 -> 0``, ``0 -> +1``) reaches ``(C, ν')`` with some ``ν'`` in the range, so
  ``P_{μ,ν}(S >= s) <= P_{C,ν'}(S >= s)``;
* the supremum over ν is bounded rigorously on cells ``[ν0, ν1]``: every outcome's
  probability under any ν in the cell is at most its weight under the sub-stochastic vector
  ``((ν1+μ)/2, (ν1-μ)/2, 1-ν0)``, whose total is ``1 + h`` (``h = ν1 - ν0``), so
  ``sup_cell P(A) <= (1+h)^N P_{μ/(1+h), ν1/(1+h)}(A)``; cells are walked from ``ν_max``
  down, doubling while the bound stays below δ_c.

References
----------
Q. McNemar, Note on the sampling error of the difference between correlated proportions or
percentages, Psychometrika 12, 1947. R. D. Boschloo, Raised conditional level of significance
for the 2x2-table when testing the equality of two probabilities, Statistica Neerlandica 24,
1970 (unconditional exact tests: supremum over the nuisance).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from easeml_buildbot.estimator.lazy import special, stats

MAX_ROWS = 1_000_000  # beyond this planning takes over ~10 s: the other techniques plan (Bennett, Hoeffding)
SLACK = math.log(0.9)  # searches at ν_max aim 10% below δ_c so that the rigorous supremum closes
_SPREAD = 12.0  # standard deviations of D summed exactly; the rest is bounded by its mass


def _d_range(n: int, nu_lo: float, nu_hi: float, s_min: int) -> np.ndarray:
    sd = math.sqrt(n * max(nu_hi, 1e-12) * (1 - min(nu_lo, 1 - 1e-12))) + 1
    lo = max(0, math.floor(n * nu_lo - _SPREAD * sd - 50))
    hi = min(n, math.ceil(n * nu_hi + _SPREAD * sd + 50))
    return np.arange(lo, hi + 1)


def _log_g(dd: np.ndarray, s: int, mu: float, nu: float) -> np.ndarray:
    """ln P(S >= s | D) = ln P(Bin(D, (nu+mu)/(2nu)) >= ceil((s + D)/2))."""
    q = min(max((nu + mu) / (2 * nu), 0.0), 1.0)
    with np.errstate(divide="ignore"):
        return stats.binom.logsf(np.ceil((s + dd) / 2.0) - 1, dd, q)


def _log_expect(n: int, dd: np.ndarray, log_g: np.ndarray, nu: float) -> float:
    """ln E[g(D)] for D ~ Bin(n, nu), g given on dd (g <= 1 elsewhere: bounded by the mass)."""
    with np.errstate(divide="ignore"):
        inner = special.logsumexp(stats.binom.logpmf(dd, n, nu) + log_g) if len(dd) else -np.inf
        lo, hi = (int(dd[0]), int(dd[-1])) if len(dd) else (n + 1, n)
        outside = np.logaddexp(stats.binom.logcdf(lo - 1, n, nu) if lo > 0 else -np.inf,
                               stats.binom.logsf(hi, n, nu))
    return float(np.logaddexp(inner, outside))


def log_tail_ge(n: int, s: int, mu: float, nu: float) -> float:
    """ln P(S >= s) for S = n+ - n-, (n+, n-, n0) ~ Multinomial(n; (nu+mu)/2, (nu-mu)/2, 1-nu).

    Parameters
    ----------
    n : int
        Rows.
    s : int
        Threshold of the sum.
    mu, nu : float
        Mean ``p+ - p-`` and nuisance ``p+ + p-`` (``|mu| <= nu <= 1``).

    Returns
    -------
    float
        The exact log-probability (terms of D beyond ±12 standard deviations are replaced
        by their total probability, an upper bound).
    """
    if s <= -n:
        return 0.0
    if s > n:
        return -math.inf
    nu = min(max(nu, abs(mu)), 1.0)
    if nu <= 0:
        return 0.0 if s <= 0 else -math.inf
    dd = _d_range(n, nu, nu, s)
    return _log_expect(n, dd, _log_g(dd, s, mu, nu), nu)


def log_tail_le(n: int, s: int, mu: float, nu: float) -> float:
    """ln P(S <= s) (the mirror: S <= s iff -S >= -s under -mu)."""
    return log_tail_ge(n, -s, -mu, nu)


def _cell_bound(n: int, s: int, mu: float, nu0: float, nu1: float) -> float:
    """A rigorous bound on ``sup_{ν in [nu0, nu1]} ln P_{mu,ν}(S >= s)``.

    ``P = sum_D Bin(n, ν)(D) g_ν(D)``. Given D the tail g_ν(D) is monotone in
    q = (ν+μ)/(2ν), itself monotone in ν, so it is at most its larger value at nu0 and nu1;
    and ``Bin(n, ν)(D)`` is unimodal in ν with its maximum at ν = D/n, so over the cell it is
    at most its value at ``clip(D/n, nu0, nu1)``. The sum of these maxima exceeds the tail by
    about a factor ``1 + n h / (2.5 sd(D))`` (h = nu1 - nu0): tight for cells of width ~1/n."""
    nu0 = max(nu0, abs(mu), 1e-300)
    dd = _d_range(n, nu0, nu1, s)
    g = np.maximum(_log_g(dd, s, mu, nu0), _log_g(dd, s, mu, nu1))
    with np.errstate(divide="ignore"):
        pmf = stats.binom.logpmf(dd, n, np.clip(dd / n, nu0, nu1))
        inner = special.logsumexp(pmf + g)
        lo, hi = int(dd[0]), int(dd[-1])
        if lo == 0 and hi == n:
            return float(inner)
        # beyond ±12 sd of D at both ends of the cell (tails of Bin(n, ν) are monotone in ν)
        outside = np.logaddexp(stats.binom.logcdf(lo - 1, n, nu1) if lo > 0 else -np.inf,
                               stats.binom.logsf(hi, n, nu0) if hi < n else -np.inf)
    return float(np.logaddexp(inner, outside))


@lru_cache(maxsize=65536)
def sup_log_tail(n: int, s: int, mu: float, nu_max: float, upper: bool, log_target: float) -> float:
    """A rigorous upper bound on ``sup_{ν in [|mu|, nu_max]} ln P_{mu,ν}(S >= s)`` (``upper``)
    or ``(S <= s)``, tight enough to compare with ``log_target``: a value ``<= log_target``
    iff the walk over cells of ν (from nu_max down, doubling while the bound stays below the
    target) closes, else the first cell bound above it."""
    if not upper:
        s, mu = -s, -mu
    if s <= -n:
        return 0.0
    if s > n:
        return -math.inf
    nu_min = min(abs(mu), nu_max)
    top = log_tail_ge(n, s, mu, nu_max)
    if top > log_target:
        return top
    worst, nu1, h = top, nu_max, max(0.1 / n, 1e-9)
    while nu1 > nu_min:
        nu0 = max(nu_min, nu1 - h)
        b = _cell_bound(n, s, mu, nu0, nu1)
        if b <= log_target:
            worst, nu1, h = max(worst, b), nu0, h * (2.0 if b < log_target - 1.0 else 1.4)
        elif nu1 - nu0 <= 1e-7 / n:
            return b  # cannot close: the tail near nu1 is itself above the target
        else:
            h = (nu1 - nu0) / 2
    return worst


def applies(mu_threshold: float, nu_max: float) -> bool:
    return abs(mu_threshold) < nu_max


def critical_values(n: int, c: float, nu_max: float, log_dc: float) -> tuple[int, int]:
    """(s_pass, s_fail): ``S >= s_pass`` rejects ``μ <= c`` and ``S <= s_fail`` rejects
    ``μ >= c``, each with probability at most ``exp(log_dc)`` whatever the nuisance."""
    return _critical(n, c, nu_max, log_dc, True), _critical(n, c, nu_max, log_dc, False)


@lru_cache(maxsize=65536)
def _critical(n: int, c: float, nu_max: float, log_dc: float, upper: bool) -> int:
    sign = 1 if upper else -1  # search over t = sign * s; t = n + 1 is the empty event
    lo, hi = math.floor(sign * c * n), n + 1
    while hi - lo > 1:  # at ν_max first (cheap), then upwards until the supremum confirms
        mid = (lo + hi) // 2
        if log_tail_ge(n, mid, sign * c, nu_max) <= log_dc + SLACK:
            hi = mid
        else:
            lo = mid
    while hi <= n and sup_log_tail(n, hi, sign * c, nu_max, True, log_dc) > log_dc:
        hi += 1
    return sign * hi


@lru_cache(maxsize=65536)
def lower_bound(n: int, s_obs: int, nu_max: float, log_dc: float, tol: float = 1e-6) -> float:
    """A μ0 such that ``P_{μ0,ν}(S >= s_obs) <= δ_c`` for every nuisance ν: a one-sided lower
    bound on μ failing with probability at most δ_c (rejection is monotone in μ0, by the
    coupling). Located by bisection on the tail at ``ν_max``, then lowered until the rigorous
    supremum over ν confirms it."""
    if n <= 0:
        return -nu_max

    def rejects_at_top(m: float) -> bool:  # aims 10% below δ_c so that the supremum closes
        return log_tail_ge(n, s_obs, m, nu_max) <= log_dc + SLACK

    lo, hi = -nu_max, min(nu_max, s_obs / n)
    if hi <= lo or not rejects_at_top(lo + tol):
        return -nu_max
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if rejects_at_top(mid):
            lo = mid
        else:
            hi = mid
    step = max(tol, abs(lo) * 1e-3, 1e-4 / math.sqrt(n))
    while lo > -nu_max and sup_log_tail(n, s_obs, lo, nu_max, True, log_dc) > log_dc:
        lo -= step
        step *= 2
    return max(lo, -nu_max)


def bounds(n: int, s_obs: int, nu_max: float, log_dc: float) -> tuple[float, float]:
    """(lower, upper) one-sided exact paired bounds on μ, each failing with probability <= δ_c."""
    return lower_bound(n, s_obs, nu_max, log_dc), -lower_bound(n, -s_obs, nu_max, log_dc)


def decided_beyond_eps(n: int, c: float, eps: float, nu_max: float, log_dc: float, exact_sup: bool) -> bool:
    """Whether at n rows every sum beyond ``n(c ± eps)`` is decided (the meaning of ``± eps``)."""
    s_up = math.floor(n * (c + eps) + 1e-9) + 1
    s_dn = math.ceil(n * (c - eps) - 1e-9) - 1
    if exact_sup:
        return (sup_log_tail(n, s_up, c, nu_max, True, log_dc) <= log_dc
                and sup_log_tail(n, s_dn, c, nu_max, False, log_dc) <= log_dc)
    target = log_dc + SLACK
    return log_tail_ge(n, s_up, c, nu_max) <= target and log_tail_le(n, s_dn, c, nu_max) <= target


@lru_cache(maxsize=1024)
def paired_samples(c: float, eps: float, nu_max: float, log_dc: float, start: int) -> int:
    """Smallest N (searched below ``start``, a size another technique guarantees) at which
    every sum beyond ``N(c ± eps)`` is decided, checked over a window of N at ``ν_max`` and
    with the rigorous supremum over the nuisance at the answer (raised 0.5% until it holds)."""
    lo, hi = 0, max(1, start)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if decided_beyond_eps(mid, c, eps, nu_max, log_dc, exact_sup=False):
            hi = mid
        else:
            lo = mid
    n = hi
    window = max(20, math.ceil(4 / eps))
    step = max(1, window // 40)
    while True:
        bad = [m for m in range(n, min(start, n + window), step)
               if not decided_beyond_eps(m, c, eps, nu_max, log_dc, exact_sup=False)]
        if bad and bad[-1] < start:
            n = bad[-1] + 1
            continue
        break
    while n < start and not decided_beyond_eps(n, c, eps, nu_max, log_dc, exact_sup=True):
        n = math.ceil(n * 1.005)
    return min(n, start)
