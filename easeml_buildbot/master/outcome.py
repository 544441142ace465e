"""The outcome of one evaluation build, typed, written once from the ledger's answer.

The last master step (``steps.Finalize``) builds one :class:`EvaluationOutcome` from what the
build's steps recorded: the status and cause kind they set, and the ledger's own answer to
``reserve`` / ``commit`` / ``release`` (use number, budget, uses left, whether the use was
counted). It stores the *developer view* of it as the build property ``easeml_outcome``;
every surface reads that property instead of re-deriving counts or sniffing cause texts:
the check run and console line (``status.py``), Buildbot's build summary (``steps.py``) and
``easeml demo``.

Build properties are readable without login in the Buildbot UI and REST API, so the stored
view holds only what the developer of the pull request may see: the verdict only when
``custody.policy.developer_may_see`` allows it under the test set's adaptivity, and never an
estimate or an interval (one bit at most per use; the owners get the numbers by mail, from
the ledger). Pure code: no Buildbot import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

PROPERTY = "easeml_outcome"

#: easeml_status values (coarse; metrics and mails key on them)
STATUSES = ("evaluated", "exhausted", "missing_dataset", "config_error", "model_error",
            "protected_changed", "not_evaluated", "infra_error", "requeued")

#: why a build ended without a verdict (None: it has one). ``dataset_*`` and ``key`` are all
#: status ``missing_dataset`` ("the test set could not be used"); the kind says whose problem
#: it is: ``key`` the service key or the recipient key, ``dataset_too_small`` the owners' set
#: has fewer rows than the condition needs, ``dataset_missing`` no encrypted set on the
#: default branch, ``dataset_invalid`` a set that cannot be read (format, label column, damage)
KINDS = ("model", "config", "dataset_missing", "dataset_too_small", "dataset_invalid", "key",
         "infrastructure", "exhausted", "protected", "not_evaluated", "requeued")

_KIND_OF_STATUS = {"model_error": "model", "config_error": "config", "missing_dataset": "dataset_missing",
                   "infra_error": "infrastructure", "exhausted": "exhausted",
                   "protected_changed": "protected", "not_evaluated": "not_evaluated",
                   "requeued": "requeued"}

#: result.json (status, cause) -> (easeml_status, kind); the worker's cause is a field it sets
#: from the exception type (runner/evaluate.py), never parsed out of a message
_WORKER_DATASET_CAUSES = {"dataset_too_small": "dataset_too_small", "key": "key",
                          "missing_dataset": "dataset_missing", "dataset": "dataset_invalid"}


def kind_for(status: str | None, kind: str | None = None) -> str | None:
    """The cause kind: the one a step named, else the default of its status."""
    if status == "evaluated":
        return None
    if kind:
        if kind not in KINDS:
            raise ValueError(f"unknown outcome kind {kind!r} (one of {', '.join(KINDS)})")
        return kind
    return _KIND_OF_STATUS.get(status or "", "infrastructure")


def from_worker(result: Mapping[str, Any]) -> tuple[str, str]:
    """(easeml_status, kind) of a result.json that carries no verdict."""
    status, cause = result.get("status"), result.get("cause")
    if status == "model_error":
        return "model_error", "model"
    if status == "config_error":
        return "config_error", "config"
    if status == "dataset_error":
        return "missing_dataset", _WORKER_DATASET_CAUSES.get(str(cause), "dataset_invalid")
    return "infra_error", "infrastructure"


@dataclass(frozen=True)
class Clause:
    """One clause of the condition. ``outcome``/``estimate``/``lower``/``upper`` are owner-only:
    they are None in the developer view (the only view ever stored in a build property)."""

    text: str
    outcome: str | None = None
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None


@dataclass(frozen=True)
class EvaluationOutcome:
    """What one evaluation build decided, as the ledger recorded it.

    ``use_state`` is the ledger's state of the build's use: ``committed`` (counted),
    ``released`` (given back: nothing saw the test set) or None (no use was reserved).
    ``uses_left`` and ``budget`` are the ledger's answer to the last call on that use.
    ``verdict`` is the recorded verdict; in the developer view it is None unless the
    adaptivity lets the developer see it (``verdict_visible``).
    """

    status: str
    kind: str | None = None
    cause: str = ""
    verdict: str | None = None
    verdict_visible: bool = False
    condition: str | None = None
    reliability: float | None = None
    adaptivity: str | None = None
    samples_used: int | None = None
    samples_needed: int | None = None
    use_number: int | None = None
    budget: int | None = None
    uses_left: int | None = None
    use_state: str | None = None
    retired: bool = False
    reused: bool = False
    clauses: tuple[Clause, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown easeml status {self.status!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"unknown outcome kind {self.kind!r}")

    # ------------------------------------------------------------------ views
    @property
    def counted(self) -> bool:
        """The use was spent (the model may have seen the test set)."""
        return self.use_state == "committed"

    @property
    def released(self) -> bool:
        return self.use_state == "released"

    @property
    def shown_verdict(self) -> str | None:
        return self.verdict if self.verdict_visible else None

    def developer_view(self) -> "EvaluationOutcome":
        """What the pull request's developer may read: no hidden verdict, no estimate, and no
        per-clause outcome (with several clauses that would be more than the one bit per use
        the guarantee allows)."""
        return replace(self, verdict=self.shown_verdict, clauses=tuple(Clause(c.text) for c in self.clauses))

    def to_property(self) -> dict[str, Any]:
        """The JSON stored as the ``easeml_outcome`` build property (the developer view)."""
        d = asdict(self.developer_view())
        d["clauses"] = [{"text": c["text"], "outcome": c["outcome"]} for c in d["clauses"]]
        return d

    @classmethod
    def from_property(cls, d: Mapping[str, Any]) -> "EvaluationOutcome":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["clauses"] = tuple(Clause(**{k: v for k, v in c.items() if k in ("text", "outcome")})
                              for c in d.get("clauses") or ())
        return cls(**kw)

    # ------------------------------------------------------------------ words
    @property
    def headline(self) -> str:
        """One or two words: ``pass``, ``fail``, ``evaluated`` (verdict to the owners),
        ``model error``, ``test set too small``, ..."""
        if self.status == "evaluated":
            return self.shown_verdict or "evaluated"
        return HEADLINES.get(self.kind or "", self.status.replace("_", " "))

    def budget_text(self) -> str | None:
        """``use 2 of 8 · 6 left`` / ``use 3 of 8 given back · 6 left`` / ``6 left``."""
        if self.uses_left is None:
            return None
        if self.use_number is not None and self.budget:
            use = f"use {self.use_number} of {self.budget}"
            if self.released:
                use += " given back"
            return f"{use} · {self.uses_left} left"
        return f"{self.uses_left} left"

    def summary_line(self) -> str:
        """Buildbot's build summary, e.g. ``fail · n > 0.85 ± 0.05 · use 2 of 8 · 6 left``."""
        parts = [self.headline]
        if self.condition:
            parts.append(condition_text(self.condition))
        if self.budget_text():
            parts.append(self.budget_text())
        return " · ".join(parts)


HEADLINES = {"model": "model error", "config": "configuration error", "dataset_missing": "no test set",
             "dataset_too_small": "test set too small", "dataset_invalid": "test set unreadable",
             "key": "test set key problem", "infrastructure": "service error",
             "exhausted": "test set exhausted", "protected": "protected files changed",
             "not_evaluated": "not evaluated", "requeued": "queued again for a GPU worker"}


def condition_text(condition: str) -> str:
    """``n > 0.85 +/- 0.05`` as people write it: ``n > 0.85 ± 0.05``."""
    return " ".join(str(condition).replace("+/-", "±").split())


def from_build_properties(props: Mapping[str, Any]) -> EvaluationOutcome | None:
    """The stored outcome of a finished build, None for a build that has none (an older build,
    or one that ended before its last step)."""
    d = props.get(PROPERTY)
    if not isinstance(d, Mapping):
        return None
    try:
        return EvaluationOutcome.from_property(d)
    except (TypeError, ValueError):
        return None
