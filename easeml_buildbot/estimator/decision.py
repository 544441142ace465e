"""Three-valued decisions: score predictions, bound each clause, resolve unknowns by mode.

A clause is bounded by the same technique the sample-size plan chose for it, at the same
failure share (``ClauseSize.log_delta``), but with the samples actually available: with
exactly the planned N the half-width is (at most) the clause's ``eps``; with more it is
narrower and still valid at the promised reliability over H uses. Each bound is one-sided
in the direction that could make the verdict wrong (docs/statistics.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from easeml_buildbot.estimator import sequential, techniques
from easeml_buildbot.estimator.condition import Condition, parse_condition
from easeml_buildbot.estimator.samples import SampleSize, sample_size
from easeml_buildbot.estimator.tails import (  # noqa: F401  (re-exported: the public names of before)
    chernoff_bounds,
    clopper_pearson,
    hoeffding_width,
)
from easeml_buildbot.estimator.techniques import is_difference

MODES = ("fp-free", "fn-free")
OUTCOMES = ("pass", "fail", "unknown")


class EmptyIntervalError(RuntimeError):
    """A clause's lower bound came out above its upper bound: an internal error (or a failed
    confidence bound), never a verdict. The message quotes no estimate."""


class DecisionError(ValueError):
    """Inputs that cannot be scored (length mismatch, missing old predictions, ...)."""


class UnlabelledDisagreement(DecisionError):
    """Active labelling: a row where the two models disagree has no label, and the verdict
    depends on it (no clause on ``d`` alone already fails the condition)."""


@dataclass(frozen=True)
class ClauseVerdict:
    """One clause: its estimate, the interval it was decided on, and the result."""

    index: int
    clause: str
    estimate: float
    lower: float
    upper: float
    outcome: str  # pass | fail | unknown
    technique: str
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "clause": self.clause,
            "estimate": self.estimate,
            "interval": [self.lower, self.upper],
            "outcome": self.outcome,
            "technique": self.technique,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClauseVerdict":
        lo, hi = d["interval"]
        return cls(int(d["index"]), d["clause"], float(d["estimate"]), float(lo), float(hi),
                   d["outcome"], d["technique"], int(d["samples"]))


@dataclass(frozen=True)
class Verdict:
    """Everything a report needs about one evaluation."""

    outcome: str  # pass | fail, after the mode
    raw: str  # pass | fail | unknown, before the mode
    mode: str
    condition: str
    estimates: dict[str, float | None]
    intervals: dict[str, tuple[float, float] | None]
    samples_used: int
    samples_needed: int
    method: str
    reliability: float
    adaptivity: str
    steps: int
    clauses: tuple[ClauseVerdict, ...]
    deciding_clause: int | None  # index of the clause that decided (None: all passed)
    notes: tuple[str, ...] = field(default_factory=tuple)
    labels_consumed: int | None = None  # labelled rows whose labels the verdict read (the ledger's count)

    @property
    def enough_samples(self) -> bool:
        return self.samples_used >= self.samples_needed

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "raw": self.raw,
            "mode": self.mode,
            "condition": self.condition,
            "estimates": dict(self.estimates),
            "intervals": {k: (list(v) if v is not None else None) for k, v in self.intervals.items()},
            "samples_used": self.samples_used,
            "samples_needed": self.samples_needed,
            "enough_samples": self.enough_samples,
            "method": self.method,
            "reliability": self.reliability,
            "adaptivity": self.adaptivity,
            "steps": self.steps,
            "clauses": [c.to_dict() for c in self.clauses],
            "deciding_clause": self.deciding_clause,
            "notes": list(self.notes),
            "labels_consumed": self.labels_consumed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verdict":
        return cls(
            outcome=d["outcome"],
            raw=d["raw"],
            mode=d["mode"],
            condition=d["condition"],
            estimates={k: (None if v is None else float(v)) for k, v in d["estimates"].items()},
            intervals={k: (None if v is None else (float(v[0]), float(v[1]))) for k, v in d["intervals"].items()},
            samples_used=int(d["samples_used"]),
            samples_needed=int(d["samples_needed"]),
            method=d["method"],
            reliability=float(d["reliability"]),
            adaptivity=d["adaptivity"],
            steps=int(d["steps"]),
            clauses=tuple(ClauseVerdict.from_dict(c) for c in d["clauses"]),
            deciding_clause=d.get("deciding_clause"),
            notes=tuple(d.get("notes", ())),
            labels_consumed=d.get("labels_consumed"),
        )


def _as_array(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DecisionError(f"{what} must be one value per row, got shape {a.shape}")
    return a


def _labelled_mask(y: np.ndarray, labelled: Sequence[bool] | np.ndarray | None) -> np.ndarray | None:
    """Which rows carry a label: the explicit mask, or labels that are None/NaN/''."""
    if labelled is not None:
        m = np.asarray(labelled, dtype=bool)
        if m.shape != y.shape:
            raise DecisionError(f"labelled mask has {m.size} entries for {y.size} labels")
        return m
    if y.dtype.kind == "f":
        missing = np.isnan(y)
    elif y.dtype.kind == "O":
        missing = np.array([v is None or v == "" or (isinstance(v, float) and math.isnan(v)) for v in y])
    else:
        return None
    return ~missing if missing.any() else None


def _check_active(cond: Condition, new: np.ndarray, old: np.ndarray | None, mask: np.ndarray) -> None:
    bad = [str(c) for c in cond.clauses if not (is_difference(c) or c.variables == {"d"})]
    if bad or old is None:
        raise DecisionError(
            "some rows have no label, which only a condition made of 'd' and 'n - o' clauses allows "
            f"(active labelling); clause '{bad[0] if bad else cond}' needs a label on every row")



def _unlabelled_disagreement(new: np.ndarray, old: np.ndarray, mask: np.ndarray) -> UnlabelledDisagreement | None:
    unlabelled_disagreements = np.flatnonzero(~mask & (new != old))
    if not len(unlabelled_disagreements):
        return None
    i = int(unlabelled_disagreements[0])
    return UnlabelledDisagreement(f"row {i + 1} has no label but the two models disagree there "
                                  f"({len(unlabelled_disagreements)} such rows); active labelling needs a label "
                                  "on every row where the models disagree")


def _settled_without_labels(cond: Condition, verdicts: list[ClauseVerdict], mode: str) -> bool:
    """The outcome is fail whatever the clauses that need labels say: a clause on ``d`` alone
    fails, or (fp-free, where unknown becomes fail) one is unknown."""
    label_free = [v for v, c in zip(verdicts, cond.clauses) if not c.variables & {"n", "o"}]
    return any(v.outcome == "fail" for v in label_free) or (
        mode == "fp-free" and any(v.outcome == "unknown" for v in label_free))


def _outcome(op: str, const: float, lo: float, hi: float) -> str:
    if op == ">":
        return "pass" if lo > const else "fail" if hi < const else "unknown"
    return "pass" if hi < const else "fail" if lo > const else "unknown"


def decide(
    condition: Condition | str,
    labels: Sequence[Any] | np.ndarray,
    new_predictions: Sequence[Any] | np.ndarray,
    old_predictions: Sequence[Any] | np.ndarray | None = None,
    *,
    reliability: float,
    adaptivity: str,
    steps: int,
    mode: str,
    method: str = "auto",
    plan: SampleSize | None = None,
    labelled: Sequence[bool] | np.ndarray | None = None,
    rows: int | None = None,
) -> Verdict:
    """Score predictions against labels and decide the condition (pass/fail/unknown -> mode).

    Active labelling: ``labelled`` (or labels that are None/NaN/"" on some rows) marks the
    rows that carry a label. Unlabelled rows are allowed only where the two models agree
    and only for conditions made of ``d`` and ``n - o`` clauses: there the label cannot
    change ``n - o`` (docs/statistics.md). ``n`` and ``o`` are then not estimated.

    ``rows``: decide on the first ``rows`` rows only (in the given order), as the service
    does with the plan's ``rows`` (``easeml evaluate`` passes ``plan.rows``); None: all."""
    cond = parse_condition(condition) if isinstance(condition, str) else condition
    if mode not in MODES:
        raise DecisionError(f"mode must be 'fp-free' or 'fn-free', not {mode!r}")
    plan = plan or sample_size(cond, reliability, adaptivity, steps, method)
    if plan.condition != str(cond) or len(plan.clauses) != len(cond.clauses):
        raise DecisionError(f"the sample-size plan is for '{plan.condition}', not for '{cond}'")
    y = _as_array(labels, "labels")
    new = _as_array(new_predictions, "new predictions")
    if len(new) != len(y):
        raise DecisionError(f"the new model gave {len(new)} predictions for {len(y)} labels")
    if rows is not None:
        if int(rows) != rows or rows < 1:
            raise DecisionError(f"rows must be a positive integer, not {rows!r}")
        total = len(y)
        y, new = y[:rows], new[:rows]
        if old_predictions is not None:
            old_predictions = _as_array(old_predictions, "old predictions")
            if len(old_predictions) != total:
                raise DecisionError(f"the old model gave {len(old_predictions)} predictions for {total} labels")
            old_predictions = old_predictions[:rows]
        if labelled is not None:
            labelled = np.asarray(labelled, dtype=bool)[:rows]
    n = len(y)
    if n == 0:
        raise DecisionError("no test samples")
    need_old = bool(cond.variables & {"o", "d"})
    old = None
    if old_predictions is not None:
        old = _as_array(old_predictions, "old predictions")
        if len(old) != n:
            raise DecisionError(f"the old model gave {len(old)} predictions for {n} labels")
    elif need_old:
        raise DecisionError("the condition uses 'o' or 'd' but there are no old-model predictions")

    mask = _labelled_mask(y, labelled)
    active = mask is not None and not bool(mask.all())
    missing = None
    if active:
        _check_active(cond, new, old, mask)
        missing = _unlabelled_disagreement(new, old, mask)
    new_ok = new == y
    indicators: dict[str, np.ndarray] = {"n": new_ok if not active else new_ok & mask}
    if old is not None:
        old_ok = old == y
        indicators["o"] = old_ok if not active else old_ok & mask
        indicators["d"] = new != old
    data = techniques.Data.of(indicators)
    counts = data.counts

    ctx = techniques.Context.of(cond)
    try:
        chosen = [techniques.get(cs.technique) for cs in plan.clauses]
    except KeyError as exc:
        raise DecisionError(str(exc)) from None
    if any(isinstance(t, techniques.Sequential) for t in chosen):
        if missing is not None:
            raise missing
        verdicts, used = _sequential_verdicts(cond, plan, chosen, indicators, n, ctx)
    else:
        verdicts, used = [], n
        for cs, clause, technique in zip(plan.clauses, cond.clauses, chosen):
            value, lo, hi = technique.bounds(clause, cs.log_delta, data, ctx)
            verdicts.append(ClauseVerdict(cs.index, str(clause), value, lo, hi,
                                          _outcome(clause.op, clause.const, lo, hi), cs.technique, n))
        if missing is not None:
            # labels on demand: rows that disagree have no label. Only when a label-free clause
            # already makes the outcome fail may we decide; the clauses needing labels are then
            # not decided (the trivial interval of their per-row value)
            if not _settled_without_labels(cond, verdicts, mode):
                raise missing
            for k, clause in enumerate(cond.clauses):
                if clause.variables & {"n", "o"}:
                    a, b = techniques.value_range(clause)
                    v = verdicts[k]
                    verdicts[k] = ClauseVerdict(v.index, v.clause, 0.0, a, b, "unknown", v.technique, n)
    for v in verdicts:
        if not v.lower <= v.upper:
            raise EmptyIntervalError(f"clause {v.index + 1} ({v.technique}): the confidence interval "
                                     "is empty (lower bound above upper bound); no verdict")

    fails = [v.index for v in verdicts if v.outcome == "fail"]
    unknowns = [v.index for v in verdicts if v.outcome == "unknown"]
    if fails:
        raw, deciding = "fail", fails[0]
    elif unknowns:
        raw, deciding = "unknown", unknowns[0]
    else:
        raw, deciding = "pass", None
    outcome = raw if raw != "unknown" else ("fail" if mode == "fp-free" else "pass")

    # per-variable intervals for reports: one-sided bounds at the clause share split over
    # the condition's variables (each side holds with prob. >= 1 - that share)
    log_v = plan.clauses[0].log_delta - math.log(max(1, len(cond.variables)))
    estimates: dict[str, float | None] = {"n": None, "o": None, "d": None}
    intervals: dict[str, tuple[float, float] | None] = {"n": None, "o": None, "d": None}
    if used < n:  # sequential: estimates on the rows consumed; no fixed-N interval at a stopping time
        counts = techniques.Data.of(indicators, rows=used).counts
    for v in ("n", "o", "d"):
        if v in counts and not (active and v in ("n", "o")):
            estimates[v] = counts[v] / used
            if plan.method == "sequential":
                continue
            if plan.method in ("exact", "betting"):
                intervals[v] = clopper_pearson(counts[v], n, log_v)
            else:
                w = hoeffding_width(n, log_v)
                intervals[v] = (max(0.0, counts[v] / n - w), min(1.0, counts[v] / n + w))
    needs_labels = bool(cond.variables & {"n", "o"})
    labels_consumed = 0 if not needs_labels else (int(mask[:used].sum()) if active else used)
    notes = []
    if used < n:
        notes.append(f"sequential: stopped after {used} of {n} rows (the condition was determined)")
    if missing is not None:
        notes.append("rows where the models disagree were not all labelled: not needed, a clause on d "
                     "alone decides (fail); the clauses on n and o were not decided")
    if mask is not None and active and missing is None:
        notes.append(f"active labelling: {int(mask.sum())} of {n} rows labelled (all rows where the models "
                     "disagree); n and o are not estimated, n - o is")
    if n < plan.rows and used == n:
        notes.append(f"only {n} test samples, the condition needs {plan.rows}: intervals are wider than its tolerance")
    return Verdict(
        outcome=outcome,
        raw=raw,
        mode=mode,
        condition=str(cond),
        estimates=estimates,
        intervals=intervals,
        samples_used=used,
        samples_needed=plan.rows,
        method=plan.method,
        reliability=plan.reliability,
        adaptivity=plan.adaptivity,
        steps=plan.steps,
        clauses=tuple(verdicts),
        deciding_clause=deciding,
        notes=tuple(notes),
        labels_consumed=labels_consumed,
    )


