"""The usage ledger: how often each (repository, test set) has been used, and every use.

Rules (see docs/custody.md):

* A use is *reserved* before the model's result is computed and *committed* before any
  result leaves the worker or master. A reserved use that is never committed or released
  (a crash, a kill -9) stays spent: a crash never gives a free look.
* ``release`` gives a use back only when the model produced nothing that was scored.
* Labels on demand (docs/labels-on-demand.md): a use whose models ran but whose disagreeing
  rows are not all labelled yet is set ``awaiting_labels`` (:meth:`Ledger.await_labels`):
  spent, never released, its claim kept, so the re-evaluation after the owners committed the
  labels continues *that* use (``reserve`` returns it with ``fresh=False``) and
  :meth:`Ledger.commit` closes it with the verdict: one use, counted once.
* Reservation is one atomic conditional ``UPDATE ... SET uses = uses + 1 WHERE uses < budget
  AND NOT retired``: with any number of threads or processes racing for the last use, exactly
  one row update succeeds. SQLite transactions start with ``BEGIN IMMEDIATE`` (with a busy
  timeout), PostgreSQL re-checks the condition on the locked row (READ COMMITTED).
* Retirement follows :mod:`policy`: after H uses, or at the first pass under ``firstChange``.
* A new dataset id (a rotated test set) is a new entry; old entries and their history stay.
* Reserving is idempotent per (test set, head, base): the use row carries a ``claim``
  (``head:base``) under a unique index while it is reserved or committed, so a duplicate
  delivery gets the existing use back (``Reservation.fresh`` is False), never a second one,
  race-safe across processes and masters (the index decides; the loser's transaction rolls
  back, its ``uses + 1`` with it). A release drops the claim.
* Each ledger has an ``instance_id`` created with its schema (table ``easeml_ledger``): the
  master keeps it, and every test set's reservation count, in Buildbot's own database and
  refuses a ledger that is new or behind (see ``easeml_buildbot.master.steps``).
* The promise a test set was first used for (steps, adaptivity, condition, reliability, mode,
  method) is bound to it: a later change is a ``PolicyMismatch``.

SQLite is the default (``sqlite:///path``); PostgreSQL via ``postgresql+psycopg://``; same code.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from easeml_buildbot.custody import policy

DEFAULT_LEDGER_URL = "sqlite:///var/ledger.sqlite"
LEDGER_URL_ENV = "EASEML_LEDGER_URL"

SCHEMA_VERSION = 2

metadata = sa.MetaData()

ledger_meta = sa.Table(
    "easeml_ledger", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

testsets = sa.Table(
    "easeml_testsets", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("repo", sa.String(255), nullable=False),
    sa.Column("dataset_id", sa.String(64), nullable=False),
    # counts are 64-bit: ``steps`` is the operator's/owner's number, int4 overflows at 2**31
    sa.Column("budget", sa.BigInteger, nullable=False),
    sa.Column("adaptivity", sa.String(16), nullable=False),
    sa.Column("uses", sa.BigInteger, nullable=False, default=0),
    sa.Column("retired", sa.Boolean, nullable=False, default=False),
    sa.Column("retired_reason", sa.Text, nullable=True),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("retired_by_use", sa.Integer, nullable=True),
    sa.Column("condition", sa.Text, nullable=True),   # normalized (str(parse_condition(...)))
    sa.Column("samples_needed", sa.BigInteger, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # the rest of the promise, bound at the first use (NULL on entries older than schema 2:
    # adopted at their next use)
    sa.Column("reliability", sa.Text, nullable=True),
    sa.Column("mode", sa.String(16), nullable=True),
    sa.Column("method", sa.String(16), nullable=True),
    sa.UniqueConstraint("repo", "dataset_id", name="uq_easeml_testsets_repo_dataset"),
    sa.CheckConstraint("uses >= 0 AND uses <= budget", name="ck_easeml_testsets_uses"),
)

uses_table = sa.Table(
    "easeml_uses", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("testset_id", sa.Integer, sa.ForeignKey("easeml_testsets.id"), nullable=False, index=True),
    sa.Column("use_number", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # reserved | awaiting_labels | committed | released
    sa.Column("commit_sha", sa.String(64), nullable=True),
    sa.Column("build", sa.Text, nullable=True),
    sa.Column("condition", sa.Text, nullable=True),
    sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("verdict", sa.String(8), nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("notified", sa.JSON, nullable=True),
    sa.Column("release_reason", sa.Text, nullable=True),
    sa.Column("base_sha", sa.String(64), nullable=True),
    # "head:base" while reserved or committed, NULL once released (NULLs never collide)
    sa.Column("claim", sa.String(160), nullable=True),
)
claim_index = sa.Index("uq_easeml_uses_claim", uses_table.c.testset_id, uses_table.c.claim, unique=True)

# (table, column, DDL type) added by schema 2; budget/uses/samples_needed/use_number widened
_ADDED_COLUMNS = (
    ("easeml_testsets", "reliability", "TEXT"), ("easeml_testsets", "mode", "VARCHAR(16)"),
    ("easeml_testsets", "method", "VARCHAR(16)"), ("easeml_uses", "base_sha", "VARCHAR(64)"),
    ("easeml_uses", "claim", "VARCHAR(160)"),
)
_WIDENED_COLUMNS = (("easeml_testsets", "budget"), ("easeml_testsets", "uses"),
                    ("easeml_testsets", "samples_needed"), ("easeml_uses", "use_number"))


#: use states a commit may close: a running build's, and one waiting for labels
_OPEN_STATES = ("reserved", "awaiting_labels")


class LedgerError(Exception):
    """The ledger refused an operation; the message says why."""


class TestSetExhausted(LedgerError):
    """Every use of the test set's budget is spent (committed or reserved)."""

    __test__ = False  # not a pytest test class


