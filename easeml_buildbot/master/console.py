"""Console reporter: one log line per finished evaluation (the local forge's "check run")."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python import log

from buildbot.reporters.base import ReporterBase
from buildbot.reporters.generators.build import BuildStatusGenerator
from buildbot.reporters.message import MessageFormatterRenderable

from easeml_buildbot.master.status import console_line


class ConsoleReporter(ReporterBase):
    name = "easeml-console"

    def checkConfig(self, generators=None, **kwargs):
        super().checkConfig(generators=generators or self._default_generators())

    @defer.inlineCallbacks
    def reconfigService(self, generators=None, **kwargs):
        yield super().reconfigService(generators=generators or self._default_generators())

    def _default_generators(self):
        return [BuildStatusGenerator(mode="all", message_formatter=MessageFormatterRenderable("done"))]

    def sendMessage(self, reports):
        for report in reports:
            for build in report["builds"]:
                log.msg(console_line(build))
        return defer.succeed(None)
