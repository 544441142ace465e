"""RecordResult reads the worker's result.json and keeps a master-private copy only when the
ledger cannot take it.

Driven in a subprocess with a real reactor, a real SQLite ledger and the real step class; only
the Buildbot build around it is a stand-in (properties, state store, logs): support.step_driver.
"""

from __future__ import annotations

import json

import pytest

from easeml_buildbot.custody.ledger import Ledger
from support.step_driver import drive_step

PROPS = {"buildername": "easeml", "buildnumber": 7, "easeml_adaptivity": "full", "easeml_email": []}


def _drive(tmp_path, use_id):
    return drive_step("RecordResult", f"sqlite:///{tmp_path}/l.sqlite", {**PROPS, "easeml_use_id": use_id},
                      results_dir=tmp_path / "results")


@pytest.fixture
def reserved(tmp_path):
    (tmp_path / "results").mkdir(mode=0o700)
    result = {"scored": True, "status": "scored", "samples_used": 40,
              "verdict": {"outcome": "pass"}, "estimates": {"n": 0.91}}
    _worker_writes(tmp_path, result)
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as led:
        r = led.reserve("acme/m", "a" * 64, 4, "full")
    return r.use_id, tmp_path / "results" / "easeml-7-result.json"  # the master-private copy


def _worker_writes(tmp_path, result):
    """result.json in the stand-in worker's ../easeml-out (support.step_driver)."""
    (tmp_path / "easeml-out").mkdir(exist_ok=True)
    (tmp_path / "easeml-out" / "result.json").write_text(json.dumps(result))


def test_recorded_result_leaves_no_copy(tmp_path, reserved):
    use_id, path = reserved
    out = _drive(tmp_path, use_id)
    assert out["result"] == 0, out  # SUCCESS
    assert not path.exists() and not list((tmp_path / "results").iterdir())  # no copy kept
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as led:
        use = led.use(use_id)
        assert use.state == "committed" and use.result["estimates"] == {"n": 0.91}


def test_result_survives_when_the_ledger_refuses_it(tmp_path, reserved):
    use_id, path = reserved
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as led:  # an operator released it meanwhile
        led.release(use_id, reason="operator")
    out = _drive(tmp_path, use_id)
    assert out["error"].startswith("LedgerError"), out
    # read from the worker, then kept on the master, owner-only, for the operator
    assert json.loads(path.read_text())["estimates"] == {"n": 0.91}
    assert path.stat().st_mode & 0o777 == 0o600


# -- what counts (issue 11): result.json's "spent", a missing result.json, the marker order --

CRASHED = {"status": "model_error", "cause": "crash", "message": "the model exited with code 1",
           "scored": False, "verdict": None, "samples_used": 0}


def _spent_case(tmp_path, result, *, started=True):
    (tmp_path / "results").mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{tmp_path}/l.sqlite"
    if result is not None:
        _worker_writes(tmp_path, result)
    with Ledger(url) as led:
        r = led.reserve("acme/m", "b" * 64, 4, "full", commit="h" * 40, base="b" * 40)
    out = drive_step("RecordResult", url, {**PROPS, "easeml_use_id": r.use_id}, results_dir=tmp_path / "results",
                     started=started)
    with Ledger(url) as led:
        return led.use(r.use_id), led.state("acme/m", "b" * 64), out


@pytest.mark.parametrize("spent", [True, None], ids=["spent-true", "spent-missing"])
def test_a_model_that_saw_the_features_and_failed_spends_the_use(tmp_path, spent):
    result = dict(CRASHED) if spent is None else {**CRASHED, "spent": spent}
    use, state, out = _spent_case(tmp_path, result)
    assert (use.state, use.verdict) == ("committed", None), out
    assert use.result["cause"] == "crash" and state.uses == 1
    props = out["props"]
    assert props["easeml_status"] == "model_error" and props.get("easeml_released") is None
    assert props["easeml_uses_left"] == state.remaining == 3  # the ledger's answer
    # the retry marker is cleared only after the ledger has the outcome
    assert out["events"] == ["ledger-commit", "state-buildrequest-1=None"], out


def test_nothing_saw_the_features_releases_the_use(tmp_path):
    use, state, out = _spent_case(tmp_path, {**CRASHED, "status": "model_error",
                                                           "cause": "build", "spent": False})
    assert use.state == "released"
    props = out["props"]
    assert state.uses == 0 and props["easeml_released"] is True and props["easeml_uses_left"] == 4
    assert out["events"] == ["ledger-release", "state-buildrequest-1=None"], out


