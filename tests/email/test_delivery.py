"""Mails delivered through the real notifier to a real SMTP server (aiosmtpd), then parsed.

The verdicts come from the real estimator on a synthetic test set, are stored in a real
SQLite ledger, and the mails are planned from that ledger exactly as in a master build.
"""

from __future__ import annotations

import html as htmllib
import io
import time

import numpy as np
import pytest
from PIL import Image

from easeml_buildbot.custody.ledger import Ledger
from easeml_buildbot.estimator.decision import decide
from easeml_buildbot.master import mail as em
from support.gpgkeys import service_keys  # noqa: F401  (fixture)
from support.smtp import SmtpServer

from mail_helpers import assert_no_key_material, decoded_text, mime_parts

CONDITION = "n - o > 0.02 +/- 0.05"
REPO = "acme/churn-model"
DATASET = "5f" * 32


@pytest.fixture(scope="module")
def test_set():
    """Labels that are unmistakable tokens, so a scan of the mail can find any that leaked."""
    rng = np.random.default_rng(7)
    labels = np.array([f"lbl{int(x)}" for x in rng.integers(10**6, 10**7, size=3000)])
    new = labels.copy()
    new[:150] = "wrong"
    old = labels.copy()
    old[:450] = "wrong"
    return labels, new, old


@pytest.fixture
def ledger_with_uses(tmp_path, test_set):
    """A real ledger with 3 committed uses of a 4-use budget (adaptivity full)."""
    labels, new, old = test_set
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    led = Ledger(url)
    use_ids = []
    for i in range(3):
        r = led.reserve(repo=REPO, dataset_id=DATASET, steps=4, adaptivity="full",
                        commit=f"{i:040x}", build=f"http://bb/builds/{i}", condition=CONDITION)
        shift = 30 * i
        v = decide(CONDITION, labels, np.roll(new, shift), old, reliability=0.99,
                   adaptivity="full", steps=4, mode="fp-free")
        led.commit(r.use_id, verdict=v.outcome,
                   result={"status": "scored", "scored": True, "verdict": v.to_dict(),
                           "samples_used": v.samples_used, "dataset_id": DATASET},
                   notified=["owner@example.com"])
        use_ids.append(r.use_id)
    led.close()
    return url, use_ids


def facts(**kw):
    base = dict(repo=REPO, sha="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", status="evaluated", results=0,
                pr_number=42, pr_url=f"https://github.com/{REPO}/pull/42",
                build_url="http://127.0.0.1:8010/#/builders/1/builds/7", dataset_id=DATASET,
                owners=("Owner <owner@example.com>", "lead@ml.example.com", "intruder@evil.test"),
                author="dev@example.com")
    base.update(kw)
    return em.BuildFacts(**base)


def notifier_for(server: SmtpServer, **kw):
    args = dict(fromaddr="easeml-ci@example.com", relayhost=server.host, smtpPort=server.port,
                sendToInterestedUsers=False, generators=[em.EasemlMailGenerator(em.MailPolicy())],
                attempts=3, backoff=0.05, timeout=5)
    args.update(kw)
    return em.EasemlMailNotifier(**args)


