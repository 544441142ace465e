"""Tail bounds for means of bounded per-row values: Hoeffding, Bennett, binomial (exact and Chernoff).

Pure functions on numbers; the techniques in :mod:`easeml_buildbot.estimator.techniques`
combine them into plans and decisions. Every function takes ``log_delta`` = ln δ so that
δ = 2^-H never underflows.

References
----------
W. Hoeffding, Probability inequalities for sums of bounded random variables, JASA 58, 1963.
G. Bennett, Probability inequalities for the sum of independent random variables, JASA 57, 1962.
C. J. Clopper, E. S. Pearson, The use of confidence or fiducial limits illustrated in the case
of the binomial, Biometrika 26, 1934.
"""

from __future__ import annotations

import importlib
import math
from functools import lru_cache

import numpy as np
from easeml_buildbot.estimator.lazy import optimize, special, stats

EXACT_LOG_FLOOR = -600.0  # below this ln δ, scipy's binomial tails underflow: use Chernoff
WINDOW_PERIODS = 4  # the exact planner checks this many saw-tooth periods (1/e rows each) above N
SCAN_CHUNK = 1 << 16  # rows of the N-window evaluated at once (bounded memory)
SCAN_LIMIT = 1 << 22  # at most this many N are scanned in all (bounded time)


def hoeffding_width(n: int, log_delta: float, value_range: float = 1.0) -> float:
    """One-sided Hoeffding deviation of a mean of ``n`` values in a range of width ``value_range``.

    Parameters
    ----------
    n : int
        Number of rows.
    log_delta : float
        ln of the failure probability of the one-sided bound.
    value_range : float
        Width b - a of the interval the per-row values lie in.

    Returns
    -------
    float
        ``value_range * sqrt(ln(1/δ) / (2n))`` (infinite for n = 0).
    """
    return value_range * math.sqrt(-log_delta / (2 * n)) if n > 0 else math.inf


def bennett_h(u: float) -> float:
    """h(u) = (1+u) ln(1+u) - u, the exponent of Bennett's inequality."""
    return (1.0 + u) * math.log1p(u) - u


def bennett_width(n: int, p: float, log_budget: float) -> float:
    """Smallest w with n p h(w/p) >= log_budget (= ln(1/δ)): the Bennett deviation at n rows
    of values ``X <= 1`` with ``E[X^2] <= p`` (Boucheron, Lugosi & Massart 2013, Thm. 2.9)."""
    if n <= 0:
        return math.inf
    target = log_budget / (n * p)
    hi = 1.0
    while bennett_h(hi) < target:
        hi *= 2.0
    u = optimize.brentq(lambda x: bennett_h(x) - target, 0.0, hi, xtol=1e-14, rtol=1e-12)
    return u * p


def bernoulli_kl(q: float, p: float) -> float:
    """KL(Bernoulli(q) || Bernoulli(p)), the Chernoff exponent of a binomial tail."""
    def term(a: float, b: float) -> float:
        return 0.0 if a == 0 else (math.inf if b == 0 else a * math.log(a / b))
    return term(q, p) + term(1 - q, 1 - p)


def chernoff_log_tail(n: np.ndarray | int, t: float, e: float) -> np.ndarray:
    """ln of the Chernoff bound exp(-n KL(t±e || t)) on both tails of Bin(n, t) beyond ±e
    (rigorous however small δ is, and monotone in n)."""
    n = np.asarray(n, dtype=np.float64)
    up = -math.inf if t + e >= 1 else -bernoulli_kl(t + e, t)
    lo = -math.inf if t - e <= 0 else -bernoulli_kl(t - e, t)
    return n * max(up, lo)


def binom_log_tail(n: int | np.ndarray, t: float, e: float, log_delta: float = 0.0) -> np.ndarray:
    """ln max(P_t(K > n(t+e)), P_t(K < n(t-e))) for K ~ Bin(n, t): the worst wrong-verdict
    probability of a one-variable clause at threshold t, tolerance e (conservative rounding).

    Vectorised over ``n``; with ``log_delta`` below :data:`EXACT_LOG_FLOOR` the Chernoff bound."""
    n = np.atleast_1d(np.asarray(n, dtype=np.int64))
    t = min(max(t, 0.0), 1.0)
    if log_delta < EXACT_LOG_FLOOR:
        return chernoff_log_tail(n, t, e)
    up_x = n * (t + e)
    lo_x = n * (t - e)
    with np.errstate(divide="ignore"):
        up = np.where(up_x >= n, -np.inf, stats.binom.logsf(np.floor(up_x - 1e-9), n, t))
        lo = np.where(lo_x <= 0, -np.inf, stats.binom.logcdf(np.ceil(lo_x + 1e-9) - 1, n, t))
    return np.maximum(up, lo)


def chernoff_samples(t: float, e: float, log_delta: float) -> int:
    """Smallest N with the Chernoff bound on both tails <= exp(log_delta); from there on every
    larger N keeps the exact tails below δ too (the bound is monotone in N)."""
    rate = -float(chernoff_log_tail(1, min(max(t, 0.0), 1.0), e))
    if rate <= 0:
        raise OverflowError("no tail bound")
    return max(1, math.ceil(-log_delta / rate - 1e-9))


