"""`easeml demo`'s exit code: the demo is the README's first command, so an outcome other
than the one it expects (or a ledger that disagrees) must fail it, not only print a line."""

from __future__ import annotations

import pytest

from easeml_buildbot.cli import main as easeml
from easeml_buildbot.demo import run as demo_run
from easeml_buildbot.demo.run import CommitReport, DemoResult


def _result(decided: str, *, ledger_agrees: bool = True) -> DemoResult:
    evaluated = decided in ("pass", "fail")
    commit = CommitReport(sha="0123456789abcdef", message="A better model", expected="pass",
                          status="evaluated" if evaluated else decided,
                          verdict=decided if evaluated else None, samples_used=10, uses_left=7,
                          use_id=1, cause=None, build_url="", seconds=1.0, dev_accuracy=None)
    return DemoResult(runner="process", runner_reason="", ui_url="", mail_dir="", ledger_url="",
                      repo="demo/digits", dataset_id="", budget=8, samples_needed=10,
                      commits=[commit], ledger_agrees=ledger_agrees)


@pytest.mark.parametrize("decided, agrees, code", [
    ("pass", True, 0), ("fail", True, 1), ("model_error", True, 1), ("pass", False, 1)])
def test_exit_code_follows_the_outcomes(tmp_path, monkeypatch, capsys, decided, agrees, code):
    monkeypatch.setattr(demo_run, "run_demo", lambda options: _result(decided, ledger_agrees=agrees))
    assert easeml(["demo", "--dir", str(tmp_path / "d"), "--no-wait"]) == code
    err = capsys.readouterr().err
    assert ("unexpected outcome for 0123456789" in err) == (decided != "pass")
