"""What a finished evaluation means for the developer: conclusion, title and Markdown summary.

Pure functions over build properties, shared by the check-run and console reporters, so
both say the same thing. Why here and not in the reporter: what the pull request may show
is a security decision (under adaptivity ``none``/``full`` one bit at most, never
accuracies or intervals), and it is easiest to review and test in one small place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from easeml_buildbot.master.rotation import DEFAULT_DATASET, rotation_text

from easeml_buildbot.master.outcome import STATUSES, EvaluationOutcome, from_build_properties  # noqa: F401


@dataclass(frozen=True)
class Outcome:
    conclusion: str  # GitHub check-run conclusion
    title: str
    summary: str  # Markdown


def build_properties(build: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: value}`` of a build dict's ``properties`` (Buildbot keeps ``(value, source)``)."""
    return {k: v[0] if isinstance(v, (list, tuple)) else v for k, v in (build.get("properties") or {}).items()}


def evaluation_of(build: Mapping[str, Any]) -> EvaluationOutcome:
    """The build's typed outcome (the ``easeml_outcome`` property the last step wrote from
    the ledger's answers). A build without one (it ended before its last step, or predates
    the property) gets one from its status alone: no counts are re-derived for it."""
    p = build_properties(build)
    stored = from_build_properties(p)
    if stored is not None:
        return stored
    status = p.get("easeml_status") if p.get("easeml_status") in STATUSES else "infra_error"
    from easeml_buildbot.master.outcome import kind_for

    verdict = p.get("easeml_verdict") if status == "evaluated" else None
    return EvaluationOutcome(status=status, kind=kind_for(status), cause=str(p.get("easeml_cause") or ""),
                             verdict=verdict, verdict_visible=verdict in ("pass", "fail"),
                             condition=p.get("easeml_condition"), reliability=p.get("easeml_reliability"),
                             adaptivity=p.get("easeml_adaptivity"), samples_used=p.get("easeml_samples_used"),
                             samples_needed=p.get("easeml_samples_needed"), uses_left=p.get("easeml_uses_left"),
                             use_state="released" if p.get("easeml_released") else None)


