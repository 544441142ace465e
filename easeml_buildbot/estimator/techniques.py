"""One registry of bounds: each technique both sizes a clause and decides it.

A *technique* is a small frozen object with two methods that must agree:

``size(clause, log_dc, ctx) -> (N, params)``
    the rows after which any estimate further than the clause's ``eps`` from its threshold
    is decided, with failure share ``exp(log_dc)`` (one-sided, docs/statistics.md);
``bounds(clause, log_dc, data, ctx) -> (estimate, lower, upper)``
    one-sided bounds on the clause's left-hand side from the rows in ``data``, each failing
    with probability at most ``exp(log_dc)``, for *any* number of rows.

The plan stores a technique's :attr:`name` per clause (``ClauseSize.technique``) and
:func:`get` turns that name back into the same object for the decision, so plan and
decision cannot drift: there is no second ladder over technique strings. Modifiers are
written ``base+modifier``: ``+betting`` (:class:`Betting`), ``+sequential``
(:mod:`easeml_buildbot.estimator.sequential`) and ``+active`` (a labelling, not a bound: it
changes which rows carry labels, the bound is the base's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np

from easeml_buildbot.estimator import betting, paired, tails
from easeml_buildbot.estimator.condition import Clause, Condition


# -- what a technique sees ------------------------------------------------------------

@dataclass(frozen=True)
class Context:
    """What a clause's bound may assume from the rest of the condition.

    ``p`` is the tightest ``d < p +/- eps`` of the condition (None without one): while the
    condition is true, ``E[X^2] <= d < p`` for ``X`` = the per-row value of ``n - o``, and
    when ``d >= p`` a false pass needs the d-clause to pass wrongly (docs/statistics.md)."""

    p: float | None = None

    @classmethod
    def of(cls, condition: Condition) -> "Context":
        return cls(d_bound(condition))


@dataclass(frozen=True)
class Data:
    """Scored rows: per-variable indicator arrays (``n``, ``o``, ``d``) and their counts."""

    indicators: Mapping[str, np.ndarray]
    n: int
    counts: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, indicators: Mapping[str, np.ndarray], rows: int | None = None) -> "Data":
        rows = len(next(iter(indicators.values()))) if rows is None else rows
        ind = {v: z[:rows] for v, z in indicators.items()}
        return cls(ind, rows, {v: int(np.count_nonzero(z)) for v, z in ind.items()})

    def values(self, clause: Clause) -> np.ndarray:
        """The clause's per-row value ``sum_j c_j Z_ij``."""
        y = np.zeros(self.n, dtype=np.float64)
        for t in clause.terms:
            y += t.coef * self.indicators[t.var]
        return y

    def estimate(self, clause: Clause) -> float:
        return clause.value({v: c / self.n for v, c in self.counts.items()})


class Technique(Protocol):
    name: str

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]: ...

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]: ...


# -- helpers on clauses -----------------------------------------------------------------

def coefs(clause: Clause) -> dict[str, float]:
    return {t.var: t.coef for t in clause.terms}


def d_bound(condition: Condition) -> float | None:
    """The tightest p of a clause ``d < p +/- eps`` (bounds E[X^2] of n - o), if any."""
    ps = [c.const for c in condition.clauses if c.op == "<" and coefs(c) == {"d": 1.0} and 0 < c.const < 1]
    return min(ps) if ps else None


def is_difference(clause: Clause) -> bool:
    """``n - o`` or ``o - n`` (per-sample value in {-1, 0, 1}, zero where the models agree)."""
    c = coefs(clause)
    return set(c) == {"n", "o"} and c["n"] == -c["o"] and abs(c["n"]) == 1.0


# The (n, o, d) indicator triples a row can have: both right implies the same prediction;
# exactly one right implies they differ; both wrong allows either (several classes).
FEASIBLE_ROWS = ((1, 1, 0), (1, 0, 1), (0, 1, 1), (0, 0, 0), (0, 0, 1))


def value_range(clause: Clause) -> tuple[float, float]:
    """(a, b): the smallest and largest per-row value ``sum_j c_j Z_ij`` a row can have.

    Parameters
    ----------
    clause : Clause

    Returns
    -------
    (a, b) : tuple of float
        Over the feasible indicator triples :data:`FEASIBLE_ROWS` (restricted to the clause's
        variables), e.g. ``n - o + d`` lies in [0, 2], not in a range of width 3.
    """
    c = coefs(clause)
    idx = {"n": 0, "o": 1, "d": 2}
    vals = sorted({sum(coef * row[idx[v]] for v, coef in c.items()) for row in FEASIBLE_ROWS})
    return float(vals[0]), float(vals[-1])


def _ceil(x: float) -> int:
    """Planned rows: at least one (a clause that any estimate decides still needs a row)."""
    return max(1, math.ceil(x - 1e-9))


