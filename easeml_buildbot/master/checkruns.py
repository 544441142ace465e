"""Check runs as desired state: persisted per (repository, head, check name), reconciled.

GitHub is sometimes down or slow. A check-run update that is only attempted from the
reporter's callback is lost when it fails, and a run left ``in_progress`` or ``queued`` forever
blocks the pull request. So the reporter (``master.checks``) only *records* what the check
run should show, and :class:`CheckRunReconciler` makes GitHub match it, retrying with
doubling, capped delays until GitHub accepts it, across master restarts and on any master.

The state is one table, ``easeml_check_runs``, in the ledger's database (SQLite, or the
PostgreSQL all masters share), made like the mail outbox (``master.outbox``):

* one row per check run: ``(repo, head_sha, name)`` is unique, so every build of a head
  (re-runs, ``reopened`` replays, a build retried after a lost worker) reports on the same
  GitHub check run, whose id is stored once known;
* ``desire`` stores a new desired state only if it is newer than the stored one, ordered by
  (build request id, build id, phase): a late ``in_progress`` never overwrites ``completed``,
  and the same report from a second master is a no-op. Each accepted state bumps ``version``;
* ``claim`` leases dirty rows (``version > synced_version``) with a conditional ``UPDATE``
  (one claimer wins, whatever number of masters race); a master killed mid-call loses the
  lease after ``lease`` seconds;
* ``synced`` records the version GitHub now shows (a newer one desired meanwhile stays
  dirty); ``failed`` schedules the next attempt.

A run whose GitHub id is unknown is created directly in its current desired state (one
write). A ``queued`` state waits ``queued_grace`` seconds (default 1) before it is written,
an ``in_progress`` one ``started_grace`` seconds (default 2): a build that starts within the
first supersedes the queued state, one that ends within the second supersedes the started
one, and a fast build's run is created directly ``completed``: one write per build instead of
three. GitHub asks for >= 1 s between writes, so each write saved is a second of a check
run's latency and of the App's write budget. When an earlier create may have reached GitHub
unseen (a timeout, a lost answer) or the build answers a replayed event, the reconciler
first looks the run up by name on the head, so no second run is created.

GitHub calls run in the service's own bounded :class:`~twisted.python.threadpool.ThreadPool`
(``github_threads``), never in the reactor's default pool that the ledger steps, the mail
outbox and the web UI use: a GitHub answering in 25 s slows only the check runs. Database
calls of this module are short and run in the default pool.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from twisted.internet import defer, threads
from twisted.python import log

from buildbot.util import service

from easeml_buildbot.master import metrics
from easeml_buildbot.master.drain_loop import DrainLoop

metadata = sa.MetaData()

check_runs_table = sa.Table(
    "easeml_check_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo", sa.String(200), nullable=False),
    sa.Column("head_sha", sa.String(64), nullable=False),
    sa.Column("name", sa.String(320), nullable=False),
    sa.Column("installation_id", sa.BigInteger, nullable=False),
    sa.Column("check_run_id", sa.BigInteger, nullable=True),  # GitHub's, once created or found
    # the report the desired state comes from; newer ones (tuple order) supersede older ones
    sa.Column("o_request", sa.BigInteger, nullable=False),
    sa.Column("o_build", sa.BigInteger, nullable=False),
    sa.Column("o_phase", sa.Integer, nullable=False),
    sa.Column("desired", sa.JSON, nullable=False),  # the check-run fields to send
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("synced_version", sa.Integer, nullable=False),
    sa.Column("lookup", sa.Boolean, nullable=False),  # find an existing run before creating one
    sa.Column("attempts", sa.Integer, nullable=False),
    # times are UNIX seconds (float), like the outbox
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("synced_at", sa.Float, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.UniqueConstraint("repo", "head_sha", "name", name="uq_easeml_check_runs_head"),
    sa.Index("ix_easeml_check_runs_due", "next_attempt_at"),
)

DEFAULT_EXPIRY = 3 * 24 * 3600.0  # a desired state GitHub refused this long is given up

# the report phases, in the order one build's reports supersede each other
PHASE_QUEUED, PHASE_STARTED, PHASE_ENDED = 0, 1, 2


@dataclass(frozen=True)
class Pending:
    """A claimed row: make GitHub show ``desired`` (version ``version``)."""

    id: int
    repo: str
    head_sha: str
    name: str
    installation_id: int
    check_run_id: int | None
    desired: dict[str, Any]
    version: int
    lookup: bool
    attempts: int


def create_tables(engine: Any) -> None:
    from easeml_buildbot.custody.ledger import create_tables as create

    create(metadata, engine)


class CheckRunStore:
    """The ``easeml_check_runs`` table on a ``Ledger``'s engine. Blocking; thread-safe."""

    def __init__(self, engine: Any, *, backoff: float = 1.0, max_backoff: float = 60.0,
                 lease: float = 120.0, expiry: float = DEFAULT_EXPIRY, queued_grace: float = 0.0,
                 started_grace: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.queued_grace = max(0.0, float(queued_grace))
        self.started_grace = max(0.0, float(started_grace))
        self.expiry = float(expiry)
        self.backoff = max(0.01, float(backoff))
        self.max_backoff = max(self.backoff, float(max_backoff))
        self.lease = float(lease)
        self.clock = clock
        self.owner = uuid.uuid4().hex  # this process's claims
        create_tables(engine)

    def desire(self, *, repo: str, head_sha: str, name: str, installation_id: int,
               order: tuple[int, int, int], desired: dict[str, Any], lookup: bool = False) -> bool:
        """Record what the check run should show; False when a newer state is stored already."""
        t = check_runs_table
        now = self.clock()
        # a queued (started) state is written only if no build start (end) supersedes it soon
        # (module docstring); a completed one at once
        grace = {"queued": self.queued_grace, "in_progress": self.started_grace}
        due = now + grace.get(str(desired.get("status")), 0.0)
        req, build, phase = (int(x) for x in order)
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(t).values(
                    repo=repo, head_sha=head_sha, name=name, installation_id=int(installation_id),
                    o_request=req, o_build=build, o_phase=phase, desired=desired, version=1,
                    synced_version=0, lookup=bool(lookup), attempts=0, next_attempt_at=due,
                    updated_at=now))
            return True
        except IntegrityError:
            pass
        older = sa.or_(t.c.o_request < req,
                       sa.and_(t.c.o_request == req, t.c.o_build < build),
                       sa.and_(t.c.o_request == req, t.c.o_build == build, t.c.o_phase < phase))
        values: dict[str, Any] = dict(
            installation_id=int(installation_id), o_request=req, o_build=build, o_phase=phase,
            desired=desired, version=t.c.version + 1, attempts=0, next_attempt_at=due,
            updated_at=now, last_error=None)
        if lookup:
            values["lookup"] = True
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(t).where(
                t.c.repo == repo, t.c.head_sha == head_sha, t.c.name == name, older).values(**values)).rowcount
        return done == 1

    def claim(self, limit: int = 20) -> list[Pending]:
        """Lease up to ``limit`` due rows GitHub does not show yet (each won by one claimer)."""
        t = check_runs_table
        now = self.clock()
        free = sa.or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)
        # a state GitHub has refused since ``expiry`` (the App was uninstalled, the run
        # deleted) is left alone; a newer desired state of the same run is tried again
        dirty = sa.and_(t.c.version > t.c.synced_version, t.c.updated_at > now - self.expiry)
        with self.engine.connect() as conn:
            ids = conn.execute(sa.select(t.c.id).where(dirty, t.c.next_attempt_at <= now, free)
                               .order_by(t.c.next_attempt_at, t.c.id).limit(limit)).scalars().all()
            conn.rollback()
        won: list[Pending] = []
        for row_id in ids:
            with self.engine.begin() as conn:
                done = conn.execute(sa.update(t).where(t.c.id == row_id, dirty, free).values(
                    claimed_by=self.owner, claimed_until=now + self.lease)).rowcount
                if done == 1:
                    r = conn.execute(sa.select(t).where(t.c.id == row_id)).one()
                    won.append(Pending(id=r.id, repo=r.repo, head_sha=r.head_sha, name=r.name,
                                       installation_id=r.installation_id, check_run_id=r.check_run_id,
                                       desired=dict(r.desired), version=r.version, lookup=bool(r.lookup),
                                       attempts=r.attempts))
        return won

    def synced(self, row: Pending, check_run_id: int) -> bool:
        """GitHub shows ``row.version``; False when the lease was lost meanwhile."""
        t = check_runs_table
        now = self.clock()
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(t).where(t.c.id == row.id, t.c.claimed_by == self.owner).values(
                synced_version=row.version,
                check_run_id=int(check_run_id), lookup=False, attempts=0, claimed_by=None,
                claimed_until=None, synced_at=now, last_error=None, next_attempt_at=now)).rowcount
        return done == 1

    def failed(self, row: Pending, reason: str, check_run_id: int | None = None) -> float:
        """Release a claimed row for a later attempt; returns the delay in seconds."""
        t = check_runs_table
        delay = min(self.backoff * (2 ** min(row.attempts, 30)), self.max_backoff)
        values: dict[str, Any] = dict(attempts=row.attempts + 1, next_attempt_at=self.clock() + delay,
                                      claimed_by=None, claimed_until=None, last_error=reason[:500])
        if check_run_id is not None:
            values["check_run_id"] = int(check_run_id)
        else:  # a create that timed out may have been made: look before creating again
            values["lookup"] = True
        with self.engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.id == row.id, t.c.claimed_by == self.owner).values(**values))
        return delay

    def release(self) -> None:
        """Give up this process's leases (clean shutdown: another master may go on at once)."""
        t = check_runs_table
        with self.engine.begin() as conn:
            conn.execute(sa.update(t).where(t.c.claimed_by == self.owner).values(
                claimed_by=None, claimed_until=None))

    def depth(self) -> int:
        """Check runs GitHub does not show as desired yet."""
        t = check_runs_table
        with self.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.version > t.c.synced_version)).scalar_one()
            conn.rollback()
        return int(n)

    def rows(self) -> list[dict[str, Any]]:
        """Every row (operator tooling and tests)."""
        with self.engine.connect() as conn:
            out = [dict(r._mapping) for r in conn.execute(sa.select(check_runs_table).order_by(check_runs_table.c.id))]
            conn.rollback()
        return out


