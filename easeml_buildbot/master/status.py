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

STATUSES = ("evaluated", "exhausted", "missing_dataset", "config_error", "model_error",
            "protected_changed", "not_evaluated", "infra_error")


@dataclass(frozen=True)
class Outcome:
    conclusion: str  # GitHub check-run conclusion
    title: str
    summary: str  # Markdown


def build_properties(build: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: value}`` of a build dict's ``properties`` (Buildbot keeps ``(value, source)``)."""
    return {k: v[0] if isinstance(v, (list, tuple)) else v for k, v in (build.get("properties") or {}).items()}


def outcome_for(build: Mapping[str, Any]) -> Outcome:
    """Map a completed build dict (with properties) to the check run's conclusion and text."""
    p = build_properties(build)
    status = p.get("easeml_status") or "infra_error"
    cause = p.get("easeml_cause") or ""
    lines = _facts(p)
    url = build.get("url")
    link = f"\n\nDetails: [build log]({url})" if url else ""

    if build.get("results") == 6:  # CANCELLED
        return Outcome("cancelled", "Evaluation cancelled", "The build was cancelled before a verdict." + link)
    if status == "evaluated":
        verdict = p.get("easeml_verdict")
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
                       _md("Test set exhausted", lines, "Ask the operator for a fresh test set "
                           f"(`easeml` custody tools); this commit was not evaluated. {cause}".strip()) + link)
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
                           f"{_code(cause)}\nNo use of the test set was spent." if p.get("easeml_released")
                           else _code(cause)) + link)
    return Outcome("failure", "CI infrastructure error",
                   _md("CI infrastructure error", lines, _code(cause or "the build failed before a verdict")
                       + "\nRe-run the check; tell the operator if it persists.") + link)


def _facts(p: Mapping[str, Any]) -> list[str]:
    out = []
    if p.get("easeml_condition"):
        out.append(f"- **Condition:** `{p['easeml_condition']}`"
                   + (f" (reliability {p['easeml_reliability']}, adaptivity `{p.get('easeml_adaptivity')}`)"
                      if p.get("easeml_reliability") else ""))
    if p.get("easeml_samples_used") is not None:
        out.append(f"- **Samples used:** {p['easeml_samples_used']}")
    elif p.get("easeml_samples_needed") is not None:
        out.append(f"- **Samples needed:** {p['easeml_samples_needed']}")
    if p.get("easeml_uses_left") is not None:
        out.append(f"- **Uses of the test set left:** {p['easeml_uses_left']}")
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
    return (f"easeml: {p.get('easeml_repo', '?')}@{str(p.get('easeml_head_sha') or p.get('got_revision') or '?')[:12]} "
            f"status={p.get('easeml_status', 'infra_error')} verdict={o.conclusion} "
            f"samples_used={p.get('easeml_samples_used', '-')} uses_left={p.get('easeml_uses_left', '-')} "
            f"title={o.title!r}")
