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