def outcome_for(build: Mapping[str, Any]) -> Outcome:
    """Map a completed build dict (with properties) to the check run's conclusion and text."""
    p = build_properties(build)
    ev = evaluation_of(build)
    status, cause = ev.status, ev.cause
    lines = _facts(p, ev)
    url = build.get("url")
    link = f"\n\nDetails: [build log]({url})" if url else ""

    if build.get("results") == 6:  # CANCELLED
        return Outcome("cancelled", "Evaluation cancelled", "The build was cancelled before a verdict." + link)
    if status == "evaluated":
        verdict = ev.shown_verdict
        if verdict in ("pass", "fail"):
            ok = verdict == "pass"
            title = "Condition satisfied" if ok else "Condition not satisfied"
            nxt = ("Merge when ready: the merged commit becomes the new baseline `o`." if ok else
                   "Improve the model and push again; each push spends one use of the test set.")
            return Outcome("success" if ok else "failure", title,
                           _md(title, lines, nxt) + link)
        if p.get("easeml_awaiting_labels"):  # labels on demand (never set under adaptivity none)
            title = "Evaluated; the verdict follows once the owners have added labels"
            return Outcome("neutral", title, _md(title, lines, "The repository's owners were asked to label "
                                                 "test rows; the check is re-run once they have.") + link)
        nxt = ("Under this adaptivity the pull request shows no verdict; the repository's owners "
               "received the result by email.")
        return Outcome("neutral", "Evaluated; results were sent to the owners",
                       _md("Evaluated; results were sent to the owners", lines, nxt) + link)
    if status == "exhausted":
        return Outcome("action_required", "Test set exhausted",
                       _md("Test set exhausted", lines, f"this commit was not evaluated. {cause}".strip()
                           + " The repository's owners rotate the test set:\n\n"
                           + rotation_text(str(p.get("easeml_dataset_path") or DEFAULT_DATASET),
                                           samples=ev.samples_needed)) + link)
    if status == "missing_dataset" and ev.kind == "dataset_too_small":
        need = f" of at least {ev.samples_needed} labelled rows" if ev.samples_needed else ""
        return Outcome("action_required", "Test set too small",
                       _md("Test set too small", lines, f"{_code(cause)}\nThe condition needs more "
                           f"labelled samples than the test set has. The repository's owners must encrypt a "
                           f"larger test set{need} (`easeml dataset encrypt`) and commit it to the default "
                           "branch; no use of the test set was spent.") + link)
    if status == "missing_dataset" and ev.kind == "key":
        return Outcome("action_required", "Test set could not be decrypted",
                       _md("Test set could not be decrypted", lines, f"{_code(cause)}\nEither it was not "
                           "encrypted to this service's public key (the owners re-encrypt it with "
                           "`easeml_pub.asc`), or the service's key is unavailable on the worker (the "
                           "operator has been told). No use of the test set was spent.") + link)
    if status == "missing_dataset" and ev.kind == "dataset_invalid":
        return Outcome("action_required", "Test set unreadable",
                       _md("Test set unreadable", lines, f"{_code(cause)}\nThe owners fix the test set "
                           "(format, label column) and commit it re-encrypted to the default branch.") + link)
    if status == "missing_dataset":
        return Outcome("action_required", "Test set missing",
                       _md("Test set missing", lines, f"{cause} Commit an encrypted test set to the "
                           "default branch (see docs/datasets.md).".strip()) + link)
    if status == "protected_changed":
        changed = ", ".join(f"`{c}`" for c in (p.get("easeml_protected_changed") or []))
        return Outcome("neutral", "Protected files changed: takes effect after merge",
                       _md("Protected files changed", lines,
                           f"This pull request changes {changed or 'protected files'}. They are read from the "
                           "base branch only, so the change takes effect after merge; the model was "
                           "not evaluated. Split the change into its own pull request.") + link)
    if status == "not_evaluated":
        # a pull request into a branch the default branch's .easeml.yml does not list; it
        # reports on its own check run (``easeml/ci (into BRANCH)``), never on the default
        # branch's, so "skipped" here cannot satisfy the default branch's protection
        return Outcome("skipped", "Not evaluated: the base branch is not tested",
                       _md("Not evaluated", [], f"{cause}. No use of the test set was spent. Open the "
                           "pull request against the default branch to have the model evaluated (with "
                           "the default branch's configuration and test set).") + link)
    if status == "config_error":
        return Outcome("failure", "Configuration error", _md("Configuration error", lines, _code(cause)) + link)
    if status == "model_error":
        return Outcome("failure", "The model could not be evaluated",
                       _md("The model could not be evaluated", lines,
                           f"{_code(cause)}\nNo use of the test set was spent." if ev.released
                           else _code(cause)) + link)
    return Outcome("failure", "CI infrastructure error",
                   _md("CI infrastructure error", lines, _code(cause or "the build failed before a verdict")
                       + "\nRe-run the check; tell the operator if it persists.") + link)


def _facts(p: Mapping[str, Any], ev: EvaluationOutcome) -> list[str]:
    out = []
    if ev.condition:
        out.append(f"- **Condition:** `{ev.condition}`"
                   + (f" (reliability {ev.reliability}, adaptivity `{ev.adaptivity}`)"
                      if ev.reliability else ""))
    if ev.samples_used is not None:
        out.append(f"- **Samples used:** {ev.samples_used}")
    elif ev.samples_needed is not None:
        out.append(f"- **Samples needed:** {ev.samples_needed}")
    if ev.use_number is not None and ev.budget:
        out.append(f"- **Use of the test set:** {ev.use_number} of {ev.budget}"
                   + (" (given back: nothing saw the test set)" if ev.released else ""))
    if ev.uses_left is not None:
        out.append(f"- **Uses of the test set left:** {ev.uses_left}")
    if p.get("easeml_base_sha"):
        out.append(f"- **Compared against:** `{str(p['easeml_base_sha'])[:12]}`")
    return out


def _md(title: str, facts: list[str], nxt: str) -> str:
    body = f"### {title}\n\n" + ("\n".join(facts) + "\n\n" if facts else "")
    return body + f"**Next steps:** {nxt}"


def _code(text: str) -> str:
    text = (text or "").strip()
    if "\n" in text:
        return f"\n```\n{text[-3000:]}\n```\n"
    return text


def console_line(build: Mapping[str, Any]) -> str:
    """One log line per finished build for the local forge (no accuracies, ever)."""
    p = build_properties(build)
    o = outcome_for(build)
    ev = evaluation_of(build)
    return (f"easeml: {p.get('easeml_repo', '?')}@{str(p.get('easeml_head_sha') or p.get('got_revision') or '?')[:12]} "
            f"status={ev.status} verdict={o.conclusion} "
            f"samples_used={_dash(ev.samples_used)} uses_left={_dash(ev.uses_left)} kind={ev.kind or '-'} "
            f"title={o.title!r} summary={ev.summary_line()!r}")


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)