def _sequential_verdicts(cond: Condition, plan: SampleSize, chosen: list, indicators: Mapping[str, np.ndarray],
                         n: int, ctx: techniques.Context) -> tuple[list[ClauseVerdict], int]:
    """Run the sequential test (docs/statistics.md): clauses decided early keep the interval
    of the confidence sequence at their decision time; clauses still open after the plan's
    N rows are decided by the fixed-N half on exactly those rows (or on all n if fewer)."""
    full = techniques.Data.of(indicators)
    inputs, halves = [], []
    for cs, clause in zip(plan.clauses, cond.clauses):
        a, b = techniques.value_range(clause)
        inputs.append((clause, full.values(clause), a, b))
        halves.append(cs.log_delta - math.log(2.0))
    runs, used = sequential.run(inputs, halves, plan.rows, n)
    determined = any(r is not None and r.outcome == "fail" for r in runs) or all(r is not None for r in runs)
    if not determined:
        used = min(n, plan.rows)
    fixed = techniques.Data.of(indicators, rows=used)
    out = []
    for cs, (clause, y, a, b), technique, r, half in zip(plan.clauses, inputs, chosen, runs, halves):
        if r is not None:
            rows = r.rows
            lo, hi = sequential.bounds_at(y[:rows], a, b, half)
            if r.outcome == "pass" and clause.op == ">" or r.outcome == "fail" and clause.op == "<":
                lo = max(lo, math.nextafter(clause.const, math.inf))  # C itself was rejected
            else:
                hi = min(hi, math.nextafter(clause.const, -math.inf))
            value, outcome = float(y[:rows].mean()), r.outcome
        elif not determined:
            rows = used
            value, lo, hi = technique.bounds(clause, cs.log_delta, fixed, ctx)
            outcome = _outcome(clause.op, clause.const, lo, hi)
        else:  # another clause failed first: this one was not needed
            rows = used
            lo, hi = sequential.bounds_at(y[:rows], a, b, half)
            value, outcome = float(y[:rows].mean()), "unknown"
        out.append(ClauseVerdict(cs.index, str(clause), value, lo, hi, outcome, cs.technique, rows))
    return out, used
