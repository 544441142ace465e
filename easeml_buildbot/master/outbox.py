"""The mail outbox: every easeml mail is stored in the ledger's database before it is sent.

Under adaptivity ``none`` the owners' mail is the only place a verdict goes, so a mail must
survive an SMTP outage of any length (up to the operator's ``smtp.outbox_expiry``) and a
master restart. The outbox is one table, ``easeml_outbox``, in the ledger's database (SQLite
or the PostgreSQL all masters share), created next to the ledger's tables on the ledger's
own engine:

* ``enqueue`` stores the finished message (headers set, Message-ID fixed, so a retry is the
  same mail) with its recipients and, for owners' mail, the ledger use and the addresses to
  record as ``notified`` once it is delivered. A ``key`` (build id and position) makes a
  second report of the same build (e.g. another master's reporter) a no-op.
* ``claim`` takes due mails for one sender with a conditional ``UPDATE ... WHERE id = ? AND
  state = 'queued' AND (claimed_until IS NULL OR claimed_until < now)``: one row update wins,
  whatever number of masters race (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL re-checks the
  condition on the locked row). A claim is a lease: a master killed while sending loses it
  after ``lease`` seconds and another master sends the mail.
* ``delivered`` marks the row sent and adds the recipients to the use's ``notified`` in the
  same transaction; ``failed`` schedules the next attempt with doubling delays (capped);
  ``expire`` drops mails older than the expiry (logged, never marked notified).
* A delivered or expired row keeps no body (``message`` is emptied): the stored bodies hold
  owner-only results, and the ledger database is the operator's, never shown to a developer.

The blocking methods run in a thread (``deferToThread``); ``OutboxDrainer`` is the reactor
side, run by the mail notifier service (``EasemlMailNotifier``) with a ``LoopingCall``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

logger = logging.getLogger(__name__)

DEFAULT_EXPIRY = 3 * 24 * 3600.0  # seconds a mail is retried before it is dropped
DEFAULT_MAX_BACKOFF = 600.0  # longest delay between two attempts

metadata = sa.MetaData()

outbox_table = sa.Table(
    "easeml_outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(160), nullable=True),  # unique per mail of a build (NULLs never collide)
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("recipients", sa.JSON, nullable=False),
    sa.Column("message", sa.Text, nullable=False),  # the whole RFC 5322 message; '' once done
    sa.Column("use_id", sa.Integer, nullable=True),  # ledger use whose ``notified`` it fills
    sa.Column("notify", sa.JSON, nullable=True),  # addresses recorded as notified on delivery
    sa.Column("state", sa.String(8), nullable=False),  # queued | sent | expired
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # times are UNIX seconds (float): no time-zone handling differences between backends
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", sa.Float, nullable=True),
    sa.Column("done_at", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.UniqueConstraint("key", name="uq_easeml_outbox_key"),
    sa.Index("ix_easeml_outbox_due", "state", "next_attempt_at"),
)


@dataclass(frozen=True)
class QueuedMail:
    id: int
    kind: str
    recipients: tuple[str, ...]
    message: str
    attempts: int
    created_at: float


class Outbox:
    """The ``easeml_outbox`` table on a ``Ledger``'s engine. Blocking; thread-safe."""

    def __init__(self, ledger: Any, *, expiry: float = DEFAULT_EXPIRY, backoff: float = 2.0,
                 max_backoff: float = DEFAULT_MAX_BACKOFF, lease: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.expiry = float(expiry)
        self.backoff = max(0.0, float(backoff))
        self.max_backoff = max(self.backoff, float(max_backoff))
        self.lease = float(lease)
        self.clock = clock
        self.sender_id = uuid.uuid4().hex  # this process's claims
        from easeml_buildbot.custody.ledger import create_tables

        create_tables(metadata, self.engine)

    # -- producer
    def enqueue(self, kind: str, recipients: Sequence[str], message: str, *, key: str | None = None,
                use_id: int | None = None, notify: Iterable[str] = ()) -> int | None:
        """Store one mail, due now. Returns its id, or None when ``key`` is already queued.

        Raises (``LedgerError``) when the ledger's SQLite file was deleted or replaced: a mail
        stored there would never be read again; the caller sends it directly instead."""
        self.ledger.check_file()
        now = self.clock()
        values = dict(key=key, kind=kind, recipients=list(recipients), message=message,
                      use_id=int(use_id) if use_id is not None else None,
                      notify=sorted({str(a) for a in notify}), state="queued", attempts=0,
                      created_at=now, expires_at=now + self.expiry, next_attempt_at=now)
        try:
            with self.engine.begin() as conn:
                return conn.execute(sa.insert(outbox_table).values(**values)).inserted_primary_key[0]
        except IntegrityError:
            if key is None:
                raise
            return None

    # -- consumer
    def expire(self) -> list[QueuedMail]:
        """Drop (state ``expired``, body emptied) the unclaimed queued mails past their expiry."""
        t = outbox_table
        now = self.clock()
        dropped: list[QueuedMail] = []
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(t).where(
                t.c.state == "queued", t.c.expires_at <= now,
                sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now))).fetchall()
            for r in rows:
                done = conn.execute(sa.update(t).where(
                    t.c.id == r.id, t.c.state == "queued",
                    sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)).values(
                    state="expired", message="", done_at=now, claimed_by=None, claimed_until=None)).rowcount
                if done == 1:
                    dropped.append(_mail(r))
        return dropped

    def claim(self, limit: int = 20) -> list[QueuedMail]:
        """Take up to ``limit`` due mails for this process (each won by exactly one claimer)."""
        t = outbox_table
        now = self.clock()
        free = sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)
        with self.engine.connect() as conn:
            candidates = conn.execute(sa.select(t.c.id).where(
                t.c.state == "queued", t.c.next_attempt_at <= now, t.c.expires_at > now, free)
                .order_by(t.c.next_attempt_at, t.c.id).limit(limit)).scalars().all()
            conn.rollback()
        won: list[QueuedMail] = []
        for mail_id in candidates:
            with self.engine.begin() as conn:
                done = conn.execute(sa.update(t).where(
                    t.c.id == mail_id, t.c.state == "queued", t.c.expires_at > now, free).values(
                    claimed_by=self.sender_id, claimed_until=now + self.lease)).rowcount
                if done == 1:
                    won.append(_mail(conn.execute(sa.select(t).where(t.c.id == mail_id)).one()))
        return won

    def delivered(self, mail_id: int) -> tuple[str, ...]:
        """Mark a claimed mail sent and record its ``notify`` addresses on its ledger use
        (one transaction). Returns the addresses recorded."""
        t = outbox_table
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(t).where(t.c.id == mail_id)).one()
            done = conn.execute(sa.update(t).where(
                t.c.id == mail_id, t.c.state == "queued", t.c.claimed_by == self.sender_id).values(
                state="sent", message="", done_at=self.clock(), attempts=t.c.attempts + 1,
                claimed_by=None, claimed_until=None, last_error=None)).rowcount
            if done != 1 or row.use_id is None or not row.notify:
                return ()
            self.ledger.add_notified(row.use_id, row.notify, conn=conn)
            return tuple(row.notify)

    def failed(self, mail_id: int, reason: str) -> float:
        """Release a claimed mail for a later attempt; returns the delay in seconds."""
        t = outbox_table
        with self.engine.begin() as conn:
            attempts = conn.execute(sa.select(t.c.attempts).where(t.c.id == mail_id)).scalar_one()
            delay = min(self.backoff * (2 ** min(attempts, 40)), self.max_backoff)
            conn.execute(sa.update(t).where(t.c.id == mail_id, t.c.claimed_by == self.sender_id).values(
                attempts=attempts + 1, next_attempt_at=self.clock() + delay, claimed_by=None,
                claimed_until=None, last_error=reason[:500]))
        return delay

    def purge(self) -> int:
        """Delete sent/expired rows older than the expiry (they keep no body; this bounds the table)."""
        t = outbox_table
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(t).where(
                t.c.state != "queued", t.c.done_at < self.clock() - self.expiry)).rowcount

    def depth(self) -> int:
        """Mails waiting to be delivered."""
        t = outbox_table
        with self.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.state == "queued")).scalar_one()
            conn.rollback()
        return int(n)

    def rows(self) -> list[dict[str, Any]]:
        """Every row (operator tooling and tests)."""
        with self.engine.connect() as conn:
            out = [dict(r._mapping) for r in conn.execute(sa.select(outbox_table).order_by(outbox_table.c.id))]
            conn.rollback()
        return out


