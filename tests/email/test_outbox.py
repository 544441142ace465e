"""The mail outbox: an SMTP outage longer than any retry window, a master restart, expiry.

Real parts: the notifier built by ``make_email_reporters`` (as ``configure`` builds it), a
real ledger (SQLite; PostgreSQL for the race between two masters), a real aiosmtpd relay
that goes down and comes back. Production delays are minutes to days; here they are tenths
of a second (``backoff``, ``outbox_max_backoff``, ``outbox_expiry``), same code paths.
"""

from __future__ import annotations

import time

import pytest
from twisted.internet.threads import blockingCallFromThread

from easeml_buildbot.custody.ledger import Ledger
from easeml_buildbot.master import mail as em
from easeml_buildbot.master.settings import Settings
from support.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

REPO = "acme/churn-model"
DATASET = "7a" * 32
OWNERS = ["owner@example.com", "lead@example.com"]


def settings(server, ledger_url, **smtp):
    section = dict(host=server.host, port=server.port, from_addr="easeml-ci@example.com",
                   attempts=3, backoff=0.1, timeout=2, outbox_max_backoff=0.4, outbox_expiry=600)
    section.update(smtp)
    return Settings.from_dict({"forge": "local", "local": {"repo": "/r"}, "smtp": section,
                               "ledger_url": ledger_url, "allowed_email_domains": ["example.com"]})


def committed_use(url) -> int:
    """A use committed the way ``RecordResult`` commits it (``notified`` left to the mail)."""
    with Ledger(url) as led:
        r = led.reserve(repo=REPO, dataset_id=DATASET, steps=4, adaptivity="none",
                        commit="ab" * 20, build="http://bb/builds/7", condition="n > 0.8 +/- 0.05")
        led.commit(r.use_id, verdict="pass", result={"status": "scored", "scored": True})
        return r.use_id


def notified(url, use_id) -> tuple[str, ...]:
    with Ledger(url) as led:
        return led.use(use_id).notified


def report(use_id, buildid=7, n=1):
    facts = em.BuildFacts(repo=REPO, sha="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", status="evaluated",
                          results=0, pr_number=42, owners=tuple(OWNERS))
    mails = [em.OutgoingMail("evaluation", tuple(OWNERS),
                             em.note_mail(facts, f"verdict {i}", "owners only: n = 0.91"))
             for i in range(n)]
    return {"easeml_mails": mails, "builds": [{"buildid": buildid}], "easeml_use_id": use_id,
            "easeml_owners": OWNERS}


def notifier(start_notifier, s):
    (n,) = em.make_email_reporters(s)
    return start_notifier(n, s)


def send(reactor, n, rep):
    blockingCallFromThread(reactor, n.sendMessage, [rep])


def stop(reactor, n):
    blockingCallFromThread(reactor, n.stopService)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_outage_longer_than_retries_then_delivered_once_and_notified_on_delivery(
        tmp_path, smtp_server, reactor, start_notifier, twisted_log):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    use_id = committed_use(url)
    smtp_server.down()
    n = notifier(start_notifier, settings(smtp_server, url))
    try:
        send(reactor, n, report(use_id))
        send(reactor, n, report(use_id))  # the same build reported again (another master): one mail
        # far longer than the old window (3 attempts, 0.1 + 0.2 s): the mail must still be pending
        time.sleep(2.0)
        assert smtp_server.messages == []
        assert notified(url, use_id) == ()  # not delivered, so nobody is notified
        smtp_server.up()
        (msg,) = smtp_server.wait_for(1, timeout=10)
        assert any("kept in the outbox" in line for line in twisted_log)
        assert sorted(msg.rcpt_tos) == sorted(OWNERS)
        assert "owners only" in msg.message.get_body(("plain",)).get_content()
        assert wait_until(lambda: notified(url, use_id) == tuple(sorted(OWNERS)))
        time.sleep(1.0)  # several more drain ticks: nothing is sent twice
        assert len(smtp_server.messages) == 1
        (row,) = n.outbox.rows()
        assert row["state"] == "sent" and row["message"] == "" and row["attempts"] >= 4
    finally:
        stop(reactor, n)