# -- the techniques ---------------------------------------------------------------------

@dataclass(frozen=True)
class HoeffdingSplit:
    """The paper's baseline: each of a clause's k variables within ``eps/k`` at ``δ_c/k``.

    ``N = max_j c_j^2 ln(k/δ_c) / (2 (eps/k)^2)``; the decision's half-width is
    ``sum_j |c_j| sqrt(ln(k/δ_c) / (2n))``.

    References
    ----------
    Renggli et al., ease.ml/ci, MLSys 2019, §3; Hoeffding 1963, Thm. 2.
    """

    name: str = "hoeffding-split"

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        k = len(clause.terms)
        n = max(t.coef**2 * (math.log(k) - log_dc) / (2 * (clause.eps / k) ** 2) for t in clause.terms)
        return _ceil(n), {"k": k}

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        value = data.estimate(clause)
        k = len(clause.terms)
        w = sum(abs(t.coef) for t in clause.terms) * tails.hoeffding_width(data.n, log_dc - math.log(k))
        return value, value - w, value + w


@dataclass(frozen=True)
class HoeffdingSum:
    """Hoeffding on the clause's per-row value ``sum_j c_j Z_ij`` in [a, b] (one bound, not k).

    ``N = (b-a)^2 ln(1/δ_c) / (2 eps^2)``, with (a, b) from :func:`value_range`.

    References
    ----------
    Hoeffding 1963, Thm. 2.
    """

    name: str = "hoeffding-sum"

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        a, b = value_range(clause)
        r = b - a
        return _ceil(r * r * (-log_dc) / (2 * clause.eps**2)), {"range": r}

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        value = data.estimate(clause)
        a, b = value_range(clause)
        w = tails.hoeffding_width(data.n, log_dc, b - a)
        return value, value - w, value + w


@dataclass(frozen=True)
class Binomial:
    """Exact binomial tails for a one-variable clause ``c v > C +/- eps``.

    Planned N: :func:`tails.binomial_samples` at threshold C/c, tolerance eps/|c|. Decision:
    one-sided Clopper-Pearson bounds at ``δ_c`` (Chernoff below ``ln δ = -600``).

    References
    ----------
    Clopper & Pearson 1934; statsmodels.stats.proportion.proportion_confint(method="beta").
    """

    name: str = "binomial"

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        (t,) = clause.terms
        thr, e = clause.const / t.coef, clause.eps / abs(t.coef)
        return max(1, tails.binomial_samples(thr, e, log_dc)), {"threshold": thr, "tolerance": e}

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        (t,) = clause.terms
        lo_v, hi_v = tails.clopper_pearson(data.counts[t.var], data.n, log_dc)
        a, b = t.coef * lo_v, t.coef * hi_v
        return data.estimate(clause), min(a, b), max(a, b)


@dataclass(frozen=True)
class Bennett:
    """Bennett's inequality for ``n - o`` given ``d < p`` (``X <= 1``, ``E[X^2] <= p``).

    ``N = ln(1/δ_c) / (p h(eps/p))``, ``h(u) = (1+u) ln(1+u) - u``; ``two_sided`` (the
    paper's ``bennett-paper``) uses ``ln(2/δ_c)`` as published.

    References
    ----------
    Renggli et al. 2019, §5; Bennett 1962; Boucheron, Lugosi & Massart 2013, Thm. 2.9.
    """

    name: str = "bennett"
    two_sided: bool = False

    def _budget(self, log_dc: float) -> float:
        return -log_dc + (math.log(2.0) if self.two_sided else 0.0)

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        assert ctx.p is not None
        return _ceil(self._budget(log_dc) / (ctx.p * tails.bennett_h(clause.eps / ctx.p))), {"p": ctx.p}

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        assert ctx.p is not None
        value = data.estimate(clause)
        w = tails.bennett_width(data.n, ctx.p, self._budget(log_dc))
        return value, value - w, value + w


@dataclass(frozen=True)
class Betting:
    """A base technique intersected with a variance-adaptive betting bound, each at ``δ_c/2``.

    Planned N: the base's at ``δ_c/2``. Decision: ``max`` of the lower and ``min`` of the
    upper bounds (a union bound keeps each side at ``δ_c``).

    References
    ----------
    I. Waudby-Smith, A. Ramdas, Estimating means of bounded random variables by betting,
    JRSS-B 86(1), 2023.
    """

    base: Technique
    max_rows: int = 1_000_000  # the betting half uses at most this fixed prefix of the rows

    @property
    def name(self) -> str:
        return self.base.name + "+betting"

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        return self.base.size(clause, log_dc - math.log(2.0), ctx)

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        log_half = log_dc - math.log(2.0)
        value, lo1, hi1 = self.base.bounds(clause, log_half, data, ctx)
        a, b = value_range(clause)
        y = data.values(clause)[: self.max_rows]
        lo2, hi2 = betting.bounds(y, a, b, log_half)
        return value, max(lo1, lo2), min(hi1, hi2)


