"""What a mail states, gathered once: the build's facts and, for a verdict, the ledger's.

``BuildFacts`` comes from the finished build's properties (``facts_from_build``);
``Evaluation`` from the ledger's record of the use (``evaluation_from``): the verdict dict
the worker wrote (``estimator.decision.Verdict.to_dict``: per-clause estimate, interval and
technique, per-variable estimates and intervals) and the test set's budget. The templates
render these named fields only, never a dump of the result JSON.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any

from twisted.internet import defer

from easeml_buildbot.master import chart as chart_module
from easeml_buildbot.master.mail.policy import MailPolicy
from easeml_buildbot.master.outcome import KINDS as CAUSE_KINDS
from easeml_buildbot.master.status import build_properties

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "data/test.csv.gpg"
VARIABLE_LABELS = {"n": "new model accuracy", "o": "old model accuracy", "d": "predictions that differ"}

#: cause kinds (``CAUSE_KINDS``): the typed outcome's (build property ``easeml_outcome``,
#: written once by the master's last step, master/outcome.py); never parsed out of a cause


@dataclass(frozen=True)
class BuildFacts:
    """What a finished build tells the mailer (all non-secret build properties)."""

    repo: str
    sha: str = ""
    status: str | None = None  # easeml_status
    results: int | None = None  # Buildbot results code
    pr_number: int | None = None
    pr_url: str | None = None
    branch: str | None = None
    build_url: str | None = None
    dataset_id: str | None = None
    use_id: Any = None
    cause: str | None = None
    cause_kind: str | None = None  # one of CAUSE_KINDS when the build recorded it
    owners: tuple[str, ...] = ()
    author: str | None = None
    worker: str | None = None
    builder: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    failed_step: str | None = None  # operator mail: the step that broke and its log's tail
    log_tail: str | None = None

    @property
    def short_sha(self) -> str:
        return self.sha[:7] if self.sha else "unknown"

    @property
    def infra(self) -> bool:
        """A service-side failure (the operator's): no verdict, nothing the data scientists did."""
        from buildbot.process.results import EXCEPTION, RETRY

        return (self.status == "infra_error" or self.cause_kind == "infrastructure"
                or (self.status is None and self.results in (EXCEPTION, RETRY)))

    @property
    def key_problem(self) -> bool:
        """The test set is on the branch but could not be decrypted (service key, or wrong recipient).

        The outcome's cause kind says it (the worker names it from the exception type)."""
        return self.status == "missing_dataset" and self.cause_kind == "key"


@dataclass(frozen=True)
class ClauseRow:
    """One clause of the verdict as the owners' table shows it."""

    quantity: str  # e.g. "n - o"
    estimate: float | None
    interval: tuple[float, float] | None
    op: str
    threshold: float
    eps: float
    outcome: str  # pass | fail | unknown (before the mode)
    technique: str | None = None

    @property
    def margin(self) -> float | None:
        """Estimate minus threshold, signed so that positive favours the clause."""
        if self.estimate is None:
            return None
        return (self.estimate - self.threshold) if self.op == ">" else (self.threshold - self.estimate)


@dataclass(frozen=True)
class VariableRow:
    name: str
    label: str
    estimate: float | None
    interval: tuple[float, float] | None


@dataclass(frozen=True)
class Evaluation:
    """The owner-visible facts of one scored use (from the ledger)."""

    outcome: str
    raw: str | None
    condition: str | None
    mode: str | None
    reliability: float | None
    adaptivity: str | None
    steps: int | None
    estimates: Mapping[str, float | None]
    intervals: Mapping[str, tuple[float, float] | None]
    samples_used: int | None
    use_number: int | None
    budget: int | None
    uses_left: int | None
    retired: bool = False
    retired_reason: str | None = None
    dataset: str = DEFAULT_DATASET
    samples_needed: int | None = None  # labelled samples the condition needs (next test set)
    clauses: tuple[ClauseRow, ...] = ()
    variables: tuple[VariableRow, ...] = ()  # only those the condition uses
    method: str | None = None
    commit: str | None = None

    @property
    def guarantee(self) -> str:
        return guarantee_sentence(self.reliability, self.adaptivity, self.steps or self.budget, self.mode)


def guarantee_sentence(reliability: float | None, adaptivity: str | None, steps: int | None,
                       mode: str | None) -> str:
    """One sentence: what the intervals of a verdict guarantee (probability, reliability, adaptivity)."""
    if reliability is None or not steps:
        return ("Each interval contains the true value with the reliability the repository asked for; "
                "a clause passes only when its whole interval is past the threshold.")
    delta = 1 - float(reliability)
    adapt = {
        "full": "even though the developers saw every earlier verdict and may have adapted to it",
        "firstChange": "as the test set retires at its first pass",
        "none": "as long as the developers see no verdicts (they get none from this service)",
    }.get(str(adaptivity), f"under adaptivity {adaptivity}")
    unknown = "a fail" if mode == "fp-free" else "a pass" if mode == "fn-free" else "by the mode"
    return (f"With probability at least {float(reliability):g} (δ = {delta:.2g}), every interval above and "
            f"those of all {steps} uses of this test set contain the true values at once, {adapt}; a clause "
            f"passes only when its whole interval is past the threshold, fails when the whole interval falls "
            f"short of it, and is otherwise unknown, which mode {mode or 'unknown'} counts as {unknown}.")


@dataclass(frozen=True)
class OutgoingMail:
    kind: str  # 'evaluation' | 'author' | 'exhaustion' | 'operator' | 'note'
    recipients: tuple[str, ...]
    message: Any  # email.message.EmailMessage


# --------------------------------------------------------------------------- ledger


def _as_dict(record: Any) -> dict[str, Any]:
    """A ledger ``UseRecord``/``LedgerEntry`` (frozen dataclasses; None: no state) as a dict."""
    if record is None:
        return {}
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def result_of(use: Mapping[str, Any]) -> Mapping[str, Any]:
    """The use's ``result`` JSON (the ledger's JSON column gives a dict), or {} when none."""
    result = use.get("result")
    return result if isinstance(result, Mapping) else {}


def _lookup(key: str, *sources: Mapping[str, Any] | None) -> Any:
    for src in sources:
        if isinstance(src, Mapping) and src.get(key) is not None:
            return src[key]
    return None


def to_float(value: Any) -> float | None:
    try:
        x = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return None if x is None or math.isnan(x) else x


def to_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _pair(value: Any) -> tuple[float, float] | None:
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return None if math.isnan(lo) or math.isnan(hi) else (lo, hi)


def read_ledger(ledger_url: str, repo: str, dataset_id: str,
                led: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The test set's uses (oldest first, as dicts with ``result`` parsed) and its state.

    ``led``: an open ``Ledger`` (the master's, from its EasemlService: no engine per mail);
    without it one is opened on ``ledger_url`` for this read (tools, tests)."""
    if led is not None:
        return snapshot(led, repo, dataset_id)
    from easeml_buildbot.custody.ledger import Ledger

    with Ledger(ledger_url) as own:
        return snapshot(own, repo, dataset_id)


def snapshot(led: Any, repo: str, dataset_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(uses, state)`` of one test set of a ``Ledger``, as plain dicts."""
    uses = [_as_dict(u) for u in led.uses(repo, dataset_id)]
    for u in uses:
        u["result"] = result_of(u)
    return uses, _as_dict(led.state(repo, dataset_id))


def _clause_rows(condition: str | None, verdict: Mapping[str, Any]) -> tuple[ClauseRow, ...]:
    if not condition:
        return ()
    try:
        thresholds = chart_module.thresholds_from_condition(condition)
    except Exception as exc:  # noqa: BLE001  (a mail with the verdict but no table beats none)
        logger.warning("easeml email: cannot parse the condition %r: %s", condition, exc)
        return ()
    decided = {to_int(c.get("index")): c for c in verdict.get("clauses") or () if isinstance(c, Mapping)}
    rows = []
    for i, th in enumerate(thresholds):
        c = decided.get(i) or {}
        rows.append(ClauseRow(quantity=th.label, estimate=to_float(c.get("estimate")),
                              interval=_pair(c.get("interval")), op=th.op, threshold=th.const, eps=th.eps,
                              outcome=str(c.get("outcome") or "unknown"), technique=c.get("technique")))
    return tuple(rows)


def _variable_rows(condition: str | None, estimates: Mapping[str, float | None],
                   intervals: Mapping[str, tuple[float, float] | None]) -> tuple[VariableRow, ...]:
    used: Sequence[str]
    try:
        from easeml_buildbot.estimator.condition import parse_condition

        names = parse_condition(condition).variables if condition else set(estimates)
        used = [v for v in ("n", "o", "d") if v in names] + sorted(set(names) - {"n", "o", "d"})
    except Exception:  # noqa: BLE001  (the clause table already warned)
        used = [v for v in ("n", "o", "d") if estimates.get(v) is not None]
    return tuple(VariableRow(v, VARIABLE_LABELS.get(v, v), estimates.get(v), intervals.get(v)) for v in used)


def evaluation_from(use: Mapping[str, Any], state: Mapping[str, Any],
                    config: Mapping[str, Any] | None = None) -> Evaluation:
    """Owner-visible facts of one ledger use: only named aggregate fields are read."""
    result = result_of(use)
    verdict = chart_module.verdict_of(result)
    cfg = result.get("config") if isinstance(result.get("config"), Mapping) else {}
    sources = (verdict, result, cfg, config or {}, use, state)
    estimates = {k: to_float(v) for k, v in (verdict.get("estimates") or {}).items()}
    intervals = {k: _pair(v) for k, v in (verdict.get("intervals") or {}).items()}
    budget = to_int(_lookup("budget", state, use) or _lookup("steps", *sources))
    use_number = to_int(_lookup("use_number", use, result))
    left = to_int(_lookup("remaining", use))
    if left is None and budget is not None and use_number is not None:
        left = max(0, budget - use_number)
    if left is None:
        left = to_int(state.get("remaining"))
    outcome = str(_lookup("outcome", verdict) or use.get("verdict") or "unknown")
    condition = _lookup("condition_text", *sources) or _lookup("condition", *sources)
    condition = None if condition is None else str(condition)
    return Evaluation(
        outcome=outcome,
        raw=_lookup("raw", verdict),
        condition=condition,
        mode=_lookup("mode", *sources),
        reliability=to_float(_lookup("reliability", *sources)),
        adaptivity=_lookup("adaptivity", *sources),
        steps=to_int(_lookup("steps", *sources)),
        estimates=estimates,
        intervals=intervals,
        samples_used=to_int(_lookup("samples_used", verdict, result, use)),
        use_number=use_number,
        budget=budget,
        uses_left=left,
        retired=bool(state.get("retired")),
        retired_reason=state.get("retired_reason"),
        dataset=str(_lookup("dataset", cfg, config or {}) or DEFAULT_DATASET),
        samples_needed=to_int(_lookup("samples_needed", verdict, state, config or {})),
        clauses=_clause_rows(condition, verdict),
        variables=_variable_rows(condition, estimates, intervals),
        method=_lookup("method", verdict),
        commit=use.get("commit"),
    )


def samples_needed(condition: str | None, reliability: float | None, adaptivity: str | None,
                   steps: int | None) -> int | None:
    """Labelled samples a new test set needs for the current condition (estimator)."""
    if not condition or reliability is None or not adaptivity or not steps:
        return None
    try:
        from easeml_buildbot.estimator.condition import parse_condition
        from easeml_buildbot.estimator.samples import sample_size

        s = sample_size(parse_condition(condition), reliability=reliability,
                        adaptivity=adaptivity, steps=steps)
        return int(s.labels)
    except Exception as exc:  # noqa: BLE001  (a mail must not fail over a hint)
        logger.warning("easeml email: cannot compute the sample size: %s", exc)
        return None


# --------------------------------------------------------------------------- build

_PR_REF = re.compile(r"refs/pull/(\d+)/")


def _prop(props: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in props and props[name] not in (None, ""):
            return props[name]
    return None


def facts_from_build(build: Mapping[str, Any], build_url: str | None, users: Sequence[str],
                     policy: MailPolicy) -> BuildFacts:
    """Read the easeml_* properties (and Buildbot's own) of a finished build."""
    props = build_properties(build)
    ss = ((build.get("buildset") or {}).get("sourcestamps") or [{}])[0] or {}
    branch = _prop(props, "branch") or ss.get("branch")
    pr = _prop(props, "easeml_pr")
    if pr is None and branch:
        m = _PR_REF.search(str(branch))
        pr = m.group(1) if m else None
    repo = str(_prop(props, "easeml_repo", "project") or ss.get("project") or "unknown")
    pr_number = to_int(pr)
    pr_url = f"{policy.web_url}/{repo}/pull/{pr_number}" if pr_number is not None and "/" in repo else None
    owners = _prop(props, "easeml_email") or ()
    if isinstance(owners, str):
        owners = [a for a in re.split(r"[\s,;]+", owners) if a]
    author = _prop(props, "easeml_author_email")
    if author is None:
        emails = [u for u in users if isinstance(u, str) and "@" in parseaddr(u)[1]]
        author = emails[0] if emails else None
    config: dict[str, Any] = {}
    for prop, key in (("easeml_condition", "condition"), ("easeml_adaptivity", "adaptivity"),
                      ("easeml_reliability", "reliability"), ("easeml_steps", "steps"),
                      ("easeml_mode", "mode"), ("easeml_dataset_path", "dataset"),
                      ("easeml_samples_needed", "samples_needed"),
                      ("easeml_uses_left", "uses_left"), ("easeml_retired", "retired")):
        if props.get(prop) is not None:
            config[key] = props[prop]
    outcome = props.get("easeml_outcome")
    kind = outcome.get("kind") if isinstance(outcome, Mapping) else None
    return BuildFacts(
        repo=repo,
        sha=str(_prop(props, "easeml_head_sha", "got_revision", "revision") or ss.get("revision") or ""),
        status=_prop(props, "easeml_status"),
        results=build.get("results"),
        pr_number=pr_number,
        pr_url=pr_url,
        branch=branch,
        build_url=build_url,
        dataset_id=_prop(props, "easeml_dataset_id"),
        use_id=_prop(props, "easeml_use_id"),
        cause=_prop(props, "easeml_cause"),
        cause_kind=str(kind) if kind in CAUSE_KINDS else None,
        owners=tuple(str(o) for o in owners),
        author=author,
        worker=_prop(props, "workername"),
        builder=(build.get("builder") or {}).get("name"),
        config=config,
    )


_PRIVATE_LINE = re.compile(r"-----(BEGIN|END) |(passphrase|password|secret)\s*[:=]", re.IGNORECASE)


@defer.inlineCallbacks
def failed_step_tail(master, buildid: int, lines: int = 20):
    """``(step name, last lines of its stdio)`` of a build's first failed step, for operators.

    Step logs are already visible in the Buildbot UI; lines that look like key material or
    credentials are dropped anyway.
    """
    from buildbot.process.results import SKIPPED, SUCCESS, WARNINGS

    steps = yield master.data.get(("builds", buildid, "steps"))
    failed = [s for s in steps or () if s.get("results") not in (None, SUCCESS, SKIPPED, WARNINGS)]
    if not failed:
        return None, None
    step = failed[0]
    logs = yield master.data.get(("steps", step["stepid"], "logs"))
    log = next((lg for lg in logs or () if lg.get("name") == "stdio"), None)
    if log is None:
        return step.get("name"), None
    content = yield master.data.get(("logs", log["logid"], "contents"))
    text = (content or {}).get("content") or ""
    out = []
    for line in text.splitlines()[-lines:]:
        if log.get("type") == "s" and line[:1] in ("o", "e", "h"):
            line = line[1:]
        if not _PRIVATE_LINE.search(line):
            out.append(line[:300])
    return step.get("name"), "\n".join(out) or None
