"""Shared helpers for the email tests: a Twisted reactor in a thread, sample verdicts, scans.

The notifier is Twisted code; the tests drive it from pytest by running the global reactor
in a daemon thread and calling into it with ``blockingCallFromThread``. SMTP is a real
aiosmtpd server on loopback (``support.smtp``).
"""

from __future__ import annotations

import pytest
from twisted.internet.threads import blockingCallFromThread
from twisted.python import log as twlog

from support.smtp import reactor_thread, smtp_server, start_notifier_in  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def reactor():
    return reactor_thread()


@pytest.fixture
def start_notifier(reactor):
    """``start_notifier(notifier, settings=None)``: configure a notifier service as Buildbot
    would, in the reactor, on a master whose settings (and ledger) are ``settings``."""

    def start(notifier, settings=None):
        return start_notifier_in(reactor, notifier, settings)

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