def to_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def push(app: Any, row: Pending) -> int:
    """Make GitHub show ``row.desired`` (blocking; in the GitHub pool). Returns the run's id.

    Raises on any failure; ``_CheckRunIdKnown`` carries the id when it was learnt before."""
    d = dict(row.desired)
    fields = dict(status=d.get("status"), conclusion=d.get("conclusion"), details_url=d.get("details_url"),
                  external_id=d.get("external_id"), output=d.get("output"),
                  started_at=to_datetime(d.get("started_at")), completed_at=to_datetime(d.get("completed_at")))
    run_id = row.check_run_id
    if run_id is None and row.lookup:
        found = app.find_check_run(row.installation_id, row.repo, row.name, row.head_sha)
        if found is not None:
            run_id = int(found.id)
    if run_id is None:
        run = app.create_check_run(row.installation_id, row.repo, name=row.name, head_sha=row.head_sha, **fields)
        return int(run.id)
    try:
        app.update_check_run_by_id(row.installation_id, row.repo, run_id, **fields)
    except Exception as exc:
        raise CheckRunIdKnown(run_id) from exc
    return run_id


class CheckRunIdKnown(Exception):
    """An update failed, but the run's GitHub id is known (no lookup needed next time)."""

    def __init__(self, run_id: int) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class CheckRunReconciler(service.BuildbotService):
    """Owns the GitHub thread pool and drives ``easeml_check_runs`` towards GitHub.

    Every ``interval`` seconds (and on :meth:`kick`, after a new desired state) it claims the
    due rows and pushes each through :func:`push` in the GitHub pool; a failure is retried
    after ``backoff`` seconds, doubling up to ``max_backoff``. :meth:`run` runs any other
    GitHub call (the hook's commit-message read) in the same pool.
    """

    name = "easeml-github"

    def checkConfig(self, *, github_threads: int = 4, interval: float = 1.0,
                    backoff: float = 1.0, max_backoff: float = 60.0, lease: float = 120.0,
                    queued_grace: float = 1.0, started_grace: float = 2.0, **kwargs: Any):
        from buildbot import config

        for key, value in (("queued_grace", queued_grace), ("started_grace", started_grace)):
            if float(value) < 0:
                config.error(f"CheckRunReconciler: {key} must be >= 0 seconds")
        if int(github_threads) < 1:
            config.error("CheckRunReconciler: github_threads must be at least 1")
        if not (float(backoff) > 0 and float(max_backoff) >= float(backoff) and float(lease) > 0):
            config.error("CheckRunReconciler: backoff, max_backoff and lease must be positive seconds "
                         "(max_backoff >= backoff)")

    @defer.inlineCallbacks
    def reconfigService(self, *, github_threads: int = 4, interval: float = 1.0,
                        backoff: float = 1.0, max_backoff: float = 60.0, lease: float = 120.0,
                        queued_grace: float = 1.0, started_grace: float = 2.0, **kwargs: Any):
        from twisted.python.threadpool import ThreadPool

        from easeml_buildbot.master.service import easeml_service

        svc = easeml_service(self.master)
        self.interval = max(0.05, float(interval))
        self.github_threads = int(github_threads)
        if getattr(self, "pool", None) is None:
            self.pool = ThreadPool(minthreads=0, maxthreads=self.github_threads, name="easeml-github")
            self.pool.start()
        else:
            self.pool.adjustPoolsize(0, self.github_threads)
        reactor = self.master.reactor
        store = getattr(self, "store", None)
        led = yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), svc.ledger)
        if store is None or store.engine is not led.engine:
            # one store (one lease owner) per process: a reconfig keeps the claims in flight
            self.store = yield threads.deferToThreadPool(
                reactor, reactor.getThreadPool(),
                lambda: CheckRunStore(led.engine, backoff=backoff, max_backoff=max_backoff,
                                      lease=lease, queued_grace=queued_grace,
                                      started_grace=started_grace))
        else:
            store.backoff, store.max_backoff, store.lease = float(backoff), float(max_backoff), float(lease)
            store.queued_grace = max(0.0, float(queued_grace))
            store.started_grace = max(0.0, float(started_grace))
        if getattr(self, "_loop", None) is None:
            self._loop = DrainLoop(self._drain, reactor=reactor, interval=self.interval)
            self._loop.start()

    @defer.inlineCallbacks
    def stopService(self):
        loop, self._loop = getattr(self, "_loop", None), None
        if loop is not None:
            yield loop.stop()  # waits for the pass in flight
        pool, self.pool = getattr(self, "pool", None), None
        if pool is not None:
            reactor = self.master.reactor
            yield threads.deferToThreadPool(reactor, reactor.getThreadPool(), pool.stop)
        if getattr(self, "store", None) is not None:
            try:
                yield self._db(self.store.release)
            except Exception as exc:  # noqa: BLE001  (the database is down: the leases expire)
                log.msg(f"easeml: could not release check-run leases ({type(exc).__name__})")
        yield super().stopService()

    # -- for the reporter and the hook
    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        """``fn(*args, **kwargs)`` in the GitHub pool (a Deferred)."""
        if self.pool is None:
            return defer.fail(RuntimeError("the GitHub thread pool is stopped"))
        return threads.deferToThreadPool(self.master.reactor, self.pool, fn, *args, **kwargs)

    @property
    def app(self):
        """The master's GitHub App (``EasemlService``; opened on first use, read in the pool)."""
        from easeml_buildbot.master.service import easeml_service

        return easeml_service(self.master).app()

    def desire(self, **kwargs: Any):
        """Store a desired state (Deferred of bool) and sync soon."""
        d = self._db(lambda: self.store.desire(**kwargs))

        def stored(accepted):
            if accepted:
                self.kick()
            return accepted
        return d.addCallback(stored)

    def depth(self):
        return self._db(self.store.depth)

    # -- the loop
    def _db(self, fn: Callable[[], Any]):
        reactor = self.master.reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn)

    def kick(self) -> None:
        """Sync now (coalesced: one pass at a time; a kick during a pass runs one more)."""
        if getattr(self, "store", None) is None or getattr(self, "_loop", None) is None:
            return
        self._loop.kick()

    @defer.inlineCallbacks
    def _drain(self):
        try:
            rows = yield self._db(lambda: self.store.claim(limit=max(4, 4 * self.github_threads)))
        except Exception as exc:  # noqa: BLE001  (the database is down: next tick)
            log.msg(f"easeml: check-run state unavailable ({type(exc).__name__}: {str(exc)[:200]}); retrying")
            return
        # rows are distinct check runs: push them side by side, bounded by the pool
        yield defer.DeferredList([self._one(r) for r in rows], consumeErrors=True)

    @defer.inlineCallbacks
    def _one(self, row: Pending):
        where = f"{row.repo}@{row.head_sha[:12]} {row.name!r} -> {row.desired.get('status')}"
        if row.attempts:
            metrics.GITHUB_RETRIES.inc()
        try:
            run_id = yield self.run(lambda: push(self.app, row))
        except Exception as exc:  # noqa: BLE001  (every GitHub failure is retried)
            metrics.GITHUB_ERRORS.inc()
            known = exc.run_id if isinstance(exc, CheckRunIdKnown) else None
            cause = exc.__cause__ if isinstance(exc, CheckRunIdKnown) and exc.__cause__ else exc
            reason = f"{type(cause).__name__}: {str(cause)[:300]}"
            try:
                delay = yield self._db(lambda: self.store.failed(row, reason, known))
            except Exception as db_exc:  # noqa: BLE001
                log.msg(f"easeml: check run {where}: GitHub failed ({reason}) and the state could not "
                        f"be saved ({type(db_exc).__name__}); the lease expires and it is retried")
                return
            log.msg(f"easeml: check run {where}: attempt {row.attempts + 1} failed ({reason}); "
                    f"kept, next try in {delay:g}s")
            return
        try:
            yield self._db(lambda: self.store.synced(row, run_id))
        except Exception as exc:  # noqa: BLE001
            log.msg(f"easeml: check run {where} written, but not recorded ({type(exc).__name__}); "
                    "it is written again")
            return
        if row.attempts:
            log.msg(f"easeml: check run {where}: delivered after {row.attempts + 1} attempts")