def _mail(r: Any) -> QueuedMail:
    return QueuedMail(id=r.id, kind=r.kind, recipients=tuple(r.recipients or ()), message=r.message,
                      attempts=r.attempts, created_at=r.created_at)


class OutboxDrainer:
    """Reactor side: every ``interval`` seconds (and on ``kick``), expire, claim and send.

    ``send(mail) -> Deferred`` is one SMTP attempt (the notifier's ``sendMail``); ``log`` gets
    one line per delivery, failure and expiry. DB calls run in the reactor's thread pool.
    """

    def __init__(self, outbox: Outbox, send: Callable[[QueuedMail], Any], *, reactor: Any,
                 interval: float, log: Callable[[str], None], safe_reason: Callable[[BaseException], str]):
        from easeml_buildbot.master.drain_loop import DrainLoop

        self.outbox = outbox
        self.send = send
        self.reactor = reactor
        self.log = log
        self.safe_reason = safe_reason
        self._loop = DrainLoop(self._drain, reactor=reactor, interval=interval)

    def start(self) -> None:
        self._loop.start()

    def stop(self):
        """Stop draining; fires when the drain in flight is done."""
        return self._loop.stop()

    def kick(self) -> None:
        self._loop.kick()

    def _thread(self, fn, *args):
        from twisted.internet import threads

        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), fn, *args)

    def _drain(self):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            try:
                for mail in (yield self._thread(self.outbox.expire)):
                    self.log(f"easeml email: dropping expired {mail.kind} mail #{mail.id} to "
                             f"{', '.join(mail.recipients)} after {mail.attempts} attempts "
                             f"({self.outbox.expiry:g}s in the outbox); not recorded as notified")
                if not self._loop.active:  # stopped during the expiry pass
                    return
                for mail in (yield self._thread(self.outbox.claim)):
                    yield self._one(mail)
                yield self._thread(self.outbox.purge)
            except Exception as exc:  # noqa: BLE001  (the database is down: next tick)
                self.log(f"easeml email: outbox unavailable ({type(exc).__name__}: {str(exc)[:200]}); "
                         "retrying later")

        return run()

    def _one(self, mail: QueuedMail):
        from twisted.internet import defer

        @defer.inlineCallbacks
        def run():
            try:
                yield self.send(mail)
            except Exception as exc:  # noqa: BLE001  (SMTP errors of every kind)
                reason = self.safe_reason(exc)
                delay = yield self._thread(self.outbox.failed, mail.id, reason)
                self.log(f"easeml email: attempt {mail.attempts + 1} to send {mail.kind} mail "
                         f"#{mail.id} failed ({reason}); kept in the outbox, next try in {delay:g}s")
                return
            notified = yield self._thread(self.outbox.delivered, mail.id)
            self.log(f"easeml email: sent {mail.kind} mail #{mail.id} to {', '.join(mail.recipients)}"
                     + (f"; recorded as notified: {', '.join(notified)}" if notified else ""))

        return run()
