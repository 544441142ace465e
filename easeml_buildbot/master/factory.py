"""The evaluation build: one Buildbot step per stage, so progress shows in the UI.

checkout exact head → resolve base, which adds the git steps this build needs (fetch the
base branch and the default branch, resolve a commit) → inspect config + dataset on the default branch's accepted commit → reserve a ledger use → evaluate on the worker → upload result.json privately → commit
or release the use → finalize properties for reporters. Worker commands write their JSON
outside the checkout (``../easeml-out``) and it is uploaded into a master-private
directory, never printed. The directory is emptied when a build starts using it (a worker
lost mid-build leaves its files; another repository's result.json must never be collected).
"""

from __future__ import annotations

import shlex
from typing import Any

from twisted.internet import defer, threads

from buildbot.plugins import steps, util
from buildbot.process.factory import BuildFactory
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.steps.source.git import GitPush
from buildbot.util.git_credential import GitCredentialOptions

from easeml_buildbot.master import steps as es
from easeml_buildbot.master.gpus import ReadConfig

OUT = "../easeml-out"
#: uploads from a worker are bounded: inspect.json holds a configuration of at most 64 KiB
#: (as JSON) and a few ids; result.json holds the verdict, its estimates and timings, and
#: may carry a bounded model log, so it gets a few MiB
INSPECT_MAX_BYTES = 1024 * 1024
RESULT_MAX_BYTES = 8 * 1024 * 1024


def _base_is_ref(step: Any) -> bool:
    return bool(step.build.getProperty("easeml_base_rev"))


def _has_base_ref(step: Any) -> bool:
    return bool(step.build.getProperty("easeml_base_ref"))


def _fetch_default_branch(step: Any) -> bool:
    """GitHub: the default branch is needed unless the base branch fetch brought it."""
    default = step.build.getProperty("easeml_default_branch")
    return bool(default) and default != step.build.getProperty("easeml_base_ref")


def default_branch_ref(props: Any) -> str | None:
    """No accepted commit recorded yet (GitHub): the configuration comes from the default
    branch's head, the ref the fetch step wrote. ``easeml worker inspect`` resolves it
    (``config_rev`` in its answer) and ``read config`` records the commit as
    ``easeml_config_sha``, which the evaluation then uses: both read the same commit."""
    default = props.getProperty("easeml_default_branch")
    if not default or props.getProperty("easeml_config_sha"):
        return None
    return f"refs/remotes/origin/{default}"


def _config_args(props: Any) -> str:
    """``--config-rev`` (the default branch's accepted commit, or the ref of its head) and the
    branch check; the local forge has neither and reads the configuration from its base."""
    out = ""
    config = props.getProperty("easeml_config_sha") or default_branch_ref(props)
    if config:
        out += f" --config-rev {shlex.quote(str(config))}"
    return out


@util.renderer
def _inspect_cmd(props: Any) -> str:
    head = es.head_revision(props) or "HEAD"
    base = props.getProperty("easeml_base_sha")
    default = props.getProperty("easeml_default_branch")
    branch_check = (f" --base-ref {shlex.quote(str(props.getProperty('easeml_base_ref')))}"
                    f" --default-branch {shlex.quote(str(default))}") if default else ""
    # a build lost with its worker never ran "clean up": its files must not become this build's
    return (f"rm -rf {OUT} && mkdir -p {OUT} && easeml worker inspect --repo . --base {shlex.quote(str(base))}"
            f"{_config_args(props)}{branch_check} "
            f"--head {shlex.quote(str(head))} --no-plan --out {OUT}/inspect.json")


