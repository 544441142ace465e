"""Run one real master step (``RecordResult``, ``ReserveUse``, then optionally ``Finalize``) in
a subprocess with a real reactor and a real ledger; only the Buildbot build around it is a
stand-in (properties, the ``db.state`` store, notes, the executed steps).

    out = drive_step("RecordResult", ledger_url, props, results_dir=tmp / "results")
    # the stand-in worker's files (what read_worker_json reads): tmp / "easeml-out" / "result.json",
    # the ``../easeml-out`` of the results directory's parent
    out["result"]            # the step's result (0 = SUCCESS), or None with out["error"] set
    out["error"]             # "LedgerError: ..." when the step raised
    out["props"], out["notes"]
    out["events"]            # "ledger-commit" / "ledger-release" / "state-KEY=VALUE", in order
    out["final"], out["summary"]  # with finalize=...: Finalize's result and summary

A subprocess because the steps run under Twisted's reactor (``task.react``), which runs once
per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def drive_step(step: str, ledger_url: str, props: dict[str, Any], *, results_dir: Path | str | None = None,
               started: bool = False, finalize: dict[str, Any] | None = None, build_timeout: float = 60,
               timeout: float = 120) -> dict[str, Any]:
    """Run step class ``step`` of ``easeml_buildbot.master.steps`` on a stand-in build with
    ``props``. ``started``: the build's executed steps hold an ``evaluate`` step that
    succeeded (else the build ran no step before this one). ``finalize``: then run
    ``Finalize`` with ``{"props": {...}, "facts": {...}}`` added to the build."""
    spec = {"step": step, "ledger_url": ledger_url, "props": props, "build_timeout": build_timeout,
            "results_dir": str(results_dir) if results_dir is not None else None, "started": started,
            "finalize": finalize}
    # -P: not this folder first on sys.path (its modules would shadow real ones)
    out = subprocess.run([sys.executable, "-P", __file__], input=json.dumps(spec), capture_output=True, text=True,
                         timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise AssertionError(f"step driver failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return {**json.loads(lines[-1]), "stderr": out.stderr}


def _main(spec: dict[str, Any]) -> None:
    from types import SimpleNamespace

    from twisted.internet import defer, task

    from easeml_buildbot.custody import ledger as ledger_mod
    from easeml_buildbot.master import steps as es

    events: list[str] = []
    for name in ("commit", "release"):
        real = getattr(ledger_mod.Ledger, name)

        def wrapped(self, *a, _real=real, _name=name, **k):
            out = _real(self, *a, **k)
            events.append("ledger-" + _name)
            return out
        setattr(ledger_mod.Ledger, name, wrapped)

    props: dict[str, Any] = dict(spec["props"])
    notes: list[str] = []
    store: dict[str, Any] = {}

    def get_state(oid, key, default=None):
        return defer.succeed(store.get(key, default))

    def set_state(oid, key, value):
        store[key] = value
        events.append(f"state-{key}={value}")
        return defer.succeed(None)

    def create_state(oid, key, fn):
        store.setdefault(key, fn())
        return defer.succeed(store[key])

    state = SimpleNamespace(getObjectId=lambda *a: defer.succeed(1), getState=get_state, setState=set_state,
                            atomicCreateState=create_state)
    executed = [SimpleNamespace(name="evaluate", results=0)] if spec["started"] else []
    build = SimpleNamespace(getProperty=lambda k, d=None: props.get(k, d), requests=[SimpleNamespace(id=1)],
                            executedSteps=executed,
                            getUrl=lambda: defer.succeed(f"http://bb/builds/{props.get('buildnumber')}"))
    cfg = SimpleNamespace(results_dir=spec["results_dir"], ledger_url=spec["ledger_url"],
                          build_timeout=spec["build_timeout"])
    from easeml_buildbot.master.service import EasemlService
    from easeml_buildbot.master.settings import Settings

    master = SimpleNamespace(db=SimpleNamespace(state=state), service_manager=SimpleNamespace(
        namedServices={"easeml": EasemlService(Settings(ledger_url=spec["ledger_url"]))}))  # the master's ledger

    def make(cls):
        s = cls(cfg).get_step_factory().buildStep()
        s.build, s.master = build, master
        s.getProperty = build.getProperty
        s.setProperty = lambda k, v, src=None: props.__setitem__(k, v)
        s.note = lambda text: defer.succeed(notes.append(text))
        return s

    worker_out = Path(spec["results_dir"]).parent / "easeml-out" if spec["results_dir"] else None

    def read_worker_json(self, workersrc, maxsize):  # the stand-in worker: a file in worker_out
        path = worker_out / Path(workersrc).name if worker_out is not None else None
        if path is None or not path.is_file() or path.stat().st_size > maxsize:
            return defer.succeed(None)
        data = json.loads(path.read_text())
        path.unlink()  # read from the worker: nothing of it is on the master's disk
        return defer.succeed(data)
    es._MasterStep.read_worker_json = read_worker_json

    step = make(getattr(es, spec["step"]))
    fin = spec["finalize"]
    if fin is not None:  # the build as Finalize finds it: the earlier steps' facts, this step done
        final = make(es.Finalize)
        props.update(fin.get("props", {}))
        build.easeml_facts = dict(fin.get("facts", {}))
        recorded = SimpleNamespace(name="record result", results=None)
        build.executedSteps = list(build.executedSteps) + [recorded]
    out: dict[str, Any] = {"result": None, "error": None}

    @defer.inlineCallbacks
    def main(reactor):
        try:
            out["result"] = yield step.run()
        except Exception as exc:  # noqa: BLE001  (reported to the test)
            out["error"] = f"{type(exc).__name__}: {exc}"
        if fin is not None and out["error"] is None:
            recorded.results = out["result"]
            out["final"] = yield final.run()
            out["summary"] = final.summary
        print(json.dumps({**out, "props": props, "notes": notes, "events": events}, default=str))
    task.react(main)


if __name__ == "__main__":
    _main(json.load(sys.stdin))