class TestSetRetired(TestSetExhausted):
    """The test set was retired (by its policy or its spent budget); never used again.

    A subclass of TestSetExhausted: callers that only care "no use left" catch that one.
    """

    __test__ = False


class PolicyMismatch(LedgerError):
    """The configuration's promise (steps, adaptivity, condition, reliability, mode, method)
    differs from the one the test set was first used with.

    A configuration problem (report it as such): rotate the test set to change them.
    """


def normalize_condition(text: str | None) -> str | None:
    """The canonical text of a condition (``str(parse_condition(text))``), so that spacing or
    spelling differences are not a changed promise; unparsable text is kept, spaces collapsed."""
    if text is None or str(text).strip() == "":
        return None
    from easeml_buildbot.estimator.condition import parse_condition

    try:
        return str(parse_condition(str(text)))
    except Exception:  # noqa: BLE001 - any parse problem: compare the text itself
        return " ".join(str(text).split())


def normalize_reliability(value: Any) -> str | None:
    """``0.9999``, ``"0.9999"`` and ``0.99990`` are the same promise: ``repr(float(value))``."""
    if value is None or value == "":
        return None
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value).strip()


def _normalize_word(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()


@dataclass(frozen=True)
class LedgerEntry:
    """The state of one (repository, test set) pair."""

    id: int
    repo: str
    dataset_id: str
    budget: int
    adaptivity: str
    uses: int                 # spent: committed + reserved-but-unfinished
    remaining: int
    retired: bool             # retired by policy, or budget fully spent
    retired_reason: str | None
    retired_at: _dt.datetime | None
    retired_by_use: int | None  # the use whose commit retired it (None: not yet / by exhaustion)
    pending: int              # reserved, not committed or released
    committed: int
    condition: str | None
    samples_needed: int | None
    created_at: _dt.datetime
    reliability: str | None = None
    mode: str | None = None
    method: str | None = None
    reservations: int = 0     # every use row ever made (reserved, committed or released): only grows
    awaiting_labels: int = 0  # spent, waiting for the owners' labels (labels on demand)

    @property
    def short_id(self) -> str:
        return self.dataset_id[:12]


@dataclass(frozen=True)
class UseRecord:
    """One use of a test set; ``result`` is the scorer's JSON (only in the ledger)."""

    id: int
    repo: str
    dataset_id: str
    adaptivity: str
    use_number: int
    state: str
    commit: str | None
    build: str | None
    condition: str | None
    reserved_at: _dt.datetime
    finished_at: _dt.datetime | None
    verdict: str | None
    result: Mapping[str, Any] | None = field(repr=False)
    notified: tuple[str, ...]
    release_reason: str | None
    base: str | None = None

    @property
    def developer_may_see(self) -> bool:
        return self.state == "committed" and policy.developer_may_see(self.adaptivity, self.verdict)


@dataclass(frozen=True)
class Reservation:
    """A reserved use: spent until committed (stays spent) or released (given back)."""

    use_id: int
    use_number: int   # 1-based position within the budget
    remaining: int    # uses left after this one
    budget: int
    adaptivity: str
    repo: str
    dataset_id: str
    fresh: bool = True   # False: a use already held this (head, base); nothing new was spent
    # of that use: reserved (its build is still running), awaiting_labels (its models ran; the
    # build that gets it continues it once the labels are in) or committed
    state: str = "reserved"
    reservations: int = 0    # the test set's reservation count after this call (only grows)


def _retired(repo: str, dataset_id: str, reason: str | None) -> TestSetRetired:
    return TestSetRetired(f"test set {dataset_id[:12]} of {repo} is retired ({reason}); "
                          "commit a new test set")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _utc(value: _dt.datetime | None) -> _dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=_dt.timezone.utc)
    return value