def binomial_samples(t: float, e: float, log_delta: float) -> int:
    """Smallest N from which on the exact wrong-verdict probability of a one-variable clause
    (threshold ``t``, tolerance ``e``) stays below exp(log_delta).

    Parameters
    ----------
    t, e : float
        Threshold and tolerance of the clause (after dividing by its coefficient).
    log_delta : float
        ln of the clause's failure share.

    Returns
    -------
    int
        N such that every N' in [N, N_c] has ``binom_log_tail(N') <= log_delta``, where N_c is
        the Chernoff size (beyond it the Chernoff bound, an upper bound on both tails and
        monotone in N, guarantees it). The tails saw-tooth in N with period about 1/e, so the
        window [N, N_c] is scanned from the bisection point upwards in chunks, moving N past
        every failing N' found; at most :data:`SCAN_LIMIT` N are scanned, after which N is
        the first N' with a clean window of :data:`WINDOW_PERIODS` periods (the saw-tooth's
        amplitude shrinks with N). Memory is bounded by :data:`SCAN_CHUNK`.
    """
    return _binomial_samples(float(t), float(e), float(log_delta))


@lru_cache(maxsize=4096)
def _binomial_samples(t: float, e: float, log_delta: float) -> int:
    t = min(max(t, 0.0), 1.0)
    ch = chernoff_samples(t, e, log_delta) if (t + e < 1 or t - e > 0) else 1
    if log_delta < EXACT_LOG_FLOOR:
        return ch
    lo, hi = 0, ch  # tail(ch) <= δ: Chernoff dominates the exact tails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if binom_log_tail(mid, t, e, log_delta)[0] <= log_delta:
            hi = mid
        else:
            lo = mid
    # every answer is above lo (tail(lo) > δ); scan upwards for the saw-tooth
    window = max(20, math.ceil(WINDOW_PERIODS / e))
    cand, pos, scanned = hi, hi, 0
    while pos < ch and scanned < SCAN_LIMIT:
        end = min(ch, pos + SCAN_CHUNK, cand + window)
        if end <= pos:
            break
        ns = np.arange(pos, end)
        bad = np.flatnonzero(binom_log_tail(ns, t, e, log_delta) > log_delta)
        scanned += len(ns)
        if len(bad):
            cand = int(ns[bad[-1]]) + 1
        pos = end
        if pos >= cand + window:  # a clean window above cand
            break
    return min(cand, ch)


def chernoff_bounds(k: int, n: int, log_delta: float) -> tuple[float, float]:
    """One-sided binomial bounds from the Chernoff bound n KL(k/n || m) = ln(1/δ), valid
    however small δ is (for ln δ below what Clopper-Pearson can compute in floats)."""
    p_hat, target = k / n, -log_delta / n

    def solve(lo: float, hi: float) -> float:
        return float(optimize.brentq(lambda m: bernoulli_kl(p_hat, m) - target, lo, hi, xtol=1e-15))

    eps = 1e-300
    lower = 0.0 if k == 0 or bernoulli_kl(p_hat, eps) <= target else solve(eps, p_hat)
    upper = 1.0 if k == n or bernoulli_kl(p_hat, 1 - 1e-16) <= target else solve(p_hat, 1 - 1e-16)
    return lower, upper


def clopper_pearson(k: int, n: int, log_delta: float) -> tuple[float, float]:
    """One-sided exact binomial bounds (Clopper & Pearson 1934).

    Parameters
    ----------
    k, n : int
        Successes and trials.
    log_delta : float
        ln of the failure probability of *each* one-sided bound.

    Returns
    -------
    (lower, upper) : tuple of float
        ``P(lower > p) <= δ`` and ``P(upper < p) <= δ`` for every true p.
    """
    if n <= 0:
        return 0.0, 1.0
    if log_delta < EXACT_LOG_FLOOR:
        return chernoff_bounds(k, n, log_delta)
    a = math.exp(log_delta)
    lo = 0.0 if k == 0 else float(_beta_ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(special.betainccinv(k + 1, n - k, a))
    return lo, hi


def _beta_ppf(q: float, a: float, b: float) -> float:
    """``scipy.stats.beta.ppf(q, a, b)`` without importing ``scipy.stats``.

    The decision runs in a fresh worker process for every evaluation, and ``scipy.stats``
    takes about a second to import, ``scipy.special`` a quarter of that. ``beta.ppf`` is
    ``scipy.special._ufuncs._beta_ppf`` (SciPy 1.17: ``_continuous_distns.beta._ppf``) and
    ``beta.isf`` is ``special.betainccinv``; ``special.betaincinv`` differs from ``ppf`` in
    the last bits on some arguments, so the ufunc ``ppf`` calls is used where it exists
    (``tests/estimator/test_samples.py`` checks both agree bit for bit with ``scipy.stats``)."""
    ufunc = _beta_ppf_ufunc()
    return float(ufunc(q, a, b) if ufunc is not None else stats.beta.ppf(q, a, b))


@lru_cache(maxsize=1)
def _beta_ppf_ufunc():
    """SciPy's private ufunc behind ``beta.ppf``, or None (another SciPy: use ``stats``)."""
    return getattr(importlib.import_module("scipy.special._ufuncs"), "_beta_ppf", None)
