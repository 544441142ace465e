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

    results_dir, ledger_url, use_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    props = {"buildername": "easeml", "buildnumber": 7, "easeml_use_id": use_id,
             "easeml_adaptivity": "full", "easeml_email": []}
    build = SimpleNamespace(getProperty=lambda k, d=None: props.get(k, d),
                            requests=[SimpleNamespace(id=1)])
    state = SimpleNamespace(getObjectId=lambda *a: defer.succeed(1),
                            setState=lambda *a: defer.succeed(None))
    step = es.RecordResult(SimpleNamespace(results_dir=results_dir, ledger_url=ledger_url)).get_step_factory().buildStep()
    step.build, step.master = build, SimpleNamespace(db=SimpleNamespace(state=state))
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
    step.build, step.master = build, SimpleNamespace(db=SimpleNamespace(state=state))
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