class InstallationTokenAuth:
    """Mixin for Buildbot's Git steps: authenticate HTTPS clones with the GitHub App's
    installation token, so private repositories work.

    Buildbot 4.3 renders ``auth_credentials`` without the build's properties, so a per-build
    token (the installation and the URL come from the webhook) cannot go through it. Instead,
    once the step has rendered ``repourl``, the token is minted (or taken from the cache) on
    the master, registered with ``useSecret`` so Buildbot redacts it from every log, and
    handed to Buildbot's own credential machinery: a credential-store file on the worker that
    exists only while git runs (never a URL or ``.git/config``). Git sends it only when the
    server asks for authentication.
    """

    def __init__(self, *args: Any, settings: Any = None, **kwargs: Any):
        self.easeml_settings = settings
        super().__init__(*args, **kwargs)

    @defer.inlineCallbacks
    def _easeml_use_installation_token(self):
        settings = self.easeml_settings
        inst = self.build.getProperty("easeml_installation_id")
        url = str(self.repourl or "")
        if settings is None or settings.forge != "github" or not inst or \
                not url.startswith(("https://", "http://")):
            return
        from easeml_buildbot.master.service import easeml_service

        # in the GitHub thread pool (master.checkruns): a slow GitHub must not hold one of the
        # reactor's default threads, which the ledger steps and the web UI need
        github = self.master.service_manager.namedServices.get("easeml-github")
        fetch = easeml_service(self.master).app().clone_token
        token = yield (github.run(fetch, int(inst)) if github is not None
                       else threads.deferToThread(fetch, int(inst)))
        self.build.properties.useSecret(token, "github installation token")
        self._git_auth.git_credential_options = GitCredentialOptions(
            credentials=[f"url={url}\nusername=x-access-token\npassword={token}\n"])


class GitCheckout(InstallationTokenAuth, steps.Git):
    """Buildbot's Git checkout, with the installation token for private repositories."""

    @defer.inlineCallbacks
    def run_vc(self, branch, revision, patch):
        yield self._easeml_use_installation_token()
        res = yield super().run_vc(branch, revision, patch)
        return res


class GitFetchRef(InstallationTokenAuth, GitPush):
    """``git fetch -q -f REPOURL REFSPEC`` (``branch`` is the refspec), with Buildbot's Git
    credential handling: GitPush runs exactly one git command against ``repourl``."""

    name = "fetch base branch"
    description = "fetching"
    descriptionDone = "fetched"

    @defer.inlineCallbacks
    def run(self):
        yield self._easeml_use_installation_token()
        res = yield super().run()
        return res

    def _doPush(self):
        return self._dovccmd(["fetch", "-q", "-f", self.repourl, self.branch])