def test_no_result_after_the_evaluate_step_ran_counts(tmp_path):
    use, state, out = _spent_case(tmp_path, None, started=True)
    assert (use.state, use.verdict) == ("committed", None), out
    assert use.result["spent"] is True and state.uses == 1
    assert out["props"]["easeml_status"] == "infra_error" and "counts" in out["props"]["easeml_cause"]
    assert out["events"] == ["ledger-commit", "state-buildrequest-1=None"], out


def test_no_result_when_the_evaluate_step_never_ran_is_released(tmp_path):
    use, state, out = _spent_case(tmp_path, None, started=False)
    assert use.state == "released" and state.uses == 0, out
    assert out["events"] == ["ledger-release", "state-buildrequest-1=None"], out


# -- the typed outcome (issue 13): written by Finalize from the ledger's answers --

FINALIZE = {"props": {"easeml_condition": "n > 0.85 +/- 0.05", "easeml_samples_needed": 40,
                      "easeml_use_number": 1},
            "facts": {"use_number": 1, "budget": 4, "uses_left": 3, "use_state": "reserved"}}


def _outcome_case(tmp_path, result, started=True, adaptivity="full"):
    """RecordResult, then Finalize on the same build: (the stored outcome, the test set's state,
    the driver's output)."""
    (tmp_path / "results").mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{tmp_path}/l.sqlite"
    _worker_writes(tmp_path, result)
    with Ledger(url) as led:
        r = led.reserve("acme/m", "b" * 64, 4, adaptivity, commit="h" * 40, base="b" * 40)
    out = drive_step("RecordResult", url, {**PROPS, "easeml_adaptivity": adaptivity, "easeml_use_id": r.use_id},
                     results_dir=tmp_path / "results", started=started, finalize=FINALIZE)
    assert "easeml_outcome" in out["props"], out
    with Ledger(url) as led:
        return out["props"]["easeml_outcome"], led.state("acme/m", "b" * 64), out


def test_outcome_after_a_released_model_error_has_the_ledgers_uses_left(tmp_path):
    ev, state, out = _outcome_case(tmp_path, {**CRASHED, "cause": "build", "spent": False})
    assert state.remaining == 4
    assert (ev["status"], ev["kind"], ev["use_state"], ev["uses_left"]) == ("model_error", "model", "released", 4)
    assert out["summary"] == "model error · n > 0.85 ± 0.05 · use 1 of 4 given back · 4 left"


def test_outcome_of_a_too_small_test_set_is_its_own_kind(tmp_path):
    ev, state, _ = _outcome_case(tmp_path, {"status": "dataset_error", "cause": "dataset_too_small",
                                            "message": "abc:data/test.csv.gpg: needs 1369 samples, the test set "
                                                       "has 200", "scored": False, "spent": False,
                                            "samples_needed": 1369, "samples_available": 200})
    assert (ev["status"], ev["kind"], ev["use_state"], ev["uses_left"]) == \
        ("missing_dataset", "dataset_too_small", "released", state.remaining)
    from easeml_buildbot.master.status import outcome_for

    o = outcome_for({"results": 2, "properties": {"easeml_outcome": (ev, "easeml"),
                                                  "easeml_status": ("missing_dataset", "easeml")}})
    assert o.title == "Test set too small" and "Test set missing" not in o.summary


@pytest.mark.parametrize("adaptivity,shown", [("full", "fail"), ("none", None)])
def test_stored_outcome_respects_the_adaptivity_and_holds_no_estimates(tmp_path, adaptivity, shown):
    result = {"scored": True, "status": "scored", "samples_used": 40, "spent": True,
              "verdict": {"outcome": "fail", "clauses": [{"index": 0, "clause": "n > 0.85", "estimate": 0.8123,
                                                           "interval": [0.7623, 0.8623], "outcome": "fail",
                                                           "technique": "hoeffding", "samples": 40}]}}
    ev, _, out = _outcome_case(tmp_path, result, adaptivity=adaptivity)
    assert "0.81" not in json.dumps(ev) and "0.76" not in json.dumps(ev), ev
    assert ev["verdict"] == shown and ev["uses_left"] == 3 and ev["samples_used"] == 40
    assert out["final"] == (2 if shown == "fail" else 0)  # the outcome step is red for a visible fail
    assert out["result"] == 0  # recording succeeded: "record result" is green
    assert out["summary"] == (f"{shown or 'evaluated'} · n > 0.85 ± 0.05 · use 1 of 4 · 3 left")
