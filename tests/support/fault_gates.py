"""Stop a build at a chosen stage, for fault tests: gates a test opens and closes.

Nothing in the service knows about them. The gates are files in a test's own directory and
work through the test's own worker environment and the test's own model code:

* ``worker_env()`` puts a ``sitecustomize.py`` on the ``PYTHONPATH`` of the test's worker
  processes (the ``[env]`` table, exported to build steps). It acts only in the worker's
  ``easeml worker inspect`` / ``easeml worker evaluate`` commands, and only while the gate
  file of a stage exists: ``inspect`` holds before the inspection (no use reserved yet),
  ``evaluate`` holds before the evaluation starts (the use is reserved, nothing has seen the
  test set), ``scored`` holds after the evaluation wrote result.json (scored, not recorded).
* ``model_hold()`` is Python to put at the top of a test model's ``main()``: the ``model``
  gate holds the model while it runs with the features.

``kill_evaluate()`` makes the next ``easeml worker evaluate`` SIGKILL itself before it writes
anything (as the kernel's OOM killer would).

A held command writes ``STAGE.reached`` (its pid) and waits until the gate is removed; a
held worker command whose worker died exits (a crashed worker's command has nobody to report
to). ::

    gates = FaultGates(tmp_path / "gates")
    start_cluster(..., worker_env=gates.worker_env())
    with gates.hold("evaluate"):
        send the webhook; gates.wait_reached("evaluate"); kill the worker
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STAGES = ("inspect", "evaluate", "model", "scored")

_SITECUSTOMIZE = '''\
# test-only (tests/support/fault_gates.py): hold `easeml worker inspect|evaluate` at a gate
import atexit, os, sys, time

_dir = os.environ.get("FAULT_GATES_DIR")
_argv = list(getattr(sys, "argv", ()) or ())


def _hold(stage):
    gate = os.path.join(_dir, stage)
    if not os.path.exists(gate):
        return
    with open(gate + ".reached", "w") as fh:
        fh.write(str(os.getpid()))
    parent = os.getppid()
    while os.path.exists(gate):
        if os.getppid() != parent:  # the worker died: nobody to report to
            os._exit(75)
        time.sleep(0.05)


if _dir and len(_argv) >= 3 and os.path.basename(_argv[0]) == "easeml" and _argv[1] == "worker":
    if _argv[2] == "inspect":
        _hold("inspect")
    elif _argv[2] == "evaluate":
        if os.path.exists(os.path.join(_dir, "evaluate.kill")):  # e.g. the kernel's OOM killer
            os.kill(os.getpid(), 9)
        _hold("evaluate")
        atexit.register(_hold, "scored")
'''


class FaultGates:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.site = self.dir / "site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(_SITECUSTOMIZE)

    def worker_env(self) -> dict[str, str]:
        # the gates run in the `easeml` client's interpreter start-up (sitecustomize): the
        # worker's site-less shim (runner/warm_client.py) would skip them, so the steps run the
        # interpreter's own easeml, which still hands the command to the warm server
        return {"PYTHONPATH": str(self.site), "FAULT_GATES_DIR": str(self.dir), "EASEML_WORKER_SHIM": "off"}

    def model_hold(self) -> str:
        """Python statements (4-space indented, for a model's ``main()``) holding at the ``model`` gate."""
        gate = str(self.dir / "model")
        return ("    import os, time\n"
                f"    if os.path.exists({gate!r}):\n"
                f"        open({gate!r} + '.reached', 'w').write(str(os.getpid()))\n"
                f"        while os.path.exists({gate!r}):\n"
                "            time.sleep(0.05)\n")

    @contextlib.contextmanager
    def kill_evaluate(self) -> Iterator[None]:
        (self.dir / "evaluate.kill").touch()
        try:
            yield
        finally:
            (self.dir / "evaluate.kill").unlink(missing_ok=True)

    def reached(self, stage: str) -> bool:
        return (self.dir / f"{stage}.reached").exists()

    def close(self, stage: str) -> None:
        assert stage in STAGES, stage
        (self.dir / f"{stage}.reached").unlink(missing_ok=True)
        (self.dir / stage).touch()

    def open(self, stage: str) -> None:
        (self.dir / stage).unlink(missing_ok=True)

    @contextlib.contextmanager
    def hold(self, stage: str) -> Iterator[None]:
        """The gate of ``stage`` is closed inside the block (and opened on the way out)."""
        self.close(stage)
        try:
            yield
        finally:
            self.open(stage)

    def wait_reached(self, stage: str, timeout: float = 120, why: Callable[[], str] | None = None) -> None:
        """Wait until a command or the model holds at ``stage``; ``why()`` (e.g. the masters'
        logs) is added to the error on a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reached(stage):
                return
            time.sleep(0.1)
        raise AssertionError(f"no build reached the {stage!r} gate within {timeout}s\n{why() if why else ''}")
