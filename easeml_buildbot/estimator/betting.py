"""One-sided confidence bounds for a bounded mean by betting (Waudby-Smith & Ramdas 2023).

For values ``y_i`` in ``[a, b]`` with mean μ, the capital of a gambler who bets a
fraction λ_t ≥ 0 on "μ > m",

    K_t(m) = prod_{i<=t} (1 + λ_i(m) (y_i - m)),

is a non-negative supermartingale whenever μ <= m (λ_i may depend on y_1..y_{i-1} only),
so by Ville's inequality P(max_t K_t(m) >= 1/δ) <= δ. Hence

    L = sup{ m : max_t K_t(m) >= 1/δ }

is a lower bound on μ failing with probability at most δ. With the predictable plug-in
λ*_t = sqrt(2 ln(1/δ) / (N σ̂²_{t-1})) of the paper, truncated at c/(m - a) (c = 1/2), each
factor is positive and decreasing in m, so the rejected m form an interval and L can be
found by bisection. The bound adapts to the observed variance: when two models rarely
disagree, ``n - o`` is decided with far fewer samples than Hoeffding or Bennett with the
worst-case variance would need.
"""

from __future__ import annotations

import numpy as np

TRUNCATION = 0.5


def _plugin_lambdas(y: np.ndarray, a: float, b: float, log_delta: float) -> np.ndarray:
    """λ*_t from the regularised running mean and variance of y_1..y_{t-1} (predictable)."""
    n = len(y)
    t = np.arange(1, n + 1, dtype=np.float64)
    mid, var0 = (a + b) / 2.0, (b - a) ** 2 / 4.0
    mu_hat = (mid + np.cumsum(y)) / (t + 1)  # μ̂_t uses y_1..y_t
    mu_prev = np.concatenate(([mid], mu_hat[:-1]))  # μ̂_{t-1}
    sq = np.cumsum((y - mu_prev) ** 2)
    var_hat = (var0 + sq) / (t + 1)  # σ̂²_t
    var_prev = np.concatenate(([var0], var_hat[:-1]))  # σ̂²_{t-1}: predictable
    return np.sqrt(2.0 * -log_delta / (n * var_prev))


def _rejects(y: np.ndarray, lam_star: np.ndarray, a: float, m: float, log_delta: float) -> bool:
    """Whether max_t ln K_t(m) >= ln(1/δ)."""
    if m <= a:
        return False  # nothing is below the lower end of the range
    lam = np.minimum(lam_star, TRUNCATION / (m - a))
    log_k = np.cumsum(np.log1p(lam * (y - m)))
    return bool(log_k.max() >= -log_delta)


def lower_bound(y: np.ndarray, a: float, b: float, log_delta: float, tol: float = 1e-5) -> float:
    """The betting lower bound on the mean of ``y`` (values in [a, b]) at failure
    probability exp(log_delta), bisected on the exact test "μ > m"."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return a
    lam_star = _plugin_lambdas(y, a, b, log_delta)

    def rejects(m: float) -> bool:
        return _rejects(y, lam_star, a, m, log_delta)

    lo, hi = a + tol * (b - a), b  # m = b is never rejected (every y - b <= 0)
    if not rejects(lo):
        return a
    while hi - lo > tol * (b - a):
        mid = (lo + hi) / 2.0
        if rejects(mid):
            lo = mid
        else:
            hi = mid
    return lo


def bounds(y: np.ndarray, a: float, b: float, log_delta: float) -> tuple[float, float]:
    """(lower, upper) one-sided betting bounds, each failing with probability <= exp(log_delta)."""
    y = np.asarray(y, dtype=np.float64)
    return lower_bound(y, a, b, log_delta), -lower_bound(-y, -b, -a, log_delta)