def normalize_url(url: str | os.PathLike[str] | None) -> str:
    """``None`` -> ``$EASEML_LEDGER_URL`` or the default; a bare path -> ``sqlite:///path``."""
    if url is None:
        url = os.environ.get(LEDGER_URL_ENV) or DEFAULT_LEDGER_URL
    url = os.fspath(url)
    if "://" not in url:
        return "sqlite:///" + str(Path(url).expanduser().absolute())
    return url


def _make_engine(url: str, busy_timeout: float) -> Engine:
    u = sa.engine.make_url(url)
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            # results live here (verdicts the developer may not see): private from the start;
            # SQLite gives its -wal/-shm files the same mode
            # O_EXCL: only create. Opening and closing an existing database file would drop
            # every SQLite POSIX lock this process holds on it (fcntl locks are per process,
            # released on any close), letting another process delete our live WAL.
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        engine = sa.create_engine(u, connect_args={"timeout": busy_timeout})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised via engine use
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover - exercised via engine use
            # take the write lock up front: no lock upgrades, so no instant SQLITE_BUSY
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(u, pool_pre_ping=True)


def create_tables(metadata: sa.MetaData, engine: Any, attempts: int = 5) -> None:
    """``metadata.create_all(engine)``, retried: several masters (or processes) sharing one
    database create the same tables at the same moment, and the loser's DDL fails."""
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


