"""Shared helpers for the email tests: a Twisted reactor in a thread, sample verdicts, scans.

The notifier is Twisted code; the tests drive it from pytest by running the global reactor
in a daemon thread and calling into it with ``blockingCallFromThread``. SMTP is a real
aiosmtpd server on loopback (``support.smtp``).
"""

from __future__ import annotations

import threading
import time

import pytest
from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread
from twisted.python import log as twlog

from support.smtp import smtp_server  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def reactor():
    from twisted.internet import reactor as r

    if not r.running:
        threading.Thread(target=r.run, kwargs={"installSignalHandlers": False},
                         daemon=True, name="twisted-reactor").start()
        deadline = time.monotonic() + 10
        while not r.running and time.monotonic() < deadline:
            time.sleep(0.01)
    assert r.running, "the Twisted reactor did not start"
    return r


class _Consumer:
    def stopConsuming(self):
        return defer.succeed(None)


class LoopbackMaster:
    """What ``ReporterBase.reconfigService`` needs of a master: a reactor, an mq to subscribe
    to and, with ``settings``, the master's EasemlService (its ledger holds the outbox)."""

    def __init__(self, reactor, settings=None):
        from types import SimpleNamespace

        from easeml_buildbot.master.service import EasemlService

        self.reactor = reactor
        self.mq = self
        self.master = self  # services find their master through their parent
        self.service_manager = SimpleNamespace(
            namedServices={"easeml": EasemlService(settings)} if settings is not None else {})

    def startConsuming(self, callback, key):
        return defer.succeed(_Consumer())


@pytest.fixture
def start_notifier(reactor):
    """``start_notifier(notifier, settings=None)``: configure a notifier service as Buildbot
    would, in the reactor, on a master whose settings (and ledger) are ``settings``."""

    def start(notifier, settings=None):
        notifier.parent = LoopbackMaster(reactor, settings)
        blockingCallFromThread(reactor, notifier.reconfigService,
                               *notifier._config_args, **notifier._config_kwargs)
        return notifier

    return start


@pytest.fixture
def deliver(reactor):
    """``deliver(notifier, mail) -> bool``: one delivery (with the notifier's retries), blocking."""

    def run(notifier, mail):
        return blockingCallFromThread(reactor, notifier.deliver, mail)

    return run


@pytest.fixture
def twisted_log():
    """Every Twisted log line emitted during the test (what ends up in twistd.log)."""
    lines: list[str] = []

    def observer(event):
        text = twlog.textFromEventDict(event)
        if text:
            lines.append(text)

    twlog.addObserver(observer)
    yield lines
    twlog.removeObserver(observer)
