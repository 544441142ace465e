"""The ``easeml/ci`` check run, as a Buildbot reporter (``ReporterBase`` + generators).

queued when the build request is created (``BuildRequestGenerator``), in_progress when
the build starts and completed with a conclusion when it ends
(``BuildStartEndStatusGenerator``), like ``buildbot/reporters/github.py`` does for commit
statuses. The reporter does not call GitHub: each report becomes the check run's *desired
state*, stored in the ledger's database (``master.checkruns``), and the
``CheckRunReconciler`` service writes it to GitHub in its own thread pool, retrying until
GitHub accepts it. One check run per (repository, head, check name): a re-run or a replayed
``reopened`` reuses it.

What the run says is decided in one place, :func:`check_run_fields` (its text comes from
``master.status``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot.reporters.base import ReporterBase
from buildbot.reporters.generators.build import BuildStartEndStatusGenerator
from buildbot.reporters.generators.buildrequest import BuildRequestGenerator
from buildbot.reporters.message import MessageFormatterRenderable
from buildbot.process.results import RETRY

from easeml_buildbot.master import metrics
from easeml_buildbot.master.check_text import CheckRunFormatter
from easeml_buildbot.master.checkruns import PHASE_ENDED, PHASE_QUEUED, PHASE_STARTED
from easeml_buildbot.master.github_app import utcnow
from easeml_buildbot.master.status import build_properties, outcome_for

# events that announce a head for the first time; any other (a re-run, a ``reopened``
# replay) may find a check run GitHub already has for the head
FIRST_EVENTS = ("pull_request.opened", "pull_request.synchronize", "check_suite.requested")


def _stamp() -> str:
    return utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")


def check_run_fields(phase: str, build: dict[str, Any],
                     message: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(phase rank, check-run fields) a report of ``phase`` about ``build`` asks for.

    ``message`` is the end formatter's output for the completed run (``check_text.py``:
    conclusion, title, summary, text); without one the text comes from ``status``."""
    url = build.get("url")
    brid = _buildrequest_id(build)
    base = {"details_url": url if isinstance(url, str) and url.startswith(("http://", "https://")) else None,
            "external_id": str(brid) if brid is not None else None}
    if phase == "queued" and not build.get("complete"):
        return PHASE_QUEUED, {**base, "status": "queued",
                              "output": {"title": "Queued", "summary": "Waiting for a worker."}}
    if phase == "in_progress" and not build.get("complete"):
        return PHASE_STARTED, {**base, "status": "in_progress", "started_at": _stamp(),
                               "output": {"title": "Evaluating",
                                          "summary": "The model is being evaluated on the hidden test set."}}
    if build.get("results") == RETRY:  # worker lost: Buildbot queues the build again
        return PHASE_ENDED, {**base, "status": "queued",
                             "output": {"title": "Queued again",
                                        "summary": "The worker was lost; the evaluation will be retried."}}
    if message is None:
        outcome = outcome_for(build)
        message = {"conclusion": outcome.conclusion, "title": outcome.title, "summary": outcome.summary}
    output = {"title": message["title"], "summary": message["summary"][:65000]}
    if message.get("text"):
        output["text"] = message["text"][:65000]
    return PHASE_ENDED, {**base, "status": "completed", "conclusion": message["conclusion"],
                         "completed_at": _stamp(), "output": output}


def _buildrequest_id(build: dict[str, Any]) -> int | None:
    brid = build.get("buildrequestid") or (build.get("buildrequest") or {}).get("buildrequestid")
    return int(brid) if brid is not None else None


class CheckRunReporter(ReporterBase):
    name = "easeml-check-runs"

    def checkConfig(self, app: Any = None, check_name: str = "easeml/ci", generators=None, end_formatter=None,
                    **kwargs):
        super().checkConfig(generators=generators or self._default_generators(end_formatter))

    @defer.inlineCallbacks
    def reconfigService(self, app: Any = None, check_name: str = "easeml/ci", generators=None, end_formatter=None,
                        **kwargs):
        self.check_name = check_name
        yield super().reconfigService(generators=generators or self._default_generators(end_formatter))

    def _default_generators(self, end_formatter=None):
        # the completed run's text: a MessageFormatter an operator may replace (check_text.py)
        return [
            BuildRequestGenerator(formatter=MessageFormatterRenderable("queued")),
            BuildStartEndStatusGenerator(start_formatter=MessageFormatterRenderable("in_progress"),
                                         end_formatter=end_formatter or CheckRunFormatter()),
        ]

    @property
    def reconciler(self):
        return self.master.service_manager.namedServices["easeml-github"]

    @defer.inlineCallbacks
    def sendMessage(self, reports):
        for report in reports:
            body = report.get("body")
            # the end formatter's body is the completed run's output (check_text.py)
            phase, message = (body.get("phase", "completed"), body) if isinstance(body, dict) else (body, None)
            for build in report["builds"]:
                try:
                    yield self._report(phase, build, message)
                except Exception as exc:  # the database is down: nothing can be kept
                    metrics.GITHUB_ERRORS.inc()
                    log.err(exc, f"easeml: check run state ({phase}) could not be stored")

    def _report(self, phase: str, build: dict[str, Any], message: dict[str, Any] | None = None):
        props = build_properties(build)
        repo, inst, sha = props.get("easeml_repo"), props.get("easeml_installation_id"), props.get("easeml_head_sha")
        if not (repo and inst and sha):
            return defer.succeed(None)  # not a GitHub App build (local forge, forced build)
        # pull requests into a branch other than the default report on their own check run
        # (the hook names it): a check run belongs to the head commit, whatever pull request
        name = props.get("easeml_check_name") or self.check_name
        rank, desired = check_run_fields(phase, build, message)
        brid = _buildrequest_id(build) or 0
        buildid = int(build.get("buildid") or 0) if rank != PHASE_QUEUED else 0
        return self.reconciler.desire(repo=repo, head_sha=sha, name=name, installation_id=int(inst),
                                      order=(brid, buildid, rank), desired=desired,
                                      lookup=props.get("easeml_event") not in FIRST_EVENTS)
