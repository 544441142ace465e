"""The small PNG chart in result emails: each variable's estimate over a test set's uses.

Owners read a verdict better next to its history: one panel per variable (``n``, ``o``,
``d``) and per multi-term clause (e.g. ``n - o``), the estimate of every use with its
interval, and the condition's threshold as a line with its ``+/- eps`` tolerance band. The
x axis is the test set's whole budget of H uses, each use labelled by the commit it
evaluated (short sha), so the owners see both which commit scored what and how much of the
budget is left.

Everything here is a pure function of plain data (the ledger's per-use ``result`` JSON),
so it can run in a thread off the reactor and be tested without Buildbot. The Agg backend
is selected explicitly: no display, no GUI toolkit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)

from matplotlib.figure import Figure  # noqa: E402  (after the backend is chosen)

VARIABLE_TITLES: Mapping[str, str] = {
    "n": "n: new model accuracy",
    "o": "o: old model accuracy",
    "d": "d: fraction of predictions that differ",
}
OUTCOME_COLOURS: Mapping[str, str] = {"pass": "#1a7f37", "fail": "#cf222e", "unknown": "#6e7781"}


@dataclass(frozen=True)
class Threshold:
    """One clause of a condition, ``sum(coef * var) op const +/- eps``."""

    terms: tuple[tuple[float, str], ...]
    op: str
    const: float
    eps: float = 0.0

    @property
    def label(self) -> str:
        out = ""
        for i, (coef, var) in enumerate(self.terms):
            sign = "-" if coef < 0 else "+"
            mag = abs(coef)
            body = var if math.isclose(mag, 1.0) else f"{mag:g}{var}"
            out += (f"-{body}" if sign == "-" else body) if i == 0 else f" {sign} {body}"
        return out

    def on_variable(self) -> tuple[str, float, str] | None:
        """``(var, threshold, op)`` when the clause is about a single variable."""
        if len(self.terms) != 1:
            return None
        coef, var = self.terms[0]
        if coef == 0:
            return None
        op = self.op if coef > 0 else {">": "<", "<": ">"}.get(self.op, self.op)
        return var, self.const / coef, op


@dataclass(frozen=True)
class UsePoint:
    """The plotted facts of one use: estimates, intervals and the outcome."""

    number: int
    estimates: Mapping[str, float]
    intervals: Mapping[str, tuple[float, float]]
    outcome: str
    clause_estimates: tuple[tuple[float, tuple[float, float] | None] | None, ...] = ()
    commit: str | None = None

    @property
    def label(self) -> str:
        """The x tick: the commit's short sha (or ``#k`` when the use has no commit)."""
        return self.commit[:7] if self.commit else f"#{self.number}"


def thresholds_from_condition(condition: Any) -> tuple[Threshold, ...]:
    """Thresholds of a ``Condition`` (or its text, parsed by the estimator's parser)."""
    if condition is None:
        return ()
    if isinstance(condition, str):
        from easeml_buildbot.estimator.condition import parse_condition

        condition = parse_condition(condition)
    out = []
    for clause in condition.clauses:
        terms = tuple((float(t.coef), str(t.var)) for t in clause.terms)
        out.append(Threshold(terms, str(clause.op), float(clause.const), float(clause.eps or 0.0)))
    return tuple(out)


def verdict_of(result: Mapping[str, Any]) -> Mapping[str, Any]:
    """The verdict in a ledger ``result`` (worker JSON with ``verdict``, or a bare verdict)."""
    inner = result.get("verdict")
    return inner if isinstance(inner, Mapping) else result


