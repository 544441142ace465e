"""What the webhook has seen, in the ledger's database: shared by all masters, kept across restarts.

GitHub delivers an event at least once: it redelivers on a timeout or a 5xx, operators
redeliver by hand, and with several masters behind one URL any master may receive any copy.
A memory per process forgets everything on a restart and sees only its own copies, so the
webhook (``master.hook``) claims keys here instead:

* ``("delivery", X-GitHub-Delivery)``: a delivery is handled once;
* ``("head", repo, head sha, base branch)``: ``pull_request.synchronize`` and
  ``check_suite.requested`` announce the same push; it is built once per base branch.

``claim`` is an ``INSERT`` that the primary key makes succeed for exactly one caller, whatever
number of masters race; ``forget`` deletes a claim whose handling failed, so GitHub's
redelivery is handled. Rows older than ``retention`` (default 30 days; GitHub offers
redelivery for 3) are deleted by ``claim`` at most once an hour, which bounds the table.
Keys are stored as SHA-256 digests (a branch name may be 255 bytes), with a readable label.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

DEFAULT_RETENTION = 30 * 24 * 3600.0

metadata = sa.MetaData()

deliveries_table = sa.Table(
    "easeml_deliveries", metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(600), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_easeml_deliveries_created", "created_at"),
)


def _digest(key: Hashable) -> tuple[str, str]:
    label = json.dumps(list(key) if isinstance(key, tuple) else key, default=str)
    return hashlib.sha256(label.encode()).hexdigest(), label[:600]


class DeliveryStore:
    """The ``easeml_deliveries`` table on an engine (the ledger's). Blocking; thread-safe."""

    def __init__(self, engine: Any, *, retention: float = DEFAULT_RETENTION,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.retention = float(retention)
        self.clock = clock
        self._purged_at = float("-inf")
        self._lock = threading.Lock()
        from easeml_buildbot.custody.ledger import create_tables

        create_tables(metadata, engine)

    def claim(self, kind: str, key: Hashable) -> bool:
        """True for the first claim of ``(kind, key)`` (on any master); False afterwards."""
        self._maybe_purge()
        digest, label = _digest(key)
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(deliveries_table).values(kind=kind, digest=digest, label=label,
                                                               created_at=self.clock()))
            return True
        except IntegrityError:
            return False

    def forget(self, kind: str, key: Hashable) -> None:
        """Drop a claim (its handling failed: a redelivery must be handled)."""
        digest, _ = _digest(key)
        t = deliveries_table
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.kind == kind, t.c.digest == digest))

    def seen(self, kind: str, key: Hashable) -> bool:
        digest, _ = _digest(key)
        t = deliveries_table
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(t.c.digest).where(t.c.kind == kind, t.c.digest == digest)).first()
            conn.rollback()
        return found is not None

    def purge(self) -> int:
        """Delete claims older than the retention; returns how many."""
        t = deliveries_table
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(t).where(t.c.created_at < self.clock() - self.retention)).rowcount

    def _maybe_purge(self) -> None:
        with self._lock:
            now = self.clock()
            if now - self._purged_at < 3600:
                return
            self._purged_at = now
        self.purge()