class Ledger:
    """The durable record of test-set uses. Thread-safe; safe across processes."""

    def __init__(self, url: str | os.PathLike[str] | None = None, *, busy_timeout: float = 60.0) -> None:
        self.url = normalize_url(url)
        self.engine = _make_engine(self.url, busy_timeout)
        self._create_schema()

    # -- lifecycle -------------------------------------------------------
    def _create_schema(self) -> None:
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                self._migrate()
                self._ensure_instance()
                self._file_identity = self._sqlite_identity()
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                # another process created (or migrated) the same tables at the same moment
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def _migrate(self) -> None:
        """Bring a ledger made by an older version to schema 2; existing rows stay as they are.

        New columns are added (NULL: the promise is adopted at the entry's next use), the claim
        index is created, and on PostgreSQL the int4 count columns become bigint (SQLite's
        INTEGER is 64-bit already).
        """
        pg = self.engine.dialect.name == "postgresql"
        with self.engine.begin() as conn:
            for table, column, ddl in _ADDED_COLUMNS:
                have = {c["name"] for c in sa.inspect(conn).get_columns(table)}
                if column not in have:
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN "
                                         f"{'IF NOT EXISTS ' if pg else ''}{column} {ddl}")
            if pg:
                for table, column in _WIDENED_COLUMNS:
                    col = {c["name"]: c for c in sa.inspect(conn).get_columns(table)}[column]
                    if not isinstance(col["type"], sa.BigInteger):
                        conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT")
            claim_index.create(conn, checkfirst=True)

    def _ensure_instance(self) -> None:
        with self.engine.begin() as conn:
            have = conn.execute(sa.select(ledger_meta.c.value).where(ledger_meta.c.key == "instance_id")).first()
            if have is None:
                conn.execute(sa.insert(ledger_meta).values(key="instance_id", value=uuid.uuid4().hex))
                conn.execute(sa.insert(ledger_meta).values(key="created_at", value=_now().isoformat()))
            version = conn.execute(sa.select(ledger_meta.c.value).where(
                ledger_meta.c.key == "schema_version")).first()
            if version is None:
                conn.execute(sa.insert(ledger_meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(version[0]) < SCHEMA_VERSION:
                conn.execute(sa.update(ledger_meta).where(ledger_meta.c.key == "schema_version")
                             .values(value=str(SCHEMA_VERSION)))

    def _sqlite_path(self) -> Path | None:
        u = sa.engine.make_url(self.url)
        if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" \
                or u.database.startswith("file:"):
            return None
        return Path(u.database).expanduser()

    def _sqlite_identity(self) -> tuple[int, int] | None:
        path = self._sqlite_path()
        if path is None:
            return None
        st = path.stat()
        return (st.st_dev, st.st_ino)

    def check_file(self) -> None:
        """Raise LedgerError when (SQLite) the file this ledger opened was deleted or replaced:
        its pooled connections would write to a file nobody reads again."""
        if self._file_identity is None:
            return
        try:
            now = self._sqlite_identity()
        except OSError:
            now = None
        if now != self._file_identity:
            raise LedgerError(f"the ledger file {self._sqlite_path()} was deleted or replaced "
                              "while the master was running")

    def instance_id(self) -> str:
        """This ledger's identity, read from the database now (not cached).

        Raises LedgerError when the database has no identity, or (SQLite) when the file this
        ledger opened was deleted or replaced since: its open connections would keep writing
        to a file nobody will read again.
        """
        self.check_file()
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(ledger_meta.c.value).where(
                    ledger_meta.c.key == "instance_id")).first()
                conn.rollback()
        except (OperationalError, ProgrammingError) as exc:
            raise LedgerError(f"the ledger database has no instance record ({type(exc).__name__})") from None
        if row is None:
            raise LedgerError("the ledger database has no instance record")
        return row[0]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({sa.engine.make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- entries -----------------------------------------------------------
    def _get_or_create_entry(self, repo: str, dataset_id: str, budget: int, adaptivity: str,
                             promise: Mapping[str, str | None], samples_needed: int | None) -> sa.Row:
        sel = sa.select(testsets).where(testsets.c.repo == repo, testsets.c.dataset_id == dataset_id)
        with self.engine.connect() as conn:
            row = conn.execute(sel).first()
            conn.rollback()
        if row is not None:
            return row
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(testsets).values(
                    repo=repo, dataset_id=dataset_id, budget=budget, adaptivity=adaptivity, uses=0,
                    retired=False, samples_needed=samples_needed, created_at=_now(), **promise,
                ))
        except IntegrityError:
            pass  # created concurrently by another build: use that one
        with self.engine.connect() as conn:
            row = conn.execute(sel).first()
            conn.rollback()
        if row is None:  # pragma: no cover - would mean the insert silently vanished
            raise LedgerError(f"could not create the ledger entry for {repo} {dataset_id[:12]}")
        return row

    def _bind_promise(self, entry: sa.Row, steps: int, mode: str, promise: Mapping[str, str | None]) -> None:
        """Refuse a promise other than the one the test set was first used with; an entry
        without a field (made before it was recorded) adopts the given value."""
        was = {"steps": entry.budget, "adaptivity": entry.adaptivity}
        now = {"steps": steps, "adaptivity": mode}
        adopt = {}
        for name, value in promise.items():
            recorded = getattr(entry, name)
            if name == "condition":
                recorded = normalize_condition(recorded)
            if value is None:
                continue
            if recorded is None:
                adopt[name] = value
            else:
                was[name], now[name] = recorded, value
        changed = [k for k in now if was[k] != now[k]]
        if changed:
            shown = ["steps", "adaptivity"] + [k for k in changed if k not in ("steps", "adaptivity")]

            def show(d: Mapping[str, Any]) -> str:
                return ", ".join(f"{k}={d[k]}" for k in shown)
            raise PolicyMismatch(
                f"test set {entry.dataset_id[:12]} of {entry.repo} was first used with {show(was)}; "
                f"the configuration now says {show(now)}. The guarantee holds only for the original "
                "values: commit a new test set to change them"
            )
        if adopt:
            t = testsets
            with self.engine.begin() as conn:
                for name, value in adopt.items():
                    conn.execute(sa.update(t).where(t.c.id == entry.id, t.c[name].is_(None))
                                 .values({name: value}))

    def reserve(self, repo: str, dataset_id: str, steps: int, adaptivity: str, commit: str | None = None,
                build: str | None = None, condition: str | None = None,
                samples_needed: int | None = None, *, base: str | None = None,
                reliability: Any = None, mode: str | None = None,
                method: str | None = None) -> Reservation:
        """Spend one use of the test set, before the model's result is computed.

        With both ``commit`` (the head) and ``base``, reserving is idempotent: while a use for
        the same (test set, head, base) is reserved or committed, that use is returned with
        ``fresh=False`` and nothing is spent (a duplicate delivery of the same pull request).

        Raises TestSetRetired / TestSetExhausted when no use is left, and PolicyMismatch when
        the test set was first used under a different promise (steps, adaptivity, condition,
        reliability, mode, method: the guarantee was computed for those; rotate the test set
        to change them).
        """
        adapt = policy.normalize_adaptivity(adaptivity)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise LedgerError(f"steps (the budget H) must be a positive integer, got {steps!r}")
        if not repo or not dataset_id:
            raise LedgerError("repo and dataset_id are required")
        promise = {"condition": normalize_condition(condition),
                   "reliability": normalize_reliability(reliability),
                   "mode": _normalize_word(mode), "method": _normalize_word(method)}
        claim = f"{commit}:{base}" if commit and base else None
        entry = self._get_or_create_entry(repo, dataset_id, steps, adapt, promise, samples_needed)
        if claim is not None:
            held = self._claimed(entry.id, claim)
            if held is not None:
                return held
        if entry.retired:
            raise _retired(repo, dataset_id, entry.retired_reason)
        self._bind_promise(entry, steps, adapt, promise)
        t = testsets
        try:
            with self.engine.begin() as conn:
                got = conn.execute(
                    sa.update(t)
                    .where(t.c.id == entry.id, t.c.uses < t.c.budget, t.c.retired == sa.false())
                    .values(uses=t.c.uses + 1)
                    .returning(t.c.uses, t.c.budget)
                ).first()
                if got is None:
                    # (PostgreSQL) a twin may have taken the last use while we waited for the row
                    held = claim and self._claimed(entry.id, claim, conn)
                    if held:
                        return held
                    cur = conn.execute(sa.select(t).where(t.c.id == entry.id)).one()
                    if cur.retired:
                        raise _retired(repo, dataset_id, cur.retired_reason)
                    raise TestSetExhausted(
                        f"test set {dataset_id[:12]} of {repo} has no uses left "
                        f"({cur.uses} of {cur.budget} spent); commit a new test set"
                    )
                use_number, budget = got
                use_id = conn.execute(sa.insert(uses_table).values(
                    testset_id=entry.id, use_number=use_number, state="reserved",
                    commit_sha=commit, base_sha=base, claim=claim,
                    build=None if build is None else str(build), condition=promise["condition"],
                    reserved_at=_now(), notified=[],
                ).returning(uses_table.c.id)).scalar_one()
                made = self._reservations(conn, entry.id)
        except IntegrityError:
            # a twin reserved the same (head, base) first: its transaction won, ours (and our
            # uses + 1) rolled back; report the twin's use
            held = claim and self._claimed(entry.id, claim)
            if not held:
                raise
            return held
        return Reservation(use_id=use_id, use_number=use_number, remaining=budget - use_number,
                           budget=budget, adaptivity=adapt, repo=repo, dataset_id=dataset_id,
                           reservations=made)

    @staticmethod
    def _reservations(conn: sa.Connection, testset_id: int) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(uses_table)
                            .where(uses_table.c.testset_id == testset_id)).scalar_one()

    def _claimed(self, testset_id: int, claim: str, conn: sa.Connection | None = None) -> Reservation | None:
        """The use holding ``claim`` (reserved or committed), as a not-fresh Reservation."""
        def query(c: sa.Connection) -> Reservation | None:
            r = c.execute(sa.select(uses_table, testsets.c.budget, testsets.c.uses.label("spent"),
                                    testsets.c.adaptivity, testsets.c.repo, testsets.c.dataset_id)
                          .join(testsets, testsets.c.id == uses_table.c.testset_id)
                          .where(uses_table.c.testset_id == testset_id, uses_table.c.claim == claim)).first()
            if r is None:
                return None
            return Reservation(use_id=r.id, use_number=r.use_number, remaining=max(r.budget - r.spent, 0),
                               budget=r.budget, adaptivity=r.adaptivity, repo=r.repo,
                               dataset_id=r.dataset_id, fresh=False, state=r.state,
                               reservations=self._reservations(c, testset_id))
        if conn is not None:
            return query(conn)
        with self.engine.connect() as c:
            out = query(c)
            c.rollback()
            return out

    def commit(self, use_id: int, verdict: str, result: Mapping[str, Any] | None = None,
               notified: Iterable[str] = ()) -> LedgerEntry:
        """Record the outcome of a reserved use (before it is reported); retire per policy.

        ``verdict`` is ``pass``/``fail``, or None for a use that is spent without a verdict: the
        model saw the test set's features and then crashed, timed out or predicted garbage
        (``result`` says what happened). It counts like any other use.
        Committing the same use again with the same verdict is a no-op (safe to retry).
        Returns the entry's state; ``state.retired_by_use == use_id`` when this use retired it.
        """
        if verdict is not None and verdict not in policy.VERDICTS:
            raise LedgerError(f"verdict must be 'pass', 'fail' or None (spent, no verdict), got {verdict!r}")
        result_json = None if result is None else _jsonable(result)
        notified_list = sorted({str(a) for a in notified})
        u, t = uses_table, testsets
        with self.engine.begin() as conn:
            use = self._use_row(conn, use_id)
            if use.state not in _OPEN_STATES:
                if use.state == "committed" and use.verdict == verdict:
                    return self._entry(conn, use.testset_id)
                raise LedgerError(f"use {use_id} is already {use.state}; it cannot be committed again")
            now = _now()
            done = conn.execute(
                sa.update(u).where(u.c.id == use_id, u.c.state.in_(_OPEN_STATES)).values(
                    state="committed", verdict=verdict, result=result_json,
                    notified=notified_list, finished_at=now)
            ).rowcount
            if done != 1:  # pragma: no cover - concurrent commit of the same use
                raise LedgerError(f"use {use_id} was finished concurrently")
            entry = conn.execute(sa.select(t).where(t.c.id == use.testset_id)).one()
            passes = conn.execute(sa.select(sa.func.count()).select_from(u).where(
                u.c.testset_id == use.testset_id, u.c.state == "committed", u.c.verdict == "pass")).scalar_one()
            reason = policy.retirement(entry.adaptivity, verdict, entry.uses, entry.budget, passes=passes)
            if reason and not entry.retired:
                conn.execute(
                    sa.update(t).where(t.c.id == entry.id, t.c.retired == sa.false()).values(
                        retired=True, retired_reason=reason, retired_at=now, retired_by_use=use_id)
                )
            return self._entry(conn, entry.id)

    def release(self, use_id: int, reason: str) -> LedgerEntry:
        """Give a reserved use back: only when the model produced nothing that was scored."""
        if not reason:
            raise LedgerError("release needs a reason (why nothing was scored)")
        u, t = uses_table, testsets
        with self.engine.begin() as conn:
            use = self._use_row(conn, use_id)
            if use.state in ("released", "awaiting_labels"):
                # awaiting_labels: its models saw the features in an earlier build; a later
                # attempt that scored nothing leaves it spent and waiting
                return self._entry(conn, use.testset_id)
            if use.state != "reserved":
                raise LedgerError(f"use {use_id} is {use.state}: a scored use is never given back")
            done = conn.execute(
                sa.update(u).where(u.c.id == use_id, u.c.state == "reserved").values(
                    state="released", release_reason=reason, finished_at=_now(), claim=None)
            ).rowcount
            if done == 1:
                conn.execute(sa.update(t).where(t.c.id == use.testset_id).values(uses=t.c.uses - 1))
            return self._entry(conn, use.testset_id)

    def await_labels(self, use_id: int, result: Mapping[str, Any]) -> LedgerEntry:
        """Labels on demand: the use's models ran, but rows where they disagree have no label.

        The use becomes ``awaiting_labels``: spent (it stays in ``uses``), never released, its
        claim (head, base) kept; ``result`` (the owner-only record, with the ids of the rows
        that need labels) replaces the previous one. The build that re-evaluates the same
        (head, base) after the owners committed the labels gets this use back from
        :meth:`reserve` and closes it with :meth:`commit`. Idempotent.
        """
        u = uses_table
        result_json = _jsonable(result)
        with self.engine.begin() as conn:
            use = self._use_row(conn, use_id)
            if use.state not in _OPEN_STATES:
                raise LedgerError(f"use {use_id} is already {use.state}; it cannot wait for labels")
            done = conn.execute(sa.update(u).where(u.c.id == use_id, u.c.state.in_(_OPEN_STATES))
                                .values(state="awaiting_labels", result=result_json)).rowcount
            if done != 1:  # pragma: no cover - concurrent commit of the same use
                raise LedgerError(f"use {use_id} was finished concurrently")
            return self._entry(conn, use.testset_id)

    def awaiting(self, repo: str | None = None) -> list[UseRecord]:
        """Uses waiting for the owners' labels (optionally of one repository), oldest first."""
        sel = self._use_select().where(uses_table.c.state == "awaiting_labels").order_by(uses_table.c.id)
        if repo is not None:
            sel = sel.where(testsets.c.repo == repo)
        with self.engine.connect() as conn:
            return [self._use_from_row(r) for r in conn.execute(sel).all()]

    def add_notified(self, use_id: int, addresses: Iterable[str], *,
                     conn: sa.Connection | None = None) -> UseRecord | None:
        """Record more recipients of a use's result (after the email went out).

        With ``conn`` (a transaction on this ledger's engine, e.g. the mail outbox marking the
        mail sent) the update joins that transaction and nothing is returned.
        """
        u = uses_table

        def merge(c: sa.Connection) -> None:
            use = self._use_row(c, use_id)
            merged = sorted(set(use.notified or []) | {str(a) for a in addresses})
            c.execute(sa.update(u).where(u.c.id == use_id).values(notified=merged))

        if conn is not None:
            merge(conn)
            return None
        with self.engine.begin() as c:
            merge(c)
        return self.use(use_id)

    # -- queries -----------------------------------------------------------
    @staticmethod
    def _use_row(conn: sa.Connection, use_id: int) -> sa.Row:
        use = conn.execute(sa.select(uses_table).where(uses_table.c.id == use_id)).first()
        if use is None:
            raise LedgerError(f"no use with id {use_id} in the ledger")
        return use

    def _entry(self, conn: sa.Connection, testset_id: int) -> LedgerEntry:
        row = conn.execute(sa.select(testsets).where(testsets.c.id == testset_id)).one()
        return self._entry_from_row(conn, row)

    def _entry_from_row(self, conn: sa.Connection, row: sa.Row) -> LedgerEntry:
        counts = dict(conn.execute(
            sa.select(uses_table.c.state, sa.func.count())
            .where(uses_table.c.testset_id == row.id).group_by(uses_table.c.state)
        ).all())
        exhausted = row.uses >= row.budget
        retired = bool(row.retired) or exhausted
        reason = row.retired_reason if row.retired else (
            f"budget of {row.budget} uses spent" if exhausted else None)
        return LedgerEntry(
            id=row.id, repo=row.repo, dataset_id=row.dataset_id, budget=row.budget,
            adaptivity=row.adaptivity, uses=row.uses, remaining=max(row.budget - row.uses, 0),
            retired=retired, retired_reason=reason, retired_at=_utc(row.retired_at),
            retired_by_use=row.retired_by_use, pending=counts.get("reserved", 0),
            committed=counts.get("committed", 0), condition=row.condition,
            samples_needed=row.samples_needed, created_at=_utc(row.created_at),
            reliability=row.reliability, mode=row.mode, method=row.method,
            reservations=sum(counts.values()), awaiting_labels=counts.get("awaiting_labels", 0),
        )

    def state(self, repo: str, dataset_id: str) -> LedgerEntry | None:
        """The entry for (repo, dataset id); None if the test set was never used."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(testsets).where(
                testsets.c.repo == repo, testsets.c.dataset_id == dataset_id)).first()
            return None if row is None else self._entry_from_row(conn, row)

    def entries(self, repo: str | None = None) -> list[LedgerEntry]:
        """All entries (optionally of one repository), oldest first."""
        sel = sa.select(testsets).order_by(testsets.c.repo, testsets.c.created_at, testsets.c.id)
        if repo is not None:
            sel = sel.where(testsets.c.repo == repo)
        with self.engine.connect() as conn:
            return [self._entry_from_row(conn, r) for r in conn.execute(sel).all()]

    def _use_select(self) -> sa.Select:
        return sa.select(uses_table, testsets.c.repo, testsets.c.dataset_id, testsets.c.adaptivity).join(
            testsets, testsets.c.id == uses_table.c.testset_id)

    @staticmethod
    def _use_from_row(r: sa.Row) -> UseRecord:
        return UseRecord(
            id=r.id, repo=r.repo, dataset_id=r.dataset_id, adaptivity=r.adaptivity,
            use_number=r.use_number, state=r.state, commit=r.commit_sha, build=r.build,
            condition=r.condition, reserved_at=_utc(r.reserved_at), finished_at=_utc(r.finished_at),
            verdict=r.verdict, result=r.result, notified=tuple(r.notified or ()),
            release_reason=r.release_reason, base=r.base_sha,
        )

    def use(self, use_id: int) -> UseRecord:
        """One use by id (the ``easeml_use_id`` build property)."""
        with self.engine.connect() as conn:
            r = conn.execute(self._use_select().where(uses_table.c.id == int(use_id))).first()
        if r is None:
            raise LedgerError(f"no use with id {use_id} in the ledger")
        return self._use_from_row(r)

    def uses(self, repo: str, dataset_id: str, *, include_released: bool = True) -> list[UseRecord]:
        """Every use of a test set, in reservation order (for history charts)."""
        sel = self._use_select().where(testsets.c.repo == repo, testsets.c.dataset_id == dataset_id)
        if not include_released:
            sel = sel.where(uses_table.c.state != "released")
        with self.engine.connect() as conn:
            rows = conn.execute(sel.order_by(uses_table.c.id)).all()
        return [self._use_from_row(r) for r in rows]

    def history(self, repo: str) -> list[UseRecord]:
        """Every use of every test set of a repository (rotations included), oldest first."""
        sel = self._use_select().where(testsets.c.repo == repo).order_by(uses_table.c.id)
        with self.engine.connect() as conn:
            return [self._use_from_row(r) for r in conn.execute(sel).all()]


def _jsonable(value: Mapping[str, Any]) -> dict[str, Any]:
    """Round-trip through json so numpy scalars and tuples are stored as plain JSON."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"result field of type {type(o).__name__} is not JSON")

    try:
        return json.loads(json.dumps(dict(value), default=default))
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"result is not JSON-serialisable: {exc}") from None


def _render_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, a dashed rule under the first (header) row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(entries: Sequence[LedgerEntry]) -> str:
    """The ``easeml ledger show`` table."""
    head = ("repo", "dataset", "adaptivity", "uses", "remaining", "pending", "retired")
    rows = [head] + [(
        e.repo, e.short_id, e.adaptivity, f"{e.uses}/{e.budget}", str(e.remaining), str(e.pending),
        ("yes: " + (e.retired_reason or "")) if e.retired else "no",
    ) for e in entries]
    return _render_table(rows)


def format_uses(uses: Sequence[UseRecord]) -> str:
    """The ``easeml ledger show --dataset`` table: one line per use (operators only)."""
    head = ("use", "id", "state", "commit", "verdict", "reserved (UTC)", "notified / reason")
    rows = [head] + [(
        str(u.use_number), str(u.id), u.state, (u.commit or "")[:12], u.verdict or "",
        u.reserved_at.strftime("%Y-%m-%d %H:%M:%S") if u.reserved_at else "",
        u.release_reason if u.state == "released" else ", ".join(u.notified),
    ) for u in uses]
    return _render_table(rows)