def test_owner_and_author_mails_parse_and_leak_nothing(
        ledger_with_uses, test_set, service_keys, smtp_server, start_notifier, deliver, twisted_log):
    url, use_ids = ledger_with_uses
    policy = em.MailPolicy(sender="easeml-ci@example.com", allowed_domains=("example.com",),
                           ledger_url=url, operator="ops@example.com")
    mails = em.plan_mails(facts(use_id=use_ids[-1]), policy)
    assert [m.kind for m in mails] == ["evaluation", "author"]

    notifier = start_notifier(notifier_for(smtp_server))
    for m in mails:
        assert deliver(notifier, m) is True
    received = smtp_server.wait_for(2)

    owner = next(r for r in received if "owner@example.com" in r.rcpt_tos)
    author = next(r for r in received if r.rcpt_tos == ["dev@example.com"])
    # recipients: base-branch owners in allowed domains (subdomain included), never the intruder
    assert sorted(owner.rcpt_tos) == ["lead@ml.example.com", "owner@example.com"]
    assert all("evil.test" not in rcpt for r in received for rcpt in r.rcpt_tos)
    assert owner.mail_from == "easeml-ci@example.com"

    msg = owner.message
    outcome = msg["Subject"].rsplit(": ", 1)[1]
    assert outcome in ("pass", "fail")
    assert msg["Subject"] == f"[easeml] {REPO} PR #42 9f86d08: {outcome}"
    assert msg.get_content_type() == "multipart/alternative"
    parts = mime_parts(msg)
    text = parts["text/plain"][0].get_content()
    html = parts["text/html"][0].get_content()
    # the verdict and its parameters, with the numbers from the ledger
    led = Ledger(url)
    v = led.uses(REPO, DATASET)[-1].result["verdict"]
    led.close()
    for body in (text, htmllib.unescape(html)):
        assert CONDITION in body and "fp-free" in body and "0.99" in body and "full" in body
        assert f"{v['estimates']['n']:.4f}" in body and f"{v['estimates']['o']:.4f}" in body
        lo, hi = v["intervals"]["n"]
        assert f"[{lo:.4f}, {hi:.4f}]" in body
        assert str(v["samples_used"]) in body
        assert "use 3 of 4, 1 left" in body
        assert "https://github.com/acme/churn-model/pull/42" in body
        assert "http://127.0.0.1:8010/#/builders/1/builds/7" in body
    # the chart: multipart/related next to the HTML, a real PNG, referenced by its Content-ID
    related = parts["multipart/related"][0]
    assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/png"]
    png_part = parts["image/png"][0]
    cid = png_part["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html
    png = png_part.get_content()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(png))
    img.verify()
    assert img.size[0] >= 400 and img.size[1] >= 200

    # the author sees only the outcome: no estimates, no intervals, no chart
    amsg = author.message
    assert amsg["Subject"] == msg["Subject"]
    assert "image/png" not in mime_parts(amsg)
    atext = decoded_text(amsg)
    assert outcome in atext.lower()
    assert f"{v['estimates']['n']:.4f}" not in atext and "interval" not in atext.lower()

    # no label data or key material in anything that was sent
    labels, _, _ = test_set
    for r in received:
        raw = r.data
        shown = decoded_text(r.message)
        assert not any(lbl in shown or lbl.encode() in raw for lbl in set(labels[:500]))
        assert "wrong" not in shown
        assert_no_key_material(raw, secrets=(service_keys.private.read_bytes(),
                                             service_keys.public.read_bytes()))
    assert any("sent evaluation mail" in line for line in twisted_log)


def test_exhaustion_mail_after_last_use(ledger_with_uses, test_set, smtp_server, start_notifier, deliver):
    url, _ = ledger_with_uses
    labels, new, old = test_set
    led = Ledger(url)
    r = led.reserve(repo=REPO, dataset_id=DATASET, steps=4, adaptivity="full", condition=CONDITION)
    v = decide(CONDITION, labels, new, old, reliability=0.99, adaptivity="full", steps=4, mode="fp-free")
    state = led.commit(r.use_id, verdict=v.outcome, result={"status": "scored", "verdict": v.to_dict(),
                                                            "samples_used": v.samples_used})
    led.close()
    assert state.remaining == 0
    policy = em.MailPolicy(allowed_domains=("example.com",), ledger_url=url)
    mails = em.plan_mails(facts(use_id=r.use_id, author=None), policy)
    assert [m.kind for m in mails] == ["evaluation", "exhaustion"]
    notifier = start_notifier(notifier_for(smtp_server))
    assert deliver(notifier, mails[1])
    msg = smtp_server.wait_for(1)[0].message
    assert msg["Subject"] == (f"[easeml] {REPO}: test set exhausted, a new one with "
                              f"{v.samples_needed} samples is needed")
    for body in (msg.get_body(("plain",)).get_content(),
                 htmllib.unescape(msg.get_body(("html",)).get_content())):
        assert f"{v.samples_needed} labelled samples" in body.replace("<b>", "").replace("</b>", "")
        assert "easeml dataset encrypt --key easeml_pub.asc test-2.csv data/test-2.csv.gpg" in body
        assert "git rm data/test.csv.gpg" in body and "Merge it on the default branch" in body
        assert "all 4 uses" in body
    assert sorted(smtp_server.messages[0].rcpt_tos) == ["lead@ml.example.com", "owner@example.com"]