def _evaluate_cmd(runner: str):
    @util.renderer
    def render(props: Any) -> str:
        head = es.head_revision(props)
        base = props.getProperty("easeml_base_sha")
        return (
            # "collect result" uploads whatever result.json is there, also when evaluate wrote
            # none (killed): it must be this evaluation's, never a lost build's leftover
            f"mkdir -p {OUT} && rm -f {OUT}/result.json && "
            f"exec easeml worker evaluate --repo . --head {shlex.quote(str(head))} "
            f"--base {shlex.quote(str(base))}{_config_args(props)} "
            '--key "${EASEML_WORKER_KEY:?the worker has no EASEML_WORKER_KEY (private key path)}" '
            '${EASEML_WORKER_PASSPHRASE_FILE:+--passphrase-file "$EASEML_WORKER_PASSPHRASE_FILE"} '
            f'--runner "${{EASEML_WORKER_RUNNER:-{runner}}}" '
            '--cache-dir "${EASEML_WORKER_CACHE_DIR:-../easeml-cache}" '
            f"--out {OUT}/result.json"
        )
    return render


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
    # 6 left"). Buildbot numbers skipped and hidden steps too, so the UI's step numbers have
    # no gaps only if no hidden step comes before a visible one: the git helpers a build
    # needs are added by "resolve base" when they will run (the GitHub fetches exist only on
    # that forge), and the hidden helpers come after the last visible step.
    quiet = dict(updateBuildSummaryPolicy=False)
    f.addStep(GitCheckout(name="checkout", repourl=util.Property("repository"), mode="full",
                          method="fresh", haltOnFailure=True, logEnviron=False, settings=settings,
                          description="checking out the head commit", descriptionDone="checked out",
                          **quiet))
    then = _github_fetches(settings) if settings.forge != "local" else []
    then.append((_base_is_ref, steps.SetPropertyFromCommand(
        name="resolve base commit",
        command=["git", "rev-parse", "--verify", util.Interpolate("%(prop:easeml_base_rev)s^{commit}")],
        property="easeml_base_sha", haltOnFailure=True, logEnviron=False,
        description="resolving the base commit", descriptionDone="base commit resolved", **quiet)))
    f.addStep(es.ResolveBase(settings, then=then, haltOnFailure=True))
    f.addStep(steps.ShellCommand(name="inspect", command=_inspect_cmd, haltOnFailure=True, logEnviron=False,
                                 description="reading .easeml.yml on the default branch",
                                 descriptionDone="read .easeml.yml and the test set id", **quiet))
    f.addStep(steps.FileUpload(name="collect inspection", workersrc=f"{OUT}/inspect.json",
                               masterdest=_private_dest(settings, "inspect.json"),
                               maxsize=INSPECT_MAX_BYTES, mode=0o600, haltOnFailure=True,
                               description="collecting the inspection",
                               descriptionDone="inspection collected (master-private)", **quiet))
    # model.gpus: on a worker with too few GPUs "read config" queues the build again for one
    # that has them (RETRY), before any use is reserved (master/gpus.py)
    f.addStep(ReadConfig(settings, doStepIf=es.evaluating))
    f.addStep(es.ReserveUse(settings, doStepIf=es.evaluating, haltOnFailure=True))
    f.addStep(Evaluate(command=_evaluate_cmd(settings.runner), doStepIf=es.evaluating,
                       timeout=settings.build_timeout, logEnviron=False, flunkOnFailure=True))
    f.addStep(steps.FileUpload(name="collect result", workersrc=f"{OUT}/result.json",
                               masterdest=_private_dest(settings, "result.json"), mode=0o600,
                               maxsize=RESULT_MAX_BYTES,
                               doStepIf=es.has_open_use, alwaysRun=True, flunkOnFailure=False,
                               warnOnFailure=True, description="collecting the result",
                               descriptionDone="result collected (master-private)", **quiet))
    f.addStep(es.RecordResult(settings, doStepIf=es.has_open_use, alwaysRun=True))
    if settings.forge == "local":
        f.addStep(es.RecordAccepted(settings, doStepIf=lambda s: s.build.getProperty("easeml_status") == "evaluated"))
    f.addStep(es.Finalize(settings, alwaysRun=True))
    # hidden helpers, after the last visible step
    # The head commit's author: GitHub's pull-request events name a login, not an address.
    # Mail to it still goes only to allowed domains, with only what the developer may see.
    # The inspection reports it (read config sets it); this step runs only when no inspection
    # was read (a build that stopped before), so it costs a worker command only then.
    f.addStep(steps.SetPropertyFromCommand(
        name="head commit author", command=["git", "log", "-1", "--format=%ae", "HEAD"],
        property="easeml_author_email", hideStepIf=True, flunkOnFailure=False, warnOnFailure=False,
        doStepIf=lambda s: not s.build.getProperty("easeml_author_email"),
        alwaysRun=True, logEnviron=False, **quiet))
    f.addStep(steps.ShellCommand(name="clean up", command=["rm", "-rf", OUT], alwaysRun=True,
                                 hideStepIf=True, logEnviron=False, flunkOnFailure=False,
                                 description="cleaning up", descriptionDone="cleaned up", **quiet))
    return f


def _github_fetches(settings: Any) -> list[tuple[Any, Any]]:
    """(predicate, step) for the base and default branch fetches, as "resolve base" adds
    them (only those the build needs)."""
    quiet = dict(updateBuildSummaryPolicy=False)
    return [
        (_has_base_ref, GitFetchRef(
            # argv, not a shell string: branch names may contain shell metacharacters
            repourl=util.Property("repository"),
            branch=util.Interpolate("+refs/heads/%(prop:easeml_base_ref)s:refs/remotes/origin/%(prop:easeml_base_ref)s"),
            haltOnFailure=True, logEnviron=False, settings=settings, **quiet)),
        (_fetch_default_branch, GitFetchRef(
            name="fetch default branch", repourl=util.Property("repository"),
            branch=util.Interpolate("+refs/heads/%(prop:easeml_default_branch)s:"
                                    "refs/remotes/origin/%(prop:easeml_default_branch)s"),
            haltOnFailure=True, logEnviron=False, settings=settings, **quiet)),
        # the default branch's head is resolved by the inspection (default_branch_ref), not by
        # a step of its own: one worker command fewer per build
    ]


def _private_dest(settings: Any, name: str):
    @util.renderer
    def render(props: Any) -> str:
        return es.private_path(settings.results_dir, props, name)
    return render