def _pair(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = value
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        return None
    if math.isnan(lo) or math.isnan(hi):
        return None
    return lo, hi


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def use_points(uses: Sequence[Mapping[str, Any]]) -> list[UsePoint]:
    """Normalise ledger uses (``{"use_number", "result"}`` or bare result JSON) to points.

    Uses without estimates (released, crashed) are skipped: there is nothing to plot.
    """
    points = []
    for i, use in enumerate(uses, start=1):
        result = use.get("result", use) if isinstance(use, Mapping) else {}
        if not isinstance(result, Mapping):
            continue
        verdict = verdict_of(result)
        raw_est = verdict.get("estimates") or {}
        estimates = {k: v for k, v in ((k, _number(v)) for k, v in raw_est.items()) if v is not None}
        if not estimates:
            continue
        intervals = {
            k: p for k, p in ((k, _pair(v)) for k, v in (verdict.get("intervals") or {}).items()) if p
        }
        clause_estimates: list[tuple[float, tuple[float, float] | None] | None] = []
        for clause in verdict.get("clauses") or ():
            est = _number(clause.get("estimate")) if isinstance(clause, Mapping) else None
            ivl = _pair(clause.get("interval")) if isinstance(clause, Mapping) else None
            clause_estimates.append(None if est is None else (est, ivl))
        number = use.get("use_number", use.get("number", i)) if isinstance(use, Mapping) else i
        outcome = str(verdict.get("outcome") or use.get("verdict") or "unknown")
        commit = use.get("commit") if isinstance(use, Mapping) else None
        points.append(
            UsePoint(int(number), estimates, intervals, outcome, tuple(clause_estimates),
                     str(commit) if commit else None)
        )
    return points


def _combined(point: UsePoint, index: int, threshold: Threshold):
    """Estimate and interval of a multi-term clause's left-hand side for one use.

    Prefers the clause's own interval (from the verdict); otherwise the sum of the
    per-variable intervals, which is a conservative (wider) interval for the combination.
    """
    if index < len(point.clause_estimates) and point.clause_estimates[index] is not None:
        return point.clause_estimates[index]
    est, lo, hi = 0.0, 0.0, 0.0
    for coef, var in threshold.terms:
        if var not in point.estimates:
            return None
        est += coef * point.estimates[var]
        ivl = point.intervals.get(var)
        if ivl is None:
            lo = hi = math.nan
            continue
        a, b = coef * ivl[0], coef * ivl[1]
        lo, hi = lo + min(a, b), hi + max(a, b)
    return est, (None if math.isnan(lo) else (lo, hi))


def render_chart(
    uses: Sequence[Mapping[str, Any]],
    thresholds: Sequence[Threshold] = (),
    *,
    title: str | None = None,
    highlight: int | None = None,
    budget: int | None = None,
    dpi: int = 100,
) -> bytes:
    """PNG bytes of ``chart_figure`` (same arguments)."""
    fig = chart_figure(uses, thresholds, title=title, highlight=highlight, budget=budget, dpi=dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def chart_figure(
    uses: Sequence[Mapping[str, Any]],
    thresholds: Sequence[Threshold] = (),
    *,
    title: str | None = None,
    highlight: int | None = None,
    budget: int | None = None,
    dpi: int = 100,
) -> Figure:
    """The chart: one panel per variable the condition uses and per multi-term clause, over the uses.

    ``highlight`` is the use number of the current build (drawn larger; default the last).
    ``budget`` is H: the x axis spans uses 1..H (uses not spent yet stay empty), each tick
    labelled by its use's commit; without it the axis spans the uses drawn.
    The output is deterministic for the same input and matplotlib version (no timestamp
    or software tag in the PNG), so docs/email-example-chart.png can be regenerated.
    """
    points = use_points(uses)
    variables = [v for v in ("n", "o", "d") if any(v in p.estimates for p in points)]
    variables += sorted({v for p in points for v in p.estimates} - set(variables))
    if thresholds:  # only the variables the condition uses (no d panel under n - o > ...)
        used = {var for th in thresholds for _, var in th.terms}
        variables = [v for v in variables if v in used]
    single = {}
    multi: list[tuple[int, Threshold]] = []
    for i, th in enumerate(thresholds):
        on = th.on_variable()
        if on is None:
            multi.append((i, th))
        else:
            single.setdefault(on[0], []).append((on[1], th.eps, on[2]))
            if on[0] not in variables:
                variables.append(on[0])
    panels = [("var", v) for v in variables] + [("clause", m) for m in multi]
    if highlight is None and points:
        highlight = points[-1].number

    rows = max(1, len(panels))
    height = 1.6 * rows + 0.9
    fig = Figure(figsize=(6.4, height), dpi=dpi)
    # fixed margins (inches) instead of a layout engine: half the rendering time
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - (0.7 if title else 0.35) / height, bottom=0.8 / height,
                        hspace=0.42)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    if not points:
        axes[0].text(0.5, 0.5, "no scored uses yet", ha="center", va="center",
                     transform=axes[0].transAxes)
    for ax, (kind, what) in zip(axes, panels):
        series = []
        if kind == "var":
            ax.set_title(VARIABLE_TITLES.get(what, what), fontsize=9, loc="left")
            for p in points:
                if what in p.estimates:
                    series.append((p.number, p.estimates[what], p.intervals.get(what), p.outcome))
            lines = single.get(what, [])
        else:
            index, th = what
            ax.set_title(f"{th.label} (clause {index + 1})", fontsize=9, loc="left")
            for p in points:
                c = _combined(p, index, th)
                if c is not None:
                    series.append((p.number, c[0], c[1], p.outcome))
            lines = [(th.const, th.eps, th.op)]
        groups: dict[tuple[str, bool, bool], list[tuple[float, float, Any]]] = {}
        for x, y, ivl, outcome in series:  # one draw call per style, not per point
            colour = OUTCOME_COLOURS.get(outcome, OUTCOME_COLOURS["unknown"])
            groups.setdefault((colour, x == highlight, ivl is not None), []).append((x, y, ivl))
        for (colour, big, has_ivl), pts in sorted(groups.items()):
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            if has_ivl:
                err = [[max(0.0, p[1] - p[2][0]) for p in pts], [max(0.0, p[2][1] - p[1]) for p in pts]]
                ax.errorbar(xs, ys, yerr=err, fmt="o", color=colour, ms=7 if big else 4,
                            capsize=3, lw=1.2)
            else:
                ax.plot(xs, ys, "o", color=colour, ms=7 if big else 4)
        if len(series) > 1:
            ax.plot([s[0] for s in series], [s[1] for s in series], "-", color="#8c959f",
                    lw=0.8, zorder=0)
        for value, eps, op in lines:
            ax.axhline(value, color="#0969da", ls="--", lw=1.0,
                       label=f"threshold {op} {value:g}" + (f" ± {eps:g}" if eps else ""))
            if eps:
                ax.axhspan(value - eps, value + eps, color="#0969da", alpha=0.08, lw=0)
        if lines:
            ax.legend(loc="best", fontsize=7, frameon=False)
        ax.grid(True, alpha=0.3, lw=0.5)
        ax.tick_params(labelsize=8)
    last = max([budget or 0] + [p.number for p in points])
    span = f"of the {budget} uses of the test set" if budget else "of the test set"
    axes[-1].set_xlabel(
        f"commit, by use {span}  (green: pass, red: fail, grey: unknown; bars: intervals)", fontsize=8
    )
    if last:
        by_number = {p.number: p.label for p in points}
        every = max(1, math.ceil(last / 16))  # at most ~16 labels, whatever H is
        ticks = [k for k in range(1, last + 1) if k in by_number or (k - 1) % every == 0 or k == last]
        axes[-1].set_xlim(0.5, last + 0.5)
        axes[-1].set_xticks(ticks)
        axes[-1].set_xticklabels([by_number.get(k, "unused") for k in ticks], rotation=45, ha="right",
                                 fontsize=7, fontfamily="monospace")
    return fig