def test_queued_mail_survives_a_master_restart(tmp_path, smtp_server, reactor, start_notifier):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    use_id = committed_use(url)
    smtp_server.down()
    first = notifier(start_notifier, settings(smtp_server, url))
    send(reactor, first, report(use_id, n=3))
    time.sleep(0.5)
    stop(reactor, first)  # the master goes away with three mails queued
    assert first.outbox.depth() == 3 and notified(url, use_id) == ()
    smtp_server.up()
    time.sleep(0.5)
    assert smtp_server.messages == []  # nobody drains while no master runs
    second = notifier(start_notifier, settings(smtp_server, url))  # the restarted master
    try:
        msgs = smtp_server.wait_for(3, timeout=10)
        assert sorted(m.message["Subject"] for m in msgs) == sorted(
            {m.message["Subject"] for m in msgs})  # three different mails, each once
        assert wait_until(lambda: second.outbox.depth() == 0)
        time.sleep(0.5)
        assert len(smtp_server.messages) == 3
        assert notified(url, use_id) == tuple(sorted(OWNERS))
    finally:
        stop(reactor, second)


def test_expired_mail_is_dropped_logged_and_not_notified(tmp_path, smtp_server, reactor, start_notifier,
                                                         twisted_log):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    use_id = committed_use(url)
    smtp_server.down()
    n = notifier(start_notifier, settings(smtp_server, url, outbox_expiry=0.8))
    try:
        send(reactor, n, report(use_id))
        assert wait_until(lambda: any("dropping expired evaluation mail" in line for line in twisted_log))
        (row,) = n.outbox.rows()
        assert row["state"] == "expired" and row["message"] == ""  # no owner-only body kept
        smtp_server.up()
        time.sleep(1.0)
        assert smtp_server.messages == []
        assert notified(url, use_id) == ()
    finally:
        stop(reactor, n)


def test_two_masters_on_one_postgres_send_each_mail_once(postgres_url, smtp_server, reactor, start_notifier):
    pytest.importorskip("psycopg")
    use_id = committed_use(postgres_url)
    smtp_server.down()
    a = notifier(start_notifier, settings(smtp_server, postgres_url, backoff=0.05, outbox_max_backoff=0.1))
    b = notifier(start_notifier, settings(smtp_server, postgres_url, backoff=0.05, outbox_max_backoff=0.1))
    try:
        send(reactor, a, report(use_id, buildid=1, n=10))
        send(reactor, b, report(use_id, buildid=1, n=10))  # both masters' reporters saw the build
        time.sleep(0.5)  # both drain loops race for every mail while the relay refuses
        smtp_server.up()
        smtp_server.wait_for(10, timeout=15)
        assert wait_until(lambda: a.outbox.depth() == 0)
        time.sleep(0.5)
        subjects = [m.message["Subject"] for m in smtp_server.messages]
        assert len(subjects) == 10 and len(set(subjects)) == 10, subjects
        assert notified(postgres_url, use_id) == tuple(sorted(OWNERS))
    finally:
        stop(reactor, a)
        stop(reactor, b)


def test_a_deleted_ledger_file_does_not_swallow_the_mail(tmp_path, smtp_server, reactor, start_notifier,
                                                         twisted_log):
    """The outbox lives in the ledger's database; when that file is deleted (the case the
    operator must hear about), a mail stored through the master's pooled connection would sit
    in a file nobody reads again. The outbox refuses it and the notifier sends it directly."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    use_id = committed_use(url)
    n = notifier(start_notifier, settings(smtp_server, url))
    try:
        for f in tmp_path.glob("ledger.sqlite*"):
            f.unlink()
        send(reactor, n, report(use_id))
        (msg,) = smtp_server.wait_for(1, timeout=10)
        assert sorted(msg.rcpt_tos) == sorted(OWNERS)
        assert any("the outbox cannot store evaluation mail" in line for line in twisted_log)
    finally:
        stop(reactor, n)


def test_relay_down_past_the_old_give_up_window_mail_delivered_after_it_returns(tmp_path, reactor):
    """The relay (aiosmtpd) is stopped for 16 s, longer than the old notifier's whole retry
    window (4 attempts, 2 + 4 + 8 s), with the production backoff (2 s, doubling); only the
    longest delay is shortened so the mail goes out soon after the return. The same code runs
    5 minutes with the production schedule in benchmarks/fault_smtp_outage.py."""
    from support.smtp_outage import run_outage

    f = run_outage(tmp_path, reactor, outage=16, mails=3, smtp={"outbox_max_backoff": 4, "timeout": 2})
    assert (f.mails, f.delivered, f.lost, f.duplicated) == (3, 3, 0, 0), f.lines()
    assert f.notified_early == 0 and f.notified == 3, f.lines()  # notified only from delivery on
    # the next attempt after the return: at most the longest delay (4 s) and a drain tick (2 s)
    # later, with slack for a loaded machine
    assert f.return_to_delivered <= 20, f.lines()
    assert all(a >= 3 for a in f.attempts) and set(f.states) == {"sent"}, f.lines()  # failed, retried, sent
