"""Shared helpers for the email tests: a Twisted reactor in a thread, sample verdicts, scans.

The notifier is Twisted code; the tests drive it from pytest by running the global reactor
in a daemon thread and calling into it with ``blockingCallFromThread``. SMTP is a real
aiosmtpd server on loopback (``support.smtp``).
"""

from __future__ import annotations

import re
import threading
import time
from email.message import EmailMessage

import numpy as np
import pytest
from twisted.internet import defer
from twisted.internet.threads import blockingCallFromThread
from twisted.python import log as twlog

from support.smtp import SmtpServer, smtp_server  # noqa: F401  (fixture)


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
    """What ``ReporterBase.reconfigService`` needs of a master: a reactor and an mq to subscribe to."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.mq = self
        self.master = self  # services find their master through their parent

    def startConsuming(self, callback, key):
        return defer.succeed(_Consumer())


@pytest.fixture
def start_notifier(reactor):
    """``start_notifier(notifier)``: configure a notifier service as Buildbot would, in the reactor."""

    def start(notifier):
        notifier.parent = LoopbackMaster(reactor)
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


def verdict_dict(n: float, o: float, d: float, *, outcome="pass", raw=None, adaptivity="full",
                 steps=8, condition="n - o > 0.02 +/- 0.01", half=0.02, samples=5000):
    """A Verdict.to_dict()-shaped result, as the worker writes it (for compose-level tests)."""
    return {
        "outcome": outcome, "raw": raw or outcome, "mode": "fp-free", "condition": condition,
        "estimates": {"n": n, "o": o, "d": d},
        "intervals": {"n": [n - half, n + half], "o": [o - half, o + half], "d": [max(0, d - half), d + half]},
        "samples_used": samples, "samples_needed": samples, "enough_samples": True, "method": "hoeffding",
        "reliability": 0.9999, "adaptivity": adaptivity, "steps": steps,
        "clauses": [{"index": 0, "clause": condition, "estimate": n - o,
                     "interval": [n - o - half, n - o + half], "outcome": outcome,
                     "technique": "hoeffding", "samples": samples}],
        "deciding_clause": None, "notes": [],
    }


def ledger_uses(count: int, *, adaptivity="full", steps=8, outcome="pass"):
    """``count`` scored uses shaped like ``Ledger.uses`` (as dicts), oldest first."""
    uses = []
    for i in range(1, count + 1):
        n = 0.80 + 0.01 * i
        v = verdict_dict(n, 0.80, 0.05, outcome=outcome, adaptivity=adaptivity, steps=steps)
        uses.append({"id": 100 + i, "use_number": i, "verdict": outcome, "state": "committed",
                     "result": {"status": "scored", "scored": True, "verdict": v, "samples_used": 5000},
                     "notified": ("owner@example.com",)})
    return uses


def mime_parts(msg: EmailMessage) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for part in msg.walk():
        out.setdefault(part.get_content_type(), []).append(part)
    return out


PGP_MARKERS = re.compile(rb"BEGIN PGP|END PGP|PRIVATE KEY")


def assert_no_key_material(raw: bytes, *, secrets: tuple[bytes, ...] = ()) -> None:
    """No armor marker, and not one line of the given key files / passphrases in the mail.

    Each armored key line is 64 base64 characters of key packets; finding any of them
    (or the passphrase) anywhere in the raw message would mean key material leaked.
    """
    assert not PGP_MARKERS.search(raw), PGP_MARKERS.search(raw)
    flat = raw.replace(b"\r\n", b"").replace(b"\n", b"")
    for s in secrets:
        lines = [ln.strip() for ln in s.splitlines() if len(ln.strip()) >= 24] or [s]
        for ln in lines:
            assert ln not in raw and ln not in flat, f"key material {ln[:12]!r}... found in the mail"


def decoded_text(msg: EmailMessage) -> str:
    """Every text part decoded (what a reader sees), for content scans."""
    return "\n".join(p.get_content() for p in msg.walk() if p.get_content_maintype() == "text")


__all__ = ["SmtpServer", "np"]
