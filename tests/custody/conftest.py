"""Fixtures for custody tests: real gpg keys, real SQLite and PostgreSQL ledgers, leak scans."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.gpgkeys import service_keys, service_keys_with_passphrase  # noqa: F401 (fixtures)
from support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

from custody_helpers import TempTracker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same ledger tests run on SQLite (file) and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def led(ledger_url: str):
    """An open ledger on ``ledger_url`` (SQLite and PostgreSQL), closed after the test."""
    from easeml_buildbot.custody.ledger import Ledger

    with Ledger(ledger_url) as ledger:
        yield ledger


@pytest.fixture
def temp_tracker(monkeypatch: pytest.MonkeyPatch) -> TempTracker:
    tracker = TempTracker()
    from easeml_buildbot.custody import gpghome

    monkeypatch.setattr(gpghome.tempfile, "mkdtemp", tracker.mkdtemp)
    return tracker


