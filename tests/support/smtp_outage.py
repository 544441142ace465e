"""An SMTP outage, for real: owners' mails of committed ledger uses handed to the mail
notifier (``make_email_reporters``, as ``configure`` builds it) while the aiosmtpd relay is
down, the relay brought back after ``outage`` seconds, then every mail must arrive exactly
once and its owners be recorded as ``notified`` only from the delivery on.

Shared by the suite (tests/email/test_outbox.py: an outage longer than the old ~14 s
give-up window) and benchmarks/fault_smtp_outage.py (5 minutes, the production schedule).

    figures = run_outage(tmp_path, reactor, outage=16, smtp={"outbox_max_backoff": 4})
    figures.lost == figures.duplicated == figures.notified_early == 0
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.smtp import SmtpServer, start_notifier_in

REPO = "acme/churn-model"
DATASET = "7a" * 32
OWNERS = ("owner@example.com", "lead@example.com")


@dataclass
class OutageFigures:
    mails: int  # owners' mails handed to the notifier while the relay was down
    delivered: int  # distinct mails the relay accepted
    duplicated: int  # extra copies of a mail the relay accepted
    lost: int  # mails never delivered
    notified_early: int  # polls that saw a use ``notified`` before its mail was delivered
    notified: int  # uses whose owners are recorded as notified at the end
    outage: float  # seconds the relay was down
    return_to_delivered: float  # seconds from the relay's return to the last delivery
    return_to_notified: float  # seconds from the relay's return to the last ``notified``
    attempts: list[int] = field(default_factory=list)  # outbox attempts per mail
    states: list[str] = field(default_factory=list)  # outbox row states at the end

    def lines(self) -> list[str]:
        return [
            f"mails attempted / delivered: {self.mails} / {self.delivered} "
            f"(lost {self.lost}, duplicated {self.duplicated})",
            f"relay down {self.outage:.0f} s; delivered {self.return_to_delivered:.1f} s and notified "
            f"{self.return_to_notified:.1f} s after it returned",
            f"notified before delivery: {self.notified_early} polls; notified at the end: {self.notified} "
            f"of {self.mails} uses",
            f"outbox attempts per mail: {self.attempts}; states: {sorted(set(self.states))}",
        ]


def _committed_uses(url: str, n: int) -> list[int]:
    """``n`` uses committed the way ``RecordResult`` commits them (``notified`` left to the mail)."""
    from easeml_buildbot.custody.ledger import Ledger

    with Ledger(url) as led:
        ids = []
        for i in range(n):
            r = led.reserve(repo=REPO, dataset_id=DATASET, steps=n + 1, adaptivity="none",
                            commit=f"{i:02x}" * 20, build=f"http://bb/builds/{i + 1}",
                            condition="n > 0.8 +/- 0.05")
            led.commit(r.use_id, verdict="pass", result={"status": "scored", "scored": True})
            ids.append(r.use_id)
        return ids


def _notified(url: str, ids: list[int]) -> dict[int, tuple[str, ...]]:
    from easeml_buildbot.custody.ledger import Ledger

    with Ledger(url) as led:
        return {i: led.use(i).notified for i in ids}


def _report(use_id: int, buildid: int) -> dict[str, Any]:
    from easeml_buildbot.master import mail as em

    facts = em.BuildFacts(repo=REPO, sha=f"{buildid:040x}", status="evaluated", results=0,
                          pr_number=buildid, owners=OWNERS)
    mail = em.OutgoingMail("evaluation", OWNERS, em.note_mail(facts, f"verdict of build {buildid}",
                                                               "owners only: n = 0.91"))
    return {"easeml_mails": [mail], "builds": [{"buildid": buildid}], "easeml_use_id": use_id,
            "easeml_owners": list(OWNERS)}


def run_outage(base: Path, reactor: Any, *, outage: float, mails: int = 3, smtp: dict[str, Any] | None = None,
               ledger_url: str | None = None, settle: float = 3.0, poll: float = 0.2,
               progress: Any = None) -> OutageFigures:
    """Hand ``mails`` owners' mails to a notifier while the relay is down, bring the relay
    back after ``outage`` seconds and measure. ``smtp`` overrides the ``[smtp]`` settings
    (default: the production schedule, only the relay's address set)."""
    from twisted.internet.threads import blockingCallFromThread

    from easeml_buildbot.master import mail as em
    from easeml_buildbot.master.settings import Settings

    base.mkdir(parents=True, exist_ok=True)
    url = ledger_url or f"sqlite:///{base / 'ledger.sqlite'}"
    ids = _committed_uses(url, mails)
    server = SmtpServer().start()
    server.down()
    section = {"host": server.host, "port": server.port, "from_addr": "easeml-ci@example.com", **(smtp or {})}
    s = Settings.from_dict({"forge": "local", "local": {"repo": "/r"}, "smtp": section, "ledger_url": url,
                            "allowed_email_domains": ["example.com"]})
    (notifier,) = em.make_email_reporters(s)
    start_notifier_in(reactor, notifier, s)
    early = 0
    first_notified: dict[int, float] = {}
    try:
        for k, use_id in enumerate(ids):
            blockingCallFromThread(reactor, notifier.sendMessage, [_report(use_id, k + 1)])
        down_at = time.monotonic()
        while time.monotonic() - down_at < outage:
            early += sum(1 for v in _notified(url, ids).values() if v)
            if progress:
                progress(time.monotonic() - down_at)
            time.sleep(min(1.0, max(poll, outage / 50)))
        assert server.messages == [], "the relay was down: nothing can have arrived"
        server.up()
        up_at = time.monotonic()
        delivered_at = None
        deadline = up_at + float(s.smtp.outbox_max_backoff or 600) + 60
        while time.monotonic() < deadline:
            arrived = len(server.messages)
            if arrived >= mails and delivered_at is None:
                delivered_at = time.monotonic()
            now = _notified(url, ids)
            for use_id, who in now.items():
                if who and use_id not in first_notified:
                    first_notified[use_id] = time.monotonic()
            # ``notified`` must never lead the mail: the outbox records it in the delivery's transaction
            if arrived < sum(1 for v in now.values() if v):
                early += 1
            if delivered_at is not None and len(first_notified) == mails:
                break
            time.sleep(poll)
        time.sleep(settle)  # more drain ticks: nothing may be sent twice
        ids_seen = [m.message["Message-ID"] for m in server.messages]
        rows = notifier.outbox.rows()
        final = _notified(url, ids)
        return OutageFigures(
            mails=mails, delivered=len(set(ids_seen)), duplicated=len(ids_seen) - len(set(ids_seen)),
            lost=mails - len(set(ids_seen)), notified_early=early,
            notified=sum(1 for v in final.values() if tuple(v) == tuple(sorted(OWNERS))),
            outage=up_at - down_at,
            return_to_delivered=(delivered_at - up_at) if delivered_at else float("inf"),
            return_to_notified=(max(first_notified.values()) - up_at) if len(first_notified) == mails
            else float("inf"),
            attempts=[r["attempts"] for r in rows], states=[r["state"] for r in rows])
    finally:
        blockingCallFromThread(reactor, notifier.stopService)
        server.close()
