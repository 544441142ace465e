"""RecordResult keeps the worker's result.json until the ledger holds it.

Driven in a subprocess with a real reactor, a real SQLite ledger and the real step class; only
the Buildbot build around it is a stand-in (properties, state store, logs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from easeml_buildbot.custody.ledger import Ledger

DRIVER = textwrap.dedent('''
    import sys
    from types import SimpleNamespace
    from twisted.internet import defer, task
    from easeml_buildbot.master import steps as es
    from easeml_buildbot.master.service import EasemlService
    from easeml_buildbot.master.settings import Settings

    results_dir, ledger_url, use_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    props = {"buildername": "easeml", "buildnumber": 7, "easeml_use_id": use_id,
             "easeml_adaptivity": "full", "easeml_email": []}
    build = SimpleNamespace(getProperty=lambda k, d=None: props.get(k, d),
                            requests=[SimpleNamespace(id=1)])
    state = SimpleNamespace(getObjectId=lambda *a: defer.succeed(1),
                            setState=lambda *a: defer.succeed(None))
    step = es.RecordResult(SimpleNamespace(results_dir=results_dir, ledger_url=ledger_url)).get_step_factory().buildStep()
    step.build, step.master = build, SimpleNamespace(db=SimpleNamespace(state=state), service_manager=SimpleNamespace(
        namedServices={"easeml": EasemlService(Settings(ledger_url=ledger_url))}))  # the master's ledger
    step.getProperty = build.getProperty
    step.setProperty = lambda k, v, src=None: props.__setitem__(k, v)
    step.note = lambda text: defer.succeed(None)

    def main(reactor):
        d = step.run()
        d.addCallbacks(lambda r: print("result", r), lambda f: print("error", f.value.__class__.__name__))
        return d
    task.react(main)
''')


def _drive(tmp_path, use_id):
    return subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "results"), f"sqlite:///{tmp_path}/l.sqlite",
                           str(use_id)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def reserved(tmp_path):
    (tmp_path / "results").mkdir(mode=0o700)
    result = {"scored": True, "status": "scored", "samples_used": 40,
              "verdict": {"outcome": "pass"}, "estimates": {"n": 0.91}}
    path = tmp_path / "results" / "easeml-7-result.json"
    path.write_text(json.dumps(result))
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as led:
        r = led.reserve("acme/m", "a" * 64, 4, "full")
    return r.use_id, path


def test_recorded_result_leaves_no_copy(tmp_path, reserved):
    use_id, path = reserved
    out = _drive(tmp_path, use_id)
    assert "result 0" in out.stdout, out.stdout + out.stderr  # SUCCESS
    assert not path.exists()
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as led:
        use = led.use(use_id)
        assert use.state == "committed" and use.result["estimates"] == {"n": 0.91}


def test_result_survives_when_the_ledger_refuses_it(tmp_path, reserved):
    use_id, path = reserved
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as led:  # an operator released it meanwhile
        led.release(use_id, reason="operator")
    out = _drive(tmp_path, use_id)
    assert "error LedgerError" in out.stdout, out.stdout + out.stderr
    assert json.loads(path.read_text())["estimates"] == {"n": 0.91}  # still there for the operator


# -- what counts (issue 11): result.json's "spent", a missing result.json, the marker order --

SPENT_DRIVER = textwrap.dedent('''
    import sys
    from types import SimpleNamespace
    from twisted.internet import defer, task
    from easeml_buildbot.custody import ledger as ledger_mod
    from easeml_buildbot.master import steps as es
    from easeml_buildbot.master.service import EasemlService
    from easeml_buildbot.master.settings import Settings

    results_dir, ledger_url, use_id, started = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    events = []
    for name in ("commit", "release"):
        real = getattr(ledger_mod.Ledger, name)
        def wrapped(self, *a, _real=real, _name=name, **k):
            out = _real(self, *a, **k)
            events.append("ledger-" + _name)
            return out
        setattr(ledger_mod.Ledger, name, wrapped)
    props = {"buildername": "easeml", "buildnumber": 7, "easeml_use_id": use_id,
             "easeml_adaptivity": "full", "easeml_email": []}
    evaluate = SimpleNamespace(name="evaluate", results=0 if started else 3)
    build = SimpleNamespace(getProperty=lambda k, d=None: props.get(k, d), requests=[SimpleNamespace(id=1)],
                            executedSteps=[evaluate] if started else [])
    def set_state(oid, key, value):
        events.append(f"state-{key}={value}")
        return defer.succeed(None)
    state = SimpleNamespace(getObjectId=lambda *a: defer.succeed(1), setState=set_state)
    step = es.RecordResult(SimpleNamespace(results_dir=results_dir, ledger_url=ledger_url)).get_step_factory().buildStep()
    step.build, step.master = build, SimpleNamespace(db=SimpleNamespace(state=state), service_manager=SimpleNamespace(
        namedServices={"easeml": EasemlService(Settings(ledger_url=ledger_url))}))  # the master's ledger
    step.getProperty = build.getProperty
    step.setProperty = lambda k, v, src=None: props.__setitem__(k, v)
    step.note = lambda text: defer.succeed(None)

    def main(reactor):
        d = step.run()
        def done(r):
            print("result", r)
            print("events", ",".join(events))
            for k in ("easeml_status", "easeml_uses_left", "easeml_released", "easeml_cause"):
                print("prop", k, props.get(k))
        d.addCallbacks(done, lambda f: print("error", f.value.__class__.__name__, f.value))
        return d
    task.react(main)
''')

CRASHED = {"status": "model_error", "cause": "crash", "message": "the model exited with code 1",
           "scored": False, "verdict": None, "samples_used": 0}


def _spent_case(tmp_path, result, *, started=True):
    (tmp_path / "results").mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{tmp_path}/l.sqlite"
    if result is not None:
        (tmp_path / "results" / "easeml-7-result.json").write_text(json.dumps(result))
    with Ledger(url) as led:
        r = led.reserve("acme/m", "b" * 64, 4, "full", commit="h" * 40, base="b" * 40)
    out = subprocess.run([sys.executable, "-c", SPENT_DRIVER, str(tmp_path / "results"), url, str(r.use_id),
                          "1" if started else "0"], capture_output=True, text=True, timeout=120)
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    props = {ln.split(" ")[1]: ln.split(" ", 2)[2] for ln in out.stdout.splitlines() if ln.startswith("prop ")}
    with Ledger(url) as led:
        return led.use(r.use_id), led.state("acme/m", "b" * 64), lines, props, out


@pytest.mark.parametrize("spent", [True, None], ids=["spent-true", "spent-missing"])
def test_a_model_that_saw_the_features_and_failed_spends_the_use(tmp_path, spent):
    result = dict(CRASHED) if spent is None else {**CRASHED, "spent": spent}
    use, state, lines, props, out = _spent_case(tmp_path, result)
    assert (use.state, use.verdict) == ("committed", None), out.stdout + out.stderr
    assert use.result["cause"] == "crash" and state.uses == 1
    assert props["easeml_status"] == "model_error" and props["easeml_released"] == "None"
    assert props["easeml_uses_left"] == str(state.remaining) == "3"  # the ledger's answer
    # the retry marker is cleared only after the ledger has the outcome
    assert lines["events"] == "ledger-commit,state-buildrequest-1=None", lines


def test_nothing_saw_the_features_releases_the_use(tmp_path):
    use, state, lines, props, out = _spent_case(tmp_path, {**CRASHED, "status": "model_error",
                                                           "cause": "build", "spent": False})
    assert use.state == "released"
    assert state.uses == 0 and props["easeml_released"] == "True" and props["easeml_uses_left"] == "4"
    assert lines["events"] == "ledger-release,state-buildrequest-1=None", lines


def test_no_result_after_the_evaluate_step_ran_counts(tmp_path):
    use, state, lines, props, out = _spent_case(tmp_path, None, started=True)
    assert (use.state, use.verdict) == ("committed", None), out.stdout + out.stderr
    assert use.result["spent"] is True and state.uses == 1
    assert props["easeml_status"] == "infra_error" and "counts" in props["easeml_cause"]
    assert lines["events"] == "ledger-commit,state-buildrequest-1=None", lines


def test_no_result_when_the_evaluate_step_never_ran_is_released(tmp_path):
    use, state, lines, props, out = _spent_case(tmp_path, None, started=False)
    assert use.state == "released" and state.uses == 0, out.stdout + out.stderr
    assert lines["events"] == "ledger-release,state-buildrequest-1=None", lines


# -- the typed outcome (issue 13): written by Finalize from the ledger's answers --

OUTCOME_DRIVER = SPENT_DRIVER.replace(textwrap.dedent('''
    def main(reactor):
        d = step.run()
'''), textwrap.dedent('''
    final = es.Finalize(SimpleNamespace(results_dir=results_dir, ledger_url=ledger_url)).get_step_factory().buildStep()
    final.build, final.master = build, step.master
    final.getProperty, final.setProperty, final.note = step.getProperty, step.setProperty, step.note
    props.update(easeml_condition="n > 0.85 +/- 0.05", easeml_samples_needed=40, easeml_use_number=1)
    build.easeml_facts = {"use_number": 1, "budget": 4, "uses_left": 3, "use_state": "reserved"}
    rec = SimpleNamespace(name="record result", results=None)
    build.executedSteps = list(build.executedSteps) + [rec]

    def main(reactor):
        d = step.run()
        def then(r):
            rec.results = r
            def show(f):
                print("final", f)
                print("outcome", json.dumps(props["easeml_outcome"]))
                print("summary", final.summary)
                return r
            return final.run().addCallback(show)
        d.addCallback(then)
''')).replace("import sys\n", "import sys, json\n", 1)
assert "final.run()" in OUTCOME_DRIVER


def _outcome_case(tmp_path, result, started=True):
    (tmp_path / "results").mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{tmp_path}/l.sqlite"
    (tmp_path / "results" / "easeml-7-result.json").write_text(json.dumps(result))
    with Ledger(url) as led:
        r = led.reserve("acme/m", "b" * 64, 4, "full", commit="h" * 40, base="b" * 40)
    out = subprocess.run([sys.executable, "-c", OUTCOME_DRIVER, str(tmp_path / "results"), url, str(r.use_id),
                          "1" if started else "0"], capture_output=True, text=True, timeout=120)
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    assert "outcome" in lines, out.stdout + out.stderr
    with Ledger(url) as led:
        return json.loads(lines["outcome"]), led.state("acme/m", "b" * 64), lines


def test_outcome_after_a_released_model_error_has_the_ledgers_uses_left(tmp_path):
    ev, state, lines = _outcome_case(tmp_path, {**CRASHED, "cause": "build", "spent": False})
    assert state.remaining == 4
    assert (ev["status"], ev["kind"], ev["use_state"], ev["uses_left"]) == ("model_error", "model", "released", 4)
    assert lines["summary"] == "model error · n > 0.85 ± 0.05 · use 1 of 4 given back · 4 left"


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
    driver_adapt = OUTCOME_DRIVER.replace('"easeml_adaptivity": "full"', f'"easeml_adaptivity": "{adaptivity}"')
    (tmp_path / "results").mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{tmp_path}/l.sqlite"
    (tmp_path / "results" / "easeml-7-result.json").write_text(json.dumps(result))
    with Ledger(url) as led:
        r = led.reserve("acme/m", "b" * 64, 4, adaptivity, commit="h" * 40, base="b" * 40)
    out = subprocess.run([sys.executable, "-c", driver_adapt, str(tmp_path / "results"), url, str(r.use_id), "1"],
                         capture_output=True, text=True, timeout=120)
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    assert "0.81" not in lines["outcome"] and "0.76" not in lines["outcome"], lines["outcome"]
    ev = json.loads(lines["outcome"])
    assert ev["verdict"] == shown and ev["uses_left"] == 3 and ev["samples_used"] == 40
    assert lines["final"] == ("2" if shown == "fail" else "0")  # the outcome step is red for a visible fail
    assert lines["result"] == "0"  # recording succeeded: "record result" is green
    assert lines["summary"] == (f"{shown or 'evaluated'} · n > 0.85 ± 0.05 · use 1 of 4 · 3 left")
