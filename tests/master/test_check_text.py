"""The check run's text comes from a Buildbot MessageFormatter (issue 13): the guarantee in
plain words, the decided quantity only as far as the adaptivity allows, a link to the step
log, and for a failed model the stderr tail the worker put in that (public) log.

Driven with Buildbot's own ``create_context_for_build`` on a build dict shaped like the
data API's; the master is a stand-in offering ``config`` and ``data.get`` for the log."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from twisted.internet import defer

from easeml_buildbot.master.check_text import CheckRunFormatter, stderr_tail
from easeml_buildbot.master.outcome import EvaluationOutcome

LOG = ("hmkdir -p ../easeml-out && exec easeml worker evaluate ...\n"
       "otest set ce73118d6e77: 1121 rows (csv); condition needs 1121; runner process\n"
       "ohead model: the last lines of its stderr (at most 20 lines, 2048 bytes):\n"
       "oTraceback (most recent call last):\n"
       "o  File \"predict.py\", line 9, in <module>\n"
       "oValueError: matmul: Input operand 1 has a mismatch\n"
       "ostatus: model_error (crash): the pull request's model: the model exited with code 1\n")


def _master(log=LOG):
    def get(path):
        assert path == ("logs", 77, "contents"), path
        return defer.succeed({"content": log})
    return SimpleNamespace(config=SimpleNamespace(title="easeml", buildbotURL="http://bb/"),
                           data=SimpleNamespace(get=get))


def _build(outcome: EvaluationOutcome, results=2, **props):
    props = {"easeml_outcome": outcome.to_property(), "easeml_status": outcome.status,
             "easeml_condition": "n > 0.85 +/- 0.05", "easeml_reliability": 0.999, "easeml_steps": 8,
             "easeml_adaptivity": outcome.adaptivity, "easeml_dataset_path": "data/test.csv.gpg", **props}
    return {"buildid": 3, "number": 3, "results": results, "state_string": "failed",
            "builder": {"builderid": 1, "name": "easeml"},
            "buildset": {"sourcestamps": [{"project": "acme/m", "branch": "pr", "revision": "h" * 40,
                                           "patch": None, "codebase": ""}]},
            "properties": {k: (v, "easeml") for k, v in props.items()},
            "steps": [{"name": "evaluate", "number": 9, "results": 2 if outcome.kind == "model" else 0,
                       "logs": [{"logid": 77, "slug": "stdio"}]}]}


def _format(build, formatter=None, master=None):
    out = []
    (formatter or CheckRunFormatter()).format_message_for_build(master or _master(), build, mode=("all",)) \
        .addBoth(out.append)
    assert out and not hasattr(out[0], "raiseException"), out
    return out[0]["body"]


EV = dict(condition="n > 0.85 +/- 0.05", reliability=0.999, samples_used=1121, use_number=2, budget=8,
          uses_left=6, use_state="committed")


def test_failed_model_text_has_guarantee_tail_and_step_log():
    ev = EvaluationOutcome(status="model_error", kind="model", cause="crash: the model exited with code 1",
                           adaptivity="full", **{**EV, "samples_used": None})
    body = _format(_build(ev))
    assert body["conclusion"] == "failure" and body["title"] == "The model could not be evaluated"
    text = body["text"]
    assert "every verdict is correct with probability at least 0.999" in text  # check-config's words
    assert "ValueError: matmul: Input operand 1 has a mismatch" in text and "Traceback" in text
    assert "status: model_error" not in text.split("```")[1]  # the tail only
    assert "(http://bb/#/builders/1/builds/3/steps/9/logs/stdio)" in text
    assert "easeml run-local" in text


def test_visible_fail_states_the_decided_condition_without_numbers():
    ev = EvaluationOutcome(status="evaluated", verdict="fail", verdict_visible=True, adaptivity="full", **EV)
    body = _format(_build(ev))
    assert body["conclusion"] == "failure"
    assert "`n > 0.85 ± 0.05`: **fail** (use 2 of 8; 6 left)" in body["text"]
    assert "```" not in body["text"]  # no stderr block for a scored model


@pytest.mark.parametrize("adaptivity", ["none"])
def test_hidden_verdict_is_not_in_the_text(adaptivity):
    # what the last step stores is the developer view: the verdict is gone before it gets here
    ev = EvaluationOutcome(status="evaluated", verdict="fail", verdict_visible=False, adaptivity=adaptivity, **EV)
    body = _format(_build(ev, results=0))
    assert body["conclusion"] == "neutral"
    text = body["text"]
    assert "fail" not in text.lower().replace("false failures", "") and "went to the repository's owners" in text
    stripped = re.sub(r"\(http[^)]*\)", "", text).replace("0.85", "").replace("0.05", "").replace("0.999", "")
    assert not re.search(r"\d\.\d", stripped.replace("δ = 0.001", "")), text


def test_an_operator_template_replaces_the_text():
    ev = EvaluationOutcome(status="evaluated", verdict="pass", verdict_visible=True, adaptivity="full", **EV)
    body = _format(_build(ev, results=0), CheckRunFormatter(template="{{ outcome.summary_line() }}",
                                                            subject="easeml: {{ outcome.headline }}"))
    assert body == {"phase": "completed", "conclusion": "success", "title": "easeml: pass",
                    "summary": body["summary"], "text": "pass · n > 0.85 ± 0.05 · use 2 of 8 · 6 left"}


def test_no_tail_when_the_worker_printed_none():
    assert stderr_tail("otest set x: 10 rows\nostatus: model_error (crash): ...\n") is None
