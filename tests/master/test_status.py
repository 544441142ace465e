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
