"""Buildbot's database after a PostgreSQL restart (issue 14, found by the fault e2e).

Buildbot 4.3 keeps pooled connections and, on PostgreSQL, does not retry a disconnect
(``Strategy.should_retry`` knows only MySQL's "Lost connection" and SQLite's lock): after a
restart of the server every stale pooled connection failed its next query with
``AdminShutdown``, so the first webhook a master received afterwards was answered 500 (GitHub
does not redeliver it by itself). ``configure`` gives the engine ``pool_pre_ping`` through
Buildbot's own ``c['db']['engine_kwargs']``: a stale connection is replaced at checkout.

Real parts: the database configuration ``configure`` produces, Buildbot's engine strategy
and ``DBThreadPool`` (the pool every Buildbot DB call goes through), a real PostgreSQL
restarted under it.
"""

from __future__ import annotations

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
