"""The evaluation build: one Buildbot step per stage, so progress shows in the UI.

checkout: the base chosen (master), then the exact head, the base and the branches the build
reads, and the inspection of config + dataset on the default branch's accepted commit, in
one worker command (master/checkout.py) → reserve a ledger use → evaluate on the worker → read
result.json from the worker (into memory) and commit or release the use → finalize properties
for reporters and remove the worker's files. Worker commands write their JSON outside the
checkout (``../easeml-out``); the master reads it with Buildbot's ``uploadFile`` command, never
printed. The directory is emptied when a build starts using it (a worker lost mid-build leaves
its files; another repository's result.json must never be collected).
"""

from __future__ import annotations

import shlex
from typing import Any

from twisted.internet import defer

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory
from buildbot.process.results import FAILURE, SUCCESS

from easeml_buildbot.master import steps as es
from easeml_buildbot.master.checkout import Checkout
from easeml_buildbot.master.gpus import ReadConfig

OUT = "../easeml-out"
#: uploads from a worker are bounded: inspect.json holds a configuration of at most 64 KiB
#: (as JSON) and a few ids; result.json holds the verdict, its estimates and timings, and
#: may carry a bounded model log, so it gets a few MiB
INSPECT_MAX_BYTES = 1024 * 1024
RESULT_MAX_BYTES = 8 * 1024 * 1024


def default_branch_ref(props: Any) -> str | None:
    """No accepted commit recorded yet (GitHub): the configuration comes from the default
    branch's head, the ref the checkout fetched. ``easeml worker inspect`` resolves it
    (``config_rev`` in its answer) and ``read config`` records the commit as
    ``easeml_config_sha``, which the evaluation then uses: both read the same commit."""
    default = props.getProperty("easeml_default_branch")
    if not default or props.getProperty("easeml_config_sha"):
        return None
    return f"refs/remotes/origin/{default}"


def config_rev(props: Any) -> str | None:
    """The commit the configuration and the test set are read from (``--config-rev``): the
    default branch's accepted commit, or the ref of its head; None on the local forge, which
    reads them from its base."""
    return props.getProperty("easeml_config_sha") or default_branch_ref(props)


def _config_args(props: Any) -> str:
    config = config_rev(props)
    return f" --config-rev {shlex.quote(str(config))}" if config else ""


def _evaluate_cmd(runner: str):
    @util.renderer
    def render(props: Any) -> str:
        head = es.head_revision(props)
        base = props.getProperty("easeml_base_sha")
        return (
            # "record result" reads whatever result.json is there, also when evaluate wrote
            # none (killed): it must be this evaluation's, never a lost build's leftover
            f"mkdir -p {OUT} && rm -f {OUT}/result.json && "
            f"exec easeml worker evaluate --repo . --head {shlex.quote(str(head))} "
            f"--base {shlex.quote(str(base))}{_config_args(props)} "
            '--key "${EASEML_WORKER_KEY:?the worker has no EASEML_WORKER_KEY (private key path)}" '
            '${EASEML_WORKER_PASSPHRASE_FILE:+--passphrase-file "$EASEML_WORKER_PASSPHRASE_FILE"} '
            f'--runner "${{EASEML_WORKER_RUNNER:-{runner}}}" '
            '--cache-dir "${EASEML_WORKER_CACHE_DIR:-../easeml-cache}" '
            f"--out {OUT}/result.json"
            # read config's plan (the step's environment, EASEML_PLAN: a long JSON kept out of
            # the log's command line): the worker checks it and need not plan (nor import scipy.stats)
            ' ${EASEML_PLAN:+--plan "$EASEML_PLAN"}'
        )
    return render


@util.renderer
def _plan_env(props: Any) -> str:
    return str(props.getProperty("easeml_plan") or "")


class Evaluate(steps.ShellCommand):
    """``easeml worker evaluate``: red exactly when it did not score (the exit code says why,
    ``runner/cli.py`` EXIT_CODES), so a crashed model is this step, not a later one. The exit
    code never tells the verdict (the log is public; the adaptivity may hide the verdict)."""

    name = "evaluate"
    description = "evaluating"
    SUMMARIES = {0: "scored (the verdict is decided on the master)", 1: "the model failed",
                 2: "worker usage error", 3: "not evaluated: configuration or test set",
                 4: "service-side failure"}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("decodeRC", {0: SUCCESS, 1: FAILURE, 2: FAILURE, 3: FAILURE, 4: FAILURE})
        kwargs.setdefault("updateBuildSummaryPolicy", False)
        super().__init__(**kwargs)

    @defer.inlineCallbacks
    def run(self):
        cmd = yield self.makeRemoteShellCommand()
        yield self.runCommand(cmd)
        self.descriptionDone = self.SUMMARIES.get(cmd.rc, f"exit code {cmd.rc}")
        return cmd.results()


def make_factory(settings: Any) -> BuildFactory:
    es.ensure_private_dir(settings.results_dir)
    f = BuildFactory()
    # Steps report only their own line (``updateBuildSummaryPolicy=False``): the build's
    # summary is the last master step's (``Finalize``: "fail · n > 0.85 ± 0.05 · use 2 of 8 ·
    # 6 left"). No step is hidden: Buildbot numbers hidden steps too, and each step costs
    # its bookkeeping in every build, so helpers run inside the steps that need them.
    quiet = dict(updateBuildSummaryPolicy=False)
    # the base chosen on the master, then one worker command fetches and resolves it with the
    # head and reads .easeml.yml on the default branch (easeml worker inspect): master/checkout.py
    f.addStep(Checkout(settings, resolve_base=es.resolve_base, inspect_out=OUT, config_rev=util.renderer(config_rev),
                       haltOnFailure=True, **quiet))
    # "read config" reads inspect.json from the worker itself (into memory, bounded). On a
    # worker with too few GPUs (model.gpus) it queues the build again for one that has them
    # (RETRY), before any use is reserved (master/gpus.py)
    f.addStep(ReadConfig(settings, doStepIf=es.evaluating))
    f.addStep(es.ReserveUse(settings, doStepIf=es.evaluating, haltOnFailure=True))
    f.addStep(Evaluate(command=_evaluate_cmd(settings.runner), env={"EASEML_PLAN": _plan_env},
                       doStepIf=es.evaluating,
                       timeout=settings.build_timeout, logEnviron=False, flunkOnFailure=True))
    f.addStep(es.RecordResult(settings, doStepIf=es.has_open_use, alwaysRun=True))
    if settings.forge == "local":
        f.addStep(es.RecordAccepted(settings, doStepIf=lambda s: s.build.getProperty("easeml_status") == "evaluated"))
    # the outcome, then the worker's ../easeml-out removed and, when no inspection said it, the
    # head commit's author read (inside the step: no "clean up" or "head commit author" step)
    f.addStep(es.Finalize(settings, alwaysRun=True))
    return f

