"""The ``easeml/ci`` check run, as a Buildbot reporter (``ReporterBase`` + generators).

queued when the build request is created (``BuildRequestGenerator``), in_progress when
the build starts and completed with a conclusion when it ends
(``BuildStartEndStatusGenerator``), like ``buildbot/reporters/github.py`` does for commit
statuses. PyGithub blocks, so every call goes through ``deferToThread``. Reports for one
build request are delivered in order (ReporterBase chains them by build request id).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, threads
from twisted.python import log

from buildbot.reporters.base import ReporterBase
from buildbot.reporters.generators.build import BuildStartEndStatusGenerator
from buildbot.reporters.generators.buildrequest import BuildRequestGenerator
from buildbot.reporters.message import MessageFormatterRenderable
from buildbot.process.results import RETRY

from easeml_buildbot.master import metrics
from easeml_buildbot.master.check_text import CheckRunFormatter
from easeml_buildbot.master.github_app import utcnow
from easeml_buildbot.master.status import build_properties, outcome_for


class CheckRunReporter(ReporterBase):
    name = "easeml-check-runs"

    def checkConfig(self, app: Any, check_name: str = "easeml/ci", generators=None, end_formatter=None,
                    **kwargs):
        super().checkConfig(generators=generators or self._default_generators(end_formatter))

    @defer.inlineCallbacks
    def reconfigService(self, app: Any, check_name: str = "easeml/ci", generators=None, end_formatter=None,
                        **kwargs):
        self.app = app
        self.check_name = check_name
        self._runs: dict[int, Any] = getattr(self, "_runs", {})  # buildrequestid -> CheckRun
        yield super().reconfigService(generators=generators or self._default_generators(end_formatter))

    def _default_generators(self, end_formatter=None):
        # the completed run's text: a MessageFormatter an operator may replace (check_text.py)
        return [
            BuildRequestGenerator(formatter=MessageFormatterRenderable("queued")),
            BuildStartEndStatusGenerator(start_formatter=MessageFormatterRenderable("in_progress"),
                                         end_formatter=end_formatter or CheckRunFormatter()),
        ]

    @defer.inlineCallbacks
    def sendMessage(self, reports):
        for report in reports:
            body = report.get("body")
            # the end formatter's body is the completed run's output (check_text.py)
            phase, message = (body.get("phase", "completed"), body) if isinstance(body, dict) else (body, None)
            for build in report["builds"]:
                try:
                    yield self._report(phase, build, message)
                except Exception as exc:
                    metrics.GITHUB_ERRORS.inc()
                    log.err(exc, f"easeml: check run update ({phase}) failed")

    @defer.inlineCallbacks
    def _report(self, phase: str, build: dict[str, Any], message: dict[str, Any] | None = None):
        props = build_properties(build)
        repo, inst, sha = props.get("easeml_repo"), props.get("easeml_installation_id"), props.get("easeml_head_sha")
        if not (repo and inst and sha):
            return  # not a GitHub App build (local forge, forced build)
        # pull requests into a branch other than the default report on their own check run
        # (the hook names it): a check run belongs to the head commit, whatever pull request
        name = props.get("easeml_check_name") or self.check_name
        brid = build.get("buildrequestid") or (build.get("buildrequest") or {}).get("buildrequestid")
        url = build.get("url")
        if phase == "queued" and not build.get("complete"):
            run = yield threads.deferToThread(
                self.app.create_check_run, inst, repo, name=name, head_sha=sha,
                status="queued", details_url=url, external_id=str(brid),
                output={"title": "Queued", "summary": "Waiting for a worker."})
            self._runs[brid] = run
            return
        run = self._runs.get(brid)
        if run is None:
            run = yield threads.deferToThread(self.app.find_check_run, inst, repo, name, sha)
            if run is None:
                run = yield threads.deferToThread(
                    self.app.create_check_run, inst, repo, name=name, head_sha=sha,
                    status="queued", details_url=url, external_id=str(brid))
            self._runs[brid] = run
        if phase == "in_progress" and not build.get("complete"):
            yield threads.deferToThread(
                self.app.update_check_run, run, status="in_progress", started_at=utcnow(),
                details_url=url,
                output={"title": "Evaluating", "summary": "The model is being evaluated on the hidden test set."})
            return
        if build.get("results") == RETRY:  # worker lost: Buildbot queues the build again
            yield threads.deferToThread(
                self.app.update_check_run, run, status="queued",
                output={"title": "Queued again", "summary": "The worker was lost; the evaluation will be retried."})
            return
        if message is None:
            outcome = outcome_for(build)
            message = {"conclusion": outcome.conclusion, "title": outcome.title, "summary": outcome.summary}
        output = {"title": message["title"], "summary": message["summary"][:65000]}
        if message.get("text"):
            output["text"] = message["text"][:65000]
        yield threads.deferToThread(
            self.app.update_check_run, run, status="completed", conclusion=message["conclusion"],
            completed_at=utcnow(), details_url=url, output=output)
        self._runs.pop(brid, None)