def test_smtp_down_bounded_retries_logged_then_recovers(smtp_server, start_notifier, deliver, twisted_log):
    notifier = start_notifier(notifier_for(smtp_server, attempts=3, backoff=0.1))
    mail = em.OutgoingMail("note", ("owner@example.com",),
                           em.note_mail(facts(), "the model failed", "crash: exit code 1"))
    smtp_server.down()
    t0 = time.monotonic()
    assert deliver(notifier, mail) is False  # no exception escapes
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 10, elapsed  # waited 0.1 + 0.2 between the three attempts
    tries = [line for line in twisted_log if "retrying in" in line]
    assert len(tries) == 2 and "attempt 1/3" in tries[0] and "retrying in 0.1s" in tries[0]
    assert "retrying in 0.2s" in tries[1]
    assert any("giving up on note mail" in line and "after 3 attempts" in line for line in twisted_log)
    assert notifier.failed and notifier.failed[0][0] == "note"
    # the service is still usable once the relay is back
    smtp_server.up()
    assert deliver(notifier, mail) is True
    assert smtp_server.wait_for(1)[0].rcpt_tos == ["owner@example.com"]


def test_temporary_refusal_is_retried(smtp_server, reactor, start_notifier, deliver, twisted_log):
    notifier = start_notifier(notifier_for(smtp_server, attempts=4, backoff=0.3))
    smtp_server.refuse("451 4.3.0 mailbox busy, try later")
    reactor.callFromThread(reactor.callLater, 0.15, smtp_server.refuse, None)
    mail = em.OutgoingMail("note", ("owner@example.com",),
                           em.note_mail(facts(), "the model failed", "timeout after 600 s"))
    assert deliver(notifier, mail) is True
    assert smtp_server.attempts == 2 and len(smtp_server.messages) == 1
    assert any("451" in line and "attempt 1/4" in line for line in twisted_log)


def test_auth_over_starttls_password_never_logged(start_notifier, deliver, twisted_log):
    password = "s3cret-Pa55-" + "x" * 8
    with SmtpServer(user="ci", password=password, tls="starttls") as server:
        notifier = start_notifier(notifier_for(server, relayhost="localhost", useTls=True,
                                               smtpUser="ci", smtpPassword=password,
                                               ca_file=str(server.cert_path)))
        mail = em.OutgoingMail("note", ("owner@example.com",),
                               em.note_mail(facts(), "configuration error", ".easeml.yml:3: key 'steps'"))
        assert deliver(notifier, mail) is True
        got = server.wait_for(1)[0]
        assert got.authenticated_as == "ci"
        assert password.encode() not in got.data
        # a wrong password is an error that is logged without the password
        bad = start_notifier(notifier_for(server, relayhost="localhost", useTls=True, smtpUser="ci",
                                          smtpPassword="wrong-" + password, ca_file=str(server.cert_path),
                                          attempts=1))
        assert deliver(bad, mail) is False
    log = "\n".join(twisted_log)
    assert "giving up" in log
    assert password not in log
    from easeml_buildbot.master.settings import SmtpSettings

    assert password not in repr(SmtpSettings(password=password))


def test_relay_with_untrusted_certificate_is_refused(start_notifier, deliver, twisted_log):
    with SmtpServer(tls="ssl") as server:
        notifier = start_notifier(notifier_for(server, relayhost="localhost", useSmtps=True, attempts=1))
        mail = em.OutgoingMail("note", ("owner@example.com",), em.note_mail(facts(), "x", "y"))
        assert deliver(notifier, mail) is False  # self-signed and no ca_file: not trusted
        assert server.messages == []
        trusted = start_notifier(notifier_for(server, relayhost="localhost", useSmtps=True,
                                              ca_file=str(server.cert_path)))
        assert deliver(trusted, mail) is True
        assert len(server.wait_for(1)) == 1


def test_hung_relay_times_out_and_gives_up(start_notifier, deliver, twisted_log):
    """A relay that accepts the connection and never greets: each attempt ends at the timeout."""
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        server = SmtpServer(port=port)  # not started: only its host/port are used
        notifier = start_notifier(notifier_for(server, attempts=2, backoff=0.1, timeout=1))
        mail = em.OutgoingMail("note", ("owner@example.com",), em.note_mail(facts(), "x", "y"))
        t0 = time.monotonic()
        assert deliver(notifier, mail) is False
        elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 15, elapsed
    assert any("giving up on note mail" in line and "after 2 attempts" in line for line in twisted_log)
