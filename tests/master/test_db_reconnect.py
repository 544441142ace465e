"""Buildbot's database: after a PostgreSQL restart, and its SQLite connections (issue 14).

Buildbot 4.3 keeps pooled connections and, on PostgreSQL, does not retry a disconnect
(``Strategy.should_retry`` knows only MySQL's "Lost connection" and SQLite's lock): after a
restart of the server every stale pooled connection failed its next query with
``AdminShutdown``, so the first webhook a master received afterwards was answered 500 (GitHub
does not redeliver it by itself). ``configure`` gives the engine ``pool_pre_ping`` through
Buildbot's own ``c['db']['engine_kwargs']``: a stale connection is replaced at checkout.

Real parts: the database configuration ``configure`` produces, Buildbot's engine strategy
and ``DBThreadPool`` (the pool every Buildbot DB call goes through), a real PostgreSQL
restarted under it.

SQLite (the embedded default): Buildbot 4.3 gives a file database ``NullPool``, so every query
opened and closed a connection, and closing the last one checkpoints the WAL (an fsync). That
was half the master's CPU per build (benchmarks/bench_master.py). ``configure`` keeps the
connection open (a ``QueuePool``, SQLAlchemy 2's own default for a SQLite file).
"""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa
from twisted.internet.threads import blockingCallFromThread

from support.postgres import find_pg_bin, start_postgres
from support.smtp import reactor_thread


def _buildbot_db_config(tmp_path, db_url):
    from easeml_buildbot.master import configure
    from easeml_buildbot.master.settings import Settings

    s = Settings.from_dict({"forge": "local", "local": {"repo": str(tmp_path / "repo")}, "db_url": db_url,
                            "ledger_url": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
                            "results_dir": str(tmp_path / "results")})
    c: dict = {}
    configure(c, s)
    return c["db"]


def test_buildbot_db_pool_survives_a_postgres_restart(tmp_path):
    pytest.importorskip("psycopg")
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (scripts/setup.sh installs Debian's 'postgresql')")
    from buildbot.db import enginestrategy, pool

    pg = start_postgres()
    reactor = reactor_thread()
    try:
        db = _buildbot_db_config(tmp_path, pg.create_database())
        engine = enginestrategy.create_engine(db["db_url"], basedir=str(tmp_path), **db.get("engine_kwargs", {}))
        dbpool = pool.DBThreadPool(engine, reactor=reactor)
        dbpool.start()
        try:
            def query(conn):
                return conn.execute(sa.text("SELECT 1")).scalar()

            # several pooled connections, as a busy master holds
            for _ in range(4):
                assert blockingCallFromThread(reactor, dbpool.do, query) == 1
            pg.restart(down=1)
            for _ in range(4):  # every stale connection is replaced, none fails a query
                assert blockingCallFromThread(reactor, dbpool.do, query) == 1
        finally:
            blockingCallFromThread(reactor, dbpool.stop)
    finally:
        pg.stop()


def test_buildbot_sqlite_db_keeps_one_connection_and_every_commit(tmp_path):
    from buildbot.db import enginestrategy, pool

    reactor = reactor_thread()
    path = tmp_path / "state.sqlite"
    db = _buildbot_db_config(tmp_path, f"sqlite:///{path}")
    engine = enginestrategy.create_engine(db["db_url"], basedir=str(tmp_path), **db.get("engine_kwargs", {}))
    opened = []
    sa.event.listen(engine.pool, "connect", lambda conn, rec: opened.append(conn))
    dbpool = pool.DBThreadPool(engine, reactor=reactor)
    dbpool.start()
    try:
        def create(conn):
            conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))

        def insert(conn, x):
            conn.execute(sa.text("INSERT INTO t VALUES (:x)"), {"x": x})

        def count(conn):
            return conn.execute(sa.text("SELECT count(*) FROM t")).scalar()

        blockingCallFromThread(reactor, dbpool.do_with_transaction, create)
        for i in range(50):
            blockingCallFromThread(reactor, dbpool.do_with_transaction, insert, i)
            # every commit is visible at once to another process's connection (WAL)
            other = sqlite3.connect(path)
            try:
                assert other.execute("SELECT count(*) FROM t").fetchone()[0] == i + 1
            finally:
                other.close()
            assert blockingCallFromThread(reactor, dbpool.do, count) == i + 1
        # the connection Buildbot opened to set WAL mode serves them all; NullPool (Buildbot's
        # default) opened one per call: 101 here
        assert len(opened) == 0, f"{len(opened)} connections opened for 101 queries"
        assert engine.dialect.name == "sqlite"
    finally:
        blockingCallFromThread(reactor, dbpool.stop)
    # nothing lost once the master stops
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 50
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