@dataclass(frozen=True)
class Active:
    """Active labelling over a base technique: the same bound, labels only where models disagree."""

    base: Technique

    @property
    def name(self) -> str:
        return self.base.name + "+active"

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        return self.base.size(clause, log_dc, ctx)

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        return self.base.bounds(clause, log_dc, data, ctx)


@dataclass(frozen=True)
class Paired:
    """Exact paired (trinomial) bounds for ``n - o`` (or ``o - n``): only the rows where
    exactly one model is right carry information; the nuisance (their rate) is bounded by
    the condition's ``d < p`` (or 1) and handled by a supremum (:mod:`paired`).

    Planned N: the smallest N at which every sum beyond ``N(C ± eps)`` is rejected by the
    exact test (:func:`paired.paired_samples`, searched below the Bennett / Hoeffding size).
    Decision: the exact one-sided bounds of :func:`paired.bounds`.

    References
    ----------
    McNemar 1947; Boschloo 1970 (supremum over the nuisance).
    """

    name: str = "paired"

    @staticmethod
    def nu_max(ctx: Context) -> float:
        return ctx.p if ctx.p is not None else 1.0

    def applies(self, clause: Clause, ctx: Context) -> bool:
        return is_difference(clause) and paired.applies(clause.const, self.nu_max(ctx))

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        nu = self.nu_max(ctx)
        start = min(HoeffdingSum().size(clause, log_dc, ctx)[0],
                    Bennett().size(clause, log_dc, ctx)[0] if ctx.p is not None else math.inf)
        if start > paired.MAX_ROWS:
            return start, {"nu_max": nu}
        return paired.paired_samples(clause.const, clause.eps, nu, log_dc, int(start)), {"nu_max": nu}

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        s_obs = int(round(float(data.values(clause).sum())))
        lo, hi = paired.bounds(data.n, s_obs, self.nu_max(ctx), log_dc)
        return data.estimate(clause), lo, hi


@dataclass(frozen=True)
class Sequential:
    """A base technique run as a sequential test that stops early (:mod:`sequential`).

    Planned N (the worst case): the base's at ``δ_c/2``. Decision: the betting test at
    ``δ_c/2`` over the rows in order, in batches, until the condition is determined; clauses
    still open after N rows by the base's bound on exactly N rows at ``δ_c/2``
    (:meth:`bounds` is that fixed-N half).

    References
    ----------
    Waudby-Smith & Ramdas 2023; Shafer & Vovk 2019.
    """

    base: Technique

    @property
    def name(self) -> str:
        return self.base.name + "+sequential"

    def size(self, clause: Clause, log_dc: float, ctx: Context) -> tuple[int, dict[str, float]]:
        return self.base.size(clause, log_dc - math.log(2.0), ctx)

    def bounds(self, clause: Clause, log_dc: float, data: Data, ctx: Context) -> tuple[float, float, float]:
        return self.base.bounds(clause, log_dc - math.log(2.0), data, ctx)


BASE: dict[str, Technique] = {}
MODIFIERS: dict[str, type] = {"betting": Betting, "active": Active, "sequential": Sequential}


def register(t: Technique) -> Technique:
    BASE[t.name] = t
    return t


for _t in (HoeffdingSplit(), HoeffdingSum(), Binomial(), Bennett(), Bennett("bennett-paper", two_sided=True),
           Paired()):
    register(_t)


def get(name: str) -> Technique:
    """The technique a plan names (``base`` or ``base+modifier+...``)."""
    base, *mods = name.split("+")
    if base not in BASE or any(m not in MODIFIERS for m in mods):
        raise KeyError(f"unknown technique {name!r}")
    t: Technique = BASE[base]
    for m in mods:
        t = MODIFIERS[m](t)
    return t


def candidates(clause: Clause, method: str, ctx: Context) -> tuple[Technique, ...]:
    """The techniques a method may use for a clause (the plan takes the one with fewest rows)."""
    pattern = ctx.p is not None and is_difference(clause)
    if method == "hoeffding":
        return (BASE["hoeffding-split"],)
    if method == "bennett":
        return (BASE["bennett-paper"],) if pattern else (BASE["hoeffding-split"],)
    out = [BASE["hoeffding-split"]]
    out.append(BASE["binomial"] if len(clause.terms) == 1 else BASE["hoeffding-sum"])
    if pattern:
        out.append(BASE["bennett"])
    if BASE["paired"].applies(clause, ctx):  # type: ignore[attr-defined]
        out.append(BASE["paired"])
    return tuple(out)


__all__ = ["Context", "Data", "Technique", "BASE", "MODIFIERS", "register", "get", "candidates",
           "d_bound", "is_difference", "value_range", "FEASIBLE_ROWS"]
