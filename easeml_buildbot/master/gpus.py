"""GPU scheduling: builds of models with ``model.gpus`` run only on workers that have them.

Workers advertise their GPUs through Buildbot's worker info: ``buildbot.tac`` writes
``EASEML_WORKER_GPUS`` (or ``gpus`` in ``easeml-worker.toml``) to ``info/easeml_gpus``, which
the worker sends when it connects (``Worker.info``, property ``easeml_gpus``).

The master learns what a build needs only once ``easeml worker inspect`` has read the base
branch's ``.easeml.yml``, on whichever worker took the build. So:

1. A new build request may start on any worker (nothing is known yet).
2. :class:`RequireGpus` (right after the inspection is collected, before any test-set use is
   reserved) compares ``model.gpus`` with this worker's GPUs. Enough: the build goes on.
3. Too few, but a connected worker of the builder has enough: the need is remembered for the
   build request and the build ends with ``RETRY``; Buildbot puts the same request back in the
   queue and :func:`can_start_build` lets only workers with enough GPUs take it. If they are
   busy, the request waits for one of them, like any queued build.
4. No connected worker has enough: the build fails with ``infra_error`` saying how many GPUs
   the model asks for and what each connected worker offers (no waiting forever, no use spent).

The memory is per master process: after a restart a re-queued request may start on a CPU
worker again, which repeats step 3 (one more inspection, nothing counted).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer

from buildbot.process.results import RETRY, SKIPPED, SUCCESS, FAILURE

from easeml_buildbot import gpus
from easeml_buildbot.master import steps as es

INFO_KEY = "easeml_gpus"
_MAX_REMEMBERED = 10_000
#: build request id -> GPUs its model asks for (learned by RequireGpus)
_needs: OrderedDict[int, int] = OrderedDict()


def worker_gpus(worker: Any) -> int:
    """The GPUs a connected worker advertised (0 when it sent none or nonsense)."""
    info = getattr(worker, "info", None)
    value = info.getProperty(INFO_KEY) if info is not None else None
    try:
        return gpus.parse_offer(value)
    except ValueError:
        return 0


def _connected(builder: Any) -> list[Any]:
    return [wfb.worker for wfb in getattr(builder, "workers", ()) if wfb.worker is not None
            and getattr(wfb.worker, "conn", None) is not None]


def remember(brid: int, request: int) -> None:
    _needs[brid] = request
    _needs.move_to_end(brid)
    while len(_needs) > _MAX_REMEMBERED:
        _needs.popitem(last=False)


def can_start_build(builder: Any, wfb: Any, request: Any) -> bool:
    """``BuilderConfig(canStartBuild=...)``: a request known to need GPUs goes only to a worker
    that has enough, unless no connected worker has (then any worker takes it and
    :class:`RequireGpus` fails it with a clear message instead of it waiting forever)."""
    need = _needs.get(getattr(request, "id", None))
    if not need:
        return True
    if gpus.satisfies(worker_gpus(wfb.worker), need):
        return True
    return not any(gpus.satisfies(worker_gpus(w), need) for w in _connected(builder))


@defer.inlineCallbacks
def require_gpus(step: Any):
    """Check ``model.gpus`` of the base branch's config against this worker (module docstring).

    None when the build may go on (no GPUs asked for, or this worker has them); else the
    step result: RETRY (queued again for a worker that has them) or FAILURE (none has)."""
    data = (yield step.inspection()) or {}
    model = (data.get("config") or {}).get("model") or {}
    try:
        need = gpus.parse_request(model.get("gpus"))
    except ValueError:
        return None  # the config check reports it (inspect fails on a bad model.gpus)
    if not need:
        return None
    here = worker_gpus(step.build.workerforbuilder.worker)
    brids = [r.id for r in step.build.requests]
    if gpus.satisfies(here, need):
        for brid in brids:
            _needs.pop(brid, None)
        yield step.note(f"model.gpus: {gpus.describe(need)}; worker {step.build.getWorkerName()} "
                        f"has {here}")
        return None
    offers = {w.workername: worker_gpus(w) for w in _connected(step.build.builder)}
    able = sorted(n for n, g in offers.items() if gpus.satisfies(g, need))
    listing = ", ".join(f"{n}: {g}" for n, g in sorted(offers.items())) or "none"
    if able:
        for brid in brids:
            remember(brid, need)
        step.status("requeued", f"the model asks for {gpus.describe(need)} (model.gpus); "
                    f"queued again for a worker that has them ({', '.join(able)})")
        yield step.note(f"model.gpus: {gpus.describe(need)}; worker {step.build.getWorkerName()} has "
                        f"{here}: queued again for {', '.join(able)} (connected workers' GPUs: {listing})")
        step.summary = f"needs {gpus.describe(need)}: queued again for {', '.join(able)}"
        return RETRY
    for brid in brids:
        _needs.pop(brid, None)
    msg = (f"the model asks for {gpus.describe(need)} (model.gpus in .easeml.yml), but no "
           f"connected worker has that many (GPUs per connected worker: {listing}); "
           "nothing was evaluated and no use of the test set was spent")
    step.status("infra_error", msg)
    yield step.note(msg)
    step.summary = f"needs {gpus.describe(need)}: no connected worker has them"
    return FAILURE


class ReadConfig(es.ReadInspection):
    """``read config``, first checking ``model.gpus`` against this worker: one visible step
    (a separate GPU step would be hidden when no GPU is asked for, leaving a gap in the UI's
    step numbers)."""

    @defer.inlineCallbacks
    def run(self):
        held = yield require_gpus(self)
        if held is not None:
            return held
        res = yield super().run()
        return res
