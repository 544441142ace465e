"""What a check run says for each build status; nothing numeric about the model leaks."""

from __future__ import annotations

import re

import pytest

from easeml_buildbot.master.status import console_line, outcome_for


def build(**props):
    return {"results": 0, "url": "http://bb/#/builders/1/builds/1",
            "properties": {k: (v, "easeml") for k, v in props.items()}}


BASE = dict(easeml_condition="n - o > 0.02 +/- 0.01", easeml_reliability=0.9999, easeml_samples_used=4212,
            easeml_uses_left=7, easeml_base_sha="a" * 40, easeml_repo="o/r")


@pytest.mark.parametrize("props,conclusion", [
    (dict(easeml_status="evaluated", easeml_verdict="pass", easeml_adaptivity="full"), "success"),
    (dict(easeml_status="evaluated", easeml_verdict="fail", easeml_adaptivity="full"), "failure"),
    (dict(easeml_status="evaluated", easeml_adaptivity="none"), "neutral"),
    (dict(easeml_status="exhausted", easeml_cause="budget of 8 uses spent"), "action_required"),
    (dict(easeml_status="missing_dataset", easeml_cause="data/test.csv.gpg not on main"), "action_required"),
    (dict(easeml_status="protected_changed", easeml_protected_changed=[".easeml.yml"]), "neutral"),
    (dict(easeml_status="config_error", easeml_cause=".easeml.yml:3: key 'stepz'"), "failure"),
    (dict(easeml_status="model_error", easeml_cause="build_failed: no such image"), "failure"),
    (dict(easeml_status="infra_error"), "failure"),
    (dict(), "failure"),
])
def test_conclusions(props, conclusion):
    o = outcome_for(build(**BASE, **props))
    assert o.conclusion == conclusion
    assert "n - o > 0.02 +/- 0.01" in o.summary and "Next steps" in o.summary


def test_summary_has_counts_but_no_accuracies():
    o = outcome_for(build(**BASE, easeml_status="evaluated", easeml_adaptivity="none"))
    assert "4212" in o.summary and "7" in o.summary
    assert "results were sent to the owners" in o.title
    # the only decimals allowed are the ones in the condition and the reliability
    text = o.summary.replace("0.02", "").replace("0.01", "").replace("0.9999", "")
    assert not re.search(r"\d\.\d", text), text


def test_protected_changes_are_listed():
    o = outcome_for(build(**BASE, easeml_status="protected_changed",
                          easeml_protected_changed=[".easeml.yml", "data/test.csv.gpg"]))
    assert "`.easeml.yml`" in o.summary and "after merge" in o.summary


def test_cancelled_build():
    b = build(**BASE, easeml_status="evaluated")
    b["results"] = 6
    assert outcome_for(b).conclusion == "cancelled"


def test_console_line():
    line = console_line(build(**BASE, easeml_status="evaluated", easeml_verdict="pass", easeml_head_sha="b" * 40))
    assert "o/r@bbbbbbbbbbbb" in line and "verdict=success" in line and "samples_used=4212" in line


def test_the_stored_outcome_is_what_every_surface_reads():
    """issue 13: the check run and the console line read the typed outcome the last step
    wrote from the ledger's answer, not counts re-derived from other properties."""
    from easeml_buildbot.master.outcome import EvaluationOutcome

    ev = EvaluationOutcome(status="model_error", kind="model", cause="build: the image did not build",
                           condition="n > 0.85 +/- 0.05", use_number=3, budget=8, uses_left=6,
                           use_state="released")
    b = build(**{**BASE, "easeml_uses_left": 5, "easeml_status": "model_error"}, easeml_outcome=ev.to_property())
    o = outcome_for(b)
    assert "Uses of the test set left:** 6" in o.summary and "left:** 5" not in o.summary
    assert "No use of the test set was spent" in o.summary
    line = console_line(b)
    assert "uses_left=6" in line and "kind=model" in line
    assert "summary='model error · n > 0.85 ± 0.05 · use 3 of 8 given back · 6 left'" in line


@pytest.mark.parametrize("kind,title", [("dataset_too_small", "Test set too small"),
                                        ("key", "Test set could not be decrypted"),
                                        ("dataset_invalid", "Test set unreadable"),
                                        ("dataset_missing", "Test set missing")])
def test_test_set_problems_are_told_by_kind(kind, title):
    from easeml_buildbot.master.outcome import EvaluationOutcome

    ev = EvaluationOutcome(status="missing_dataset", kind=kind, cause="x: y", samples_needed=1369)
    o = outcome_for(build(**BASE, easeml_status="missing_dataset", easeml_outcome=ev.to_property()))
    assert (o.conclusion, o.title) == ("action_required", title)
    if kind == "dataset_too_small":
        assert "at least 1369 labelled rows" in o.summary


def test_the_developer_view_is_one_bit_at_most():
    from easeml_buildbot.master.outcome import Clause, EvaluationOutcome

    clauses = (Clause("n > 0.8", "pass", 0.91, 0.86, 0.96), Clause("d < 0.1", "fail", 0.12, 0.07, 0.17))
    full = EvaluationOutcome(status="evaluated", verdict="fail", verdict_visible=True, clauses=clauses)
    hidden = EvaluationOutcome(status="evaluated", verdict="fail", verdict_visible=False, clauses=clauses)
    assert full.to_property()["verdict"] == "fail" and hidden.to_property()["verdict"] is None
    for ev in (full, hidden):
        stored = ev.to_property()
        assert stored["clauses"] == [{"text": "n > 0.8", "outcome": None}, {"text": "d < 0.1", "outcome": None}]
        assert "0.9" not in str(stored) and "0.1" not in str(stored).replace("d < 0.1", "")


def test_an_exhausted_test_set_tells_the_one_rotation_procedure():
    """issue 13: the check run said "ask the operator", the mail and the guide another thing;
    all now quote master/rotation.py."""
    from easeml_buildbot.master.rotation import rotation_text

    o = outcome_for(build(**BASE, easeml_status="exhausted", easeml_cause="budget of 8 uses spent",
                          easeml_dataset_path="data/test.csv.gpg"))
    assert o.conclusion == "action_required"
    assert rotation_text("data/test.csv.gpg") in o.summary and "operator" not in o.summary
