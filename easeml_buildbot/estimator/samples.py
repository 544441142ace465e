"""How many test samples a condition needs (ease.ml/ci's sample-size estimator, and tighter ones).

Every method here splits the failure probability the same way (docs/statistics.md):

* reliability ``1 - delta`` is promised over all H uses of one test set, so a single use
  gets ``delta / H`` (adaptivity ``none`` and ``firstChange``) or ``delta / 2**H`` (``full``:
  a union over every pass/fail transcript the developer may have adapted to);
* a use's share is split evenly over the m clauses of the condition;
* within a clause, a wrong verdict needs a *one-sided* deviation (a false pass needs the
  estimate to overshoot, a false fail to undershoot, and for a given truth only one of the
  two is wrong), so each clause needs one-sided bounds only.

Methods, chosen per condition with ``method=``:

``hoeffding``  the paper's baseline: a clause with k variables gives each variable ε/k and
               δ/k; N = c² ln(k/δ_c) / (2 (ε/k)²) per variable (Renggli et al. 2019, §3).
``bennett``    the paper's optimisation for ``d < p +/- ε_d /\\ n - o > C +/- ε``:
               N = ln(2/δ_c) / (p h(ε/p)) labelled, the d-clause by Hoeffding on unlabelled
               data; other clauses as ``hoeffding``.
``exact``      ours: exact binomial tails (Clopper-Pearson inversion) for one-variable
               clauses, one-sided Bennett for the d-pattern, Hoeffding on the clause's
               combined per-sample value otherwise; per clause the smallest of these.
``betting``    ours: ``exact``'s plan at half the failure share, decided by the intersection of
               that bound and a variance-adaptive betting bound (Waudby-Smith & Ramdas
               2023), each at half the share: a few more labels planned, far more
               decisive verdicts when the models rarely disagree.
``auto``       the method with the fewest labels among those valid for the condition.

Computations are done with ``log(delta)`` so that ``2**-H`` never underflows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from easeml_buildbot.estimator.lazy import special, stats

from easeml_buildbot.estimator import techniques
from easeml_buildbot.estimator.condition import Clause, Condition, parse_condition
from easeml_buildbot.estimator.tails import (  # noqa: F401  (re-exported: the public names of before)
    EXACT_LOG_FLOOR,
    bennett_h,
    bennett_width,
    bernoulli_kl,
    binomial_samples,
    chernoff_log_tail as _chernoff_log_tail,
)
from easeml_buildbot.estimator.techniques import d_bound, is_difference  # noqa: F401

ADAPTIVITIES = ("none", "firstChange", "full")
ADAPTIVITY_ALIASES = {"hybrid": "firstChange", "firstchange": "firstChange", "first_change": "firstChange"}
METHODS = ("auto", "hoeffding", "bennett", "exact", "betting", "sequential")
METHOD_ALIASES = {"binomial": "exact", "paper": "hoeffding", "baseline": "hoeffding"}
LABELLINGS = ("full", "active")


class SampleSizeError(ValueError):
    """Arguments that do not describe a computable sample size."""


K_PASS = re.compile(r"^([1-9][0-9]{0,5})-pass$")


def normalize_adaptivity(adaptivity: str) -> str:
    """``none``, ``firstChange`` (aliases ``hybrid``, ...), ``full``, or ``k-pass`` for an
    integer k >= 1 (the test set retires after k visible passes; ``1-pass`` is firstChange)."""
    a = ADAPTIVITY_ALIASES.get(adaptivity, adaptivity) if isinstance(adaptivity, str) else adaptivity
    if isinstance(a, str) and K_PASS.match(a):
        return a
    if a not in ADAPTIVITIES:
        raise SampleSizeError(f"adaptivity must be one of {', '.join(ADAPTIVITIES)} (or 'hybrid', or "
                              f"'k-pass' such as '2-pass'), not {adaptivity!r}")
    return a


def k_pass(adaptivity: str) -> int | None:
    """k of a ``k-pass`` adaptivity, else None."""
    m = K_PASS.match(adaptivity) if isinstance(adaptivity, str) else None
    return int(m.group(1)) if m else None


def log_transcripts(k: int, steps: int) -> float:
    """ln of the number of models a developer can submit under k-pass retirement over H steps.

    The model at a step is a function of the verdicts seen before it, and a transcript can
    only go on while it holds fewer than k passes: the distinct prefixes of length t < H
    with at most k - 1 passes number ``sum_{i<=k-1} C(t, i)``, in all (hockey stick)
    ``sum_{j=1}^{k} C(H, j)``: H for k = 1 (firstChange), 2^H - 1 for k >= H (full).
    """
    k = min(k, steps)
    j = np.arange(1, k + 1)
    return float(special.logsumexp(special.gammaln(steps + 1) - special.gammaln(j + 1)
                                 - special.gammaln(steps - j + 1)))


def normalize_method(method: str) -> str:
    m = METHOD_ALIASES.get(method, method)
    if m not in METHODS:
        raise SampleSizeError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return m


def log_use_delta(reliability: float, adaptivity: str, steps: int) -> float:
    """ln of the failure probability one use of the test set may spend."""
    if not 0 < reliability < 1:
        raise SampleSizeError(f"reliability must be strictly between 0 and 1, not {reliability!r}")
    if int(steps) != steps or steps < 1:
        raise SampleSizeError(f"steps must be an integer >= 1, not {steps!r}")
    a = normalize_adaptivity(adaptivity)
    log_delta = math.log1p(-reliability)
    if k_pass(a) is not None:  # a union over every model k-pass retirement lets the developer submit
        return log_delta - log_transcripts(k_pass(a), int(steps))
    if a == "full":
        return log_delta - steps * math.log(2.0)
    # none: H fixed models; firstChange: the developer sees nothing until the verdict
    # first changes, so the models are fixed in advance up to that point: a union over H.
    return log_delta - math.log(steps)


@dataclass(frozen=True)
class ClauseSize:
    """The samples one clause needs and the technique that gives them."""

    index: int
    clause: str
    technique: str  # hoeffding-split | hoeffding-sum | binomial | bennett-paper | bennett
    labels: int  # labelled samples (0 for a clause on d only)
    unlabeled: int  # samples needing predictions only (d-clauses, active labelling)
    log_delta: float  # ln of this clause's share of one use's failure probability
    params: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta"] = math.exp(self.log_delta)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClauseSize":
        """The inverse of :meth:`to_dict` (``delta`` is derived, so it is not read)."""
        return cls(index=int(d["index"]), clause=str(d["clause"]), technique=str(d["technique"]),
                   labels=int(d["labels"]), unlabeled=int(d["unlabeled"]),
                   log_delta=float(d["log_delta"]),
                   params={str(k): float(v) for k, v in dict(d.get("params") or {}).items()})


@dataclass(frozen=True)
class SampleSize:
    """Samples a condition needs at a reliability over H uses, and how they were derived."""

    labels: int
    unlabeled: int
    method: str
    clauses: tuple[ClauseSize, ...]
    condition: str
    reliability: float
    adaptivity: str
    steps: int
    labelling: str = "full"
    candidates: dict[str, int] = field(default_factory=dict)  # labels per valid method (auto)

    @property
    def rows(self) -> int:
        """Rows of a fully labelled test set that satisfy both counts."""
        return max(self.labels, self.unlabeled)

    @property
    def expected_labels(self) -> int | None:
        """``sequential``: the labelled rows it is expected to consume when every clause's
        true value is 2 eps on its passing side (clause ``params['expected_at']``); the
        worst case is :attr:`labels`. None for other methods."""
        rows = [c.params["expected_rows"] for c in self.clauses if "expected_rows" in c.params and c.labels]
        return math.ceil(max(rows)) if rows else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "unlabeled": self.unlabeled,
            "rows": self.rows,
            "method": self.method,
            "labelling": self.labelling,
            "condition": self.condition,
            "reliability": self.reliability,
            "adaptivity": self.adaptivity,
            "steps": self.steps,
            "candidates": dict(self.candidates),
            "expected_labels": self.expected_labels,
            "clauses": [c.to_dict() for c in self.clauses],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SampleSize":
        """The inverse of :meth:`to_dict`: a plan made elsewhere (the master plans once per
        configuration; the worker's evaluation then need not import SciPy's planning).
        ``rows`` and ``expected_labels`` are derived, so they are not read.

        Raises
        ------
        SampleSizeError
            A document that is not a plan (a missing key, a value of the wrong type).
        """
        try:
            return cls(labels=int(d["labels"]), unlabeled=int(d["unlabeled"]), method=str(d["method"]),
                       clauses=tuple(ClauseSize.from_dict(c) for c in d["clauses"]),
                       condition=str(d["condition"]), reliability=float(d["reliability"]),
                       adaptivity=str(d["adaptivity"]), steps=int(d["steps"]),
                       labelling=str(d.get("labelling", "full")),
                       candidates={str(k): int(v) for k, v in dict(d.get("candidates") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SampleSizeError(f"not a sample-size plan: {type(exc).__name__}: {exc}") from None


def _needs_labels(clause: Clause) -> bool:
    return bool(clause.variables & {"n", "o"})


def _plan_clause(i: int, clause: Clause, method: str, log_dc: float, ctx: techniques.Context) -> ClauseSize:
    if method in ("betting", "sequential"):
        # half of the share for the exact plan's bound, half for the betting bound / test
        base = _plan_clause(i, clause, "exact", log_dc - math.log(2.0), ctx)
        wrap = techniques.Betting if method == "betting" else techniques.Sequential
        t: techniques.Technique = wrap(techniques.get(base.technique))
        n, params = base.labels or base.unlabeled, dict(base.params)
        if method == "sequential":
            params.update(_expected(clause, log_dc - math.log(2.0), n, ctx))
    else:
        sized = [(t, *t.size(clause, log_dc, ctx)) for t in techniques.candidates(clause, method, ctx)]
        t, n, params = min(sized, key=lambda o: o[1])
    if _needs_labels(clause):
        return ClauseSize(i, str(clause), t.name, n, 0, log_dc, params)
    return ClauseSize(i, str(clause), t.name, 0, n, log_dc, params)


def _expected(clause: Clause, log_half: float, n_max: int, ctx: techniques.Context) -> dict[str, float]:
    """Expected rows the sequential test consumes when the clause's true value is 2 eps on
    its passing side (``C + 2 eps`` for '>'), by seeded simulation: one variable as a
    Bernoulli; ``n - o`` with the most informative rows the condition allows."""
    from easeml_buildbot.estimator import sequential

    sign = 1.0 if clause.op == ">" else -1.0
    truth = clause.const + sign * 2 * clause.eps
    a, b = techniques.value_range(clause)
    if len(clause.terms) == 1:
        (t,) = clause.terms
        v = truth / t.coef
        if not 0 <= v <= 1:
            return {}

        def sampler(rng, size):
            return t.coef * (rng.random(size) < v)
    elif is_difference(clause):
        nu = min(1.0, ctx.p if ctx.p is not None else 1.0)
        if abs(truth) > nu:
            return {}
        pp, pm = (nu + truth) / 2, (nu - truth) / 2

        def sampler(rng, size):
            u = rng.random(size)
            return np.where(u < pp, 1.0, np.where(u < pp + pm, -1.0, 0.0))
    else:
        return {}
    rows = sequential.expected_rows(sampler, clause, a, b, log_half, n_max)
    return {"expected_at": truth, "expected_rows": rows}


def _plan(cond: Condition, method: str, log_use: float, labelling: str) -> tuple[int, int, tuple[ClauseSize, ...]]:
    m = len(cond.clauses)
    log_dc = log_use - math.log(m)
    ctx = techniques.Context.of(cond)
    sizes = tuple(_plan_clause(i, c, method, log_dc, ctx) for i, c in enumerate(cond.clauses))
    if labelling == "active":
        # only the samples where the models disagree need labels for an n - o clause; the
        # expected count at the worst case d = p is p * N (the rest only need predictions)
        p = ctx.p
        out = []
        for s, c in zip(sizes, cond.clauses):
            if is_difference(c) and p is not None:
                s = ClauseSize(s.index, s.clause, techniques.Active(techniques.get(s.technique)).name,
                               math.ceil(p * s.labels), s.labels, s.log_delta,
                               {**s.params, "disagreements_high": float(stats.binom.ppf(0.999, s.labels, p))})
            out.append(s)
        sizes = tuple(out)
    labels = max(s.labels for s in sizes)
    unlabeled = max(s.unlabeled for s in sizes)
    return labels, unlabeled, sizes


def valid_methods(condition: Condition) -> tuple[str, ...]:
    """Named methods that apply to the condition (``bennett`` needs the d-pattern)."""
    pattern = d_bound(condition) is not None and any(is_difference(c) for c in condition.clauses)
    return ("hoeffding", "bennett", "exact", "betting", "sequential") if pattern else \
        ("hoeffding", "exact", "betting", "sequential")


AUTO_EXCLUDES = ("sequential",)  # a worst case above exact's: chosen by name, for its expected labels


def sample_size(
    condition: Condition | str,
    reliability: float,
    adaptivity: str = "full",
    steps: int = 32,
    method: str = "auto",
    labelling: str = "full",
) -> SampleSize:
    """Samples needed so every clause is decided within its ±eps with probability
    ``reliability`` over ``steps`` uses of one test set."""
    cond = parse_condition(condition) if isinstance(condition, str) else condition
    adaptivity = normalize_adaptivity(adaptivity)
    method = normalize_method(method)
    if labelling not in LABELLINGS:
        raise SampleSizeError(f"labelling must be 'full' or 'active', not {labelling!r}")
    log_use = log_use_delta(reliability, adaptivity, steps)
    valid = valid_methods(cond)
    if labelling == "active" and "bennett" not in valid:
        raise SampleSizeError("active labelling needs a clause 'd < p +/- eps' and a clause on 'n - o'")
    if labelling == "active" and not all(is_difference(c) or c.variables == {"d"} for c in cond.clauses):
        raise SampleSizeError("active labelling allows only clauses on 'd' and on 'n - o' "
                              "(any other clause needs a label on every row)")
    if method != "auto" and method not in valid:
        raise SampleSizeError(
            f"method '{method}' does not apply to this condition: it needs a clause 'd < p +/- eps' "
            "and a clause on 'n - o' (valid here: " + ", ".join(valid) + ")"
        )
    try:
        todo = tuple(m for m in valid if m not in AUTO_EXCLUDES) if method == "auto" else (method,)
        plans = {m: _plan(cond, m, log_use, labelling) for m in todo}
    except (OverflowError, ZeroDivisionError, MemoryError) as exc:
        # eps near 0 or a huge coefficient: no finite test set decides the condition
        raise SampleSizeError(
            f"'{cond}' needs more samples than can be computed ({exc.__class__.__name__}): "
            "widen a tolerance (+/- eps) or use smaller coefficients") from None
    chosen = min(plans, key=lambda m: (plans[m][0], plans[m][1], valid.index(m)))
    labels, unlabeled, sizes = plans[chosen]
    return SampleSize(
        labels=labels,
        unlabeled=unlabeled,
        method=chosen,
        clauses=sizes,
        condition=str(cond),
        reliability=reliability,
        adaptivity=adaptivity,
        steps=int(steps),
        labelling=labelling,
        candidates={m: plans[m][0] for m in plans},
    )


def plan_mismatch(plan: SampleSize, condition: Condition | str, reliability: float,
                  adaptivity: str = "full", steps: int = 32, method: str = "auto",
                  labelling: str = "full") -> str | None:
    """Why ``plan`` is not :func:`sample_size`'s plan for these arguments, or None.

    A cheap check (no planning): the plan names its condition, reliability, adaptivity,
    steps and labelling; its method is the one asked for, or under ``auto`` a method
    ``auto`` chooses among. A plan handed over from elsewhere is used only if it is for
    exactly this configuration."""
    cond = parse_condition(condition) if isinstance(condition, str) else condition
    want = {"condition": str(cond), "reliability": float(reliability),
            "adaptivity": normalize_adaptivity(adaptivity), "steps": int(steps), "labelling": labelling}
    for key, value in want.items():
        if getattr(plan, key) != value:
            return f"the plan's {key} is {getattr(plan, key)!r}, the configuration's {value!r}"
    asked = normalize_method(method)
    allowed = ((asked,) if asked != "auto"
               else tuple(m for m in valid_methods(cond) if m not in AUTO_EXCLUDES))
    if plan.method not in allowed:
        return f"the plan's method is {plan.method!r}, the configuration asks for {asked!r}"
    if len(plan.clauses) != len(cond.clauses) or any(
            c.index != i or c.clause != str(k) for i, (c, k) in enumerate(zip(plan.clauses, cond.clauses))):
        return "the plan's clauses are not the condition's"
    return None


D_HINT_P, D_HINT_EPS = 0.1, 0.01  # the d clause check-config suggests


def d_clause_hint(condition: Condition | str, reliability: float, adaptivity: str = "full", steps: int = 32,
                  method: str = "auto", p: float = D_HINT_P, eps: float = D_HINT_EPS) -> str | None:
    """A sentence for ``check-config`` when a condition on ``n - o`` has no ``d < p`` clause
    and adding ``d < p +/- eps`` would need fewer labels, else None.

    Parameters
    ----------
    condition, reliability, adaptivity, steps, method
        As for :func:`sample_size`.
    p, eps : float
        The suggested clause ``d < p +/- eps``.

    Returns
    -------
    str or None
        E.g. "adding `d < 0.1 +/- 0.01` (if the models disagree on fewer than 10% of rows)
        needs 3,375 labels of 9,040 rows with predictions (338 with active labelling) instead
        of 30,195".
    """
    cond = parse_condition(condition) if isinstance(condition, str) else condition
    if d_bound(cond) is not None or not any(is_difference(c) for c in cond.clauses):
        return None
    now = sample_size(cond, reliability, adaptivity, steps, method)
    extra = parse_condition(f"d < {p} +/- {eps}").clauses[0]
    with_d = Condition(cond.clauses + (extra,), f"{cond} /\\ {extra}")
    better = sample_size(with_d, reliability, adaptivity, steps, method)
    if better.labels >= now.labels:
        return None
    try:
        active = sample_size(with_d, reliability, adaptivity, steps, method, labelling="active").labels
        act = f" ({active:,} with active labelling)"
    except SampleSizeError:
        act = ""
    rows = f" of {better.rows:,} rows with predictions" if better.rows > better.labels else ""
    return (f"adding `{extra}` (if the models disagree on fewer than {p:.0%} of rows) needs "
            f"{better.labels:,} labels{rows}{act} instead of {now.labels:,}")
