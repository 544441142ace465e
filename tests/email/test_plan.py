"""Who gets which mail for each kind of finished build (``plan_mails``), and what is in it."""

from __future__ import annotations

import html as htmllib

import pytest
from buildbot.process.results import CANCELLED, EXCEPTION, FAILURE, RETRY, SUCCESS

from easeml_buildbot.master import mail as em
from easeml_buildbot.master.rotation import rotation_text
from easeml_buildbot.master.settings import Settings

from mail_helpers import decoded_text, ledger_uses, mime_parts

OWNERS = ("owner@example.com", "Lead <lead@Sub.Example.com>", "mallory@evil.test")
POLICY = em.MailPolicy(sender="ci@example.com", operator="ops@example.com",
                       allowed_domains=("example.com",))


def facts(**kw) -> em.BuildFacts:
    base = dict(repo="acme/m", sha="abcdef0123456789", status="evaluated", results=SUCCESS, pr_number=7,
                pr_url="https://github.com/acme/m/pull/7", build_url="http://bb/#/builders/1/builds/3",
                dataset_id="ab" * 32, use_id=103, owners=OWNERS, author="dev@example.com",
                config={"condition": "n - o > 0.02 +/- 0.01", "reliability": 0.9999,
                        "adaptivity": "full", "steps": 8, "mode": "fp-free"})
    base.update(kw)
    return em.BuildFacts(**base)


def state(uses: int, budget: int = 8, retired: bool = False, reason=None):
    return {"budget": budget, "remaining": budget - uses, "retired": retired, "retired_reason": reason}


def kinds(mails):
    return [(m.kind, m.recipients) for m in mails]


@pytest.mark.parametrize("address, allowed, ok", [
    ("a@example.com", ("example.com",), True),
    ("A <a@ml.EXAMPLE.com>", ("example.com",), True),
    ("a@notexample.com", ("example.com",), False),
    ("a@example.com.evil.test", ("example.com",), False),
    ("a@example.com", (), False),
    ("a@anything.test", ("*",), True),
    ("not-an-address", ("*",), False),
    ("a@b@example.com", ("example.com",), False),
])
def test_allow_list(address, allowed, ok):
    assert em.address_allowed(address, allowed) is ok


def test_evaluated_full_owners_and_author():
    mails = em.plan_mails(facts(), POLICY, ledger=(ledger_uses(3), state(3)))
    assert kinds(mails) == [("evaluation", ("owner@example.com", "lead@Sub.Example.com")),
                            ("author", ("dev@example.com",))]


def test_adaptivity_none_author_gets_nothing():
    mails = em.plan_mails(facts(), POLICY, ledger=(ledger_uses(3, adaptivity="none"), state(3)))
    assert [m.kind for m in mails] == ["evaluation"]


def test_author_outside_allowed_domains_gets_nothing():
    mails = em.plan_mails(facts(author="dev@gmail.test"), POLICY, ledger=(ledger_uses(3), state(3)))
    assert [m.kind for m in mails] == ["evaluation"]


def test_author_disabled_by_operator():
    policy = em.MailPolicy(allowed_domains=("example.com",), notify_author=False)
    mails = em.plan_mails(facts(), policy, ledger=(ledger_uses(3), state(3)))
    assert [m.kind for m in mails] == ["evaluation"]


def test_no_recipients_outside_the_allow_list_even_from_the_config():
    policy = em.MailPolicy(allowed_domains=("other.org",), notify_author=True)
    assert em.plan_mails(facts(), policy, ledger=(ledger_uses(3), state(3))) == []


def test_recipients_recorded_in_the_ledger_are_used_when_the_build_has_none():
    mails = em.plan_mails(facts(owners=()), POLICY, ledger=(ledger_uses(3), state(3)))
    assert mails[0].recipients == ("owner@example.com",)


def test_firstchange_pass_retires_and_asks_for_a_new_test_set():
    uses = ledger_uses(2, adaptivity="firstChange")
    mails = em.plan_mails(facts(use_id=102), POLICY,
                          ledger=(uses, state(2, retired=True, reason="first pass under adaptivity firstChange")))
    assert [m.kind for m in mails] == ["evaluation", "author", "exhaustion"]
    ex = mails[2].message
    assert "test set retired" in ex["Subject"] and "5000 samples" in ex["Subject"]
    text = ex.get_body(("plain",)).get_content()
    assert "first pass" in text and "firstChange" in text
    # the one rotation text: a new test set at a new path, merged on the default branch
    assert rotation_text("data/test.csv.gpg", samples=5000, markdown=False) in text
    assert "easeml dataset encrypt --key easeml_pub.asc test-2.csv data/test-2.csv.gpg" in text
    # the evaluation mail says so too, with the same text
    owners = mails[0].message.get_body(("plain",)).get_content()
    assert "This test set is now retired" in owners
    assert rotation_text("data/test.csv.gpg", samples=5000, markdown=False) in owners


def test_exhausted_build_mails_owners_only_with_sample_size():
    f = facts(status="exhausted", results=SUCCESS, use_id=None,
              config={"condition": "n > 0.8 +/- 0.05", "reliability": 0.999, "adaptivity": "full",
                      "steps": 4, "dataset": "data/holdout.jsonl.gpg"})
    mails = em.plan_mails(f, POLICY)
    assert kinds(mails) == [("exhaustion", ("owner@example.com", "lead@Sub.Example.com"))]
    text = mails[0].message.get_body(("plain",)).get_content()
    from easeml_buildbot.estimator.condition import parse_condition
    from easeml_buildbot.estimator.samples import sample_size

    need = sample_size(parse_condition("n > 0.8 +/- 0.05"), reliability=0.999, adaptivity="full", steps=4).labels
    assert f"{need} labelled samples" in text
    assert "easeml dataset encrypt --key easeml_pub.asc holdout-2.jsonl data/holdout-2.jsonl.gpg" in text
    assert "git rm data/holdout.jsonl.gpg" in text and "git add data/holdout-2.jsonl.gpg .easeml.yml" in text
    assert "Merge it on the default branch" in text


@pytest.mark.parametrize("status, results", [("infra_error", FAILURE), (None, EXCEPTION), (None, RETRY)])
def test_operator_side_failure(status, results):
    f = facts(status=status, results=results, cause="the service key is missing on worker1", use_id=None,
              worker="worker1", builder="easeml")
    mails = em.plan_mails(f, POLICY)
    assert [m.kind for m in mails] == ["operator", "note"]
    op, note = mails
    assert op.recipients == ("ops@example.com",)
    assert "the service key is missing on worker1" in decoded_text(op.message)
    assert "worker1" in decoded_text(op.message)
    assert note.recipients == ("owner@example.com", "lead@Sub.Example.com")
    assert "service side" in decoded_text(note.message) and "operator has been notified" in decoded_text(note.message)
    assert "key is missing" not in decoded_text(note.message)  # short note, no operator details


def test_model_error_note_to_owners_and_author():
    f = facts(status="model_error", results=FAILURE, cause="crash: the model exited with code 1", use_id=None)
    (mail,) = em.plan_mails(f, POLICY)
    assert mail.kind == "note" and "dev@example.com" in mail.recipients
    assert "not evaluated (the model failed)" in mail.message["Subject"]
    assert "exited with code 1" in decoded_text(mail.message)


def test_cancelled_build_sends_nothing():
    assert em.plan_mails(facts(status=None, results=CANCELLED), POLICY) == []


def test_raw_unknown_is_explained_and_html_is_escaped():
    uses = ledger_uses(1)
    uses[0]["result"]["verdict"].update(raw="unknown", outcome="fail",
                                        condition="n - o > 0.02 +/- 0.01 <script>")
    (mail, _author) = em.plan_mails(facts(use_id=101, repo="acme/<b>m</b>"), POLICY, ledger=(uses, state(1)))
    html = mail.message.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>m</b>" not in html
    assert "raw verdict: unknown" in htmllib.unescape(html)


def test_subject_has_repo_pr_sha_and_verdict_and_no_newlines():
    (mail, _) = em.plan_mails(facts(sha="0123456789abcdef", repo="acme/m\nBcc: x@evil.test", use_id=101), POLICY,
                              ledger=(ledger_uses(1), state(1)))
    subject = mail.message["Subject"]
    assert "\n" not in subject and subject.startswith("[easeml] acme/m Bcc: x@evil.test PR #7 0123456: ")


def test_facts_from_build_properties():
    build = {"results": SUCCESS, "builder": {"name": "easeml", "builderid": 1}, "number": 3,
             "buildset": {"sourcestamps": [{"branch": "refs/pull/12/merge", "revision": "f" * 40,
                                            "project": "acme/m"}]},
             "properties": {"easeml_status": ["evaluated", "easeml"], "easeml_repo": ["acme/m", "easeml"],
                            "easeml_use_id": [5, "easeml"], "easeml_email": [["a@example.com"], "easeml"],
                            "easeml_condition": ["n > 0.5", "easeml"], "easeml_steps": [4, "easeml"],
                            "workername": ["w1", "worker"]}}
    f = em.facts_from_build(build, "http://bb/x", ["Dev <dev@example.com>"], em.MailPolicy())
    assert (f.repo, f.pr_number, f.sha, f.use_id, f.owners, f.worker) == (
        "acme/m", 12, "f" * 40, 5, ("a@example.com",), "w1")
    assert f.pr_url == "https://github.com/acme/m/pull/12"
    assert f.author == "Dev <dev@example.com>"
    assert f.config["condition"] == "n > 0.5" and f.config["steps"] == 4


def test_reporters_from_master_settings():
    s = Settings.from_dict({"forge": "local", "local": {"repo": "/tmp/r"}, "operator_email": "ops@example.com",
                            "allowed_email_domains": ["example.com"],
                            "smtp": {"host": "127.0.0.1", "port": 465, "tls": True, "user": "ci",
                                     "password": "pw-123456", "from_addr": "ci@example.com"}})
    c: dict = {}
    (notifier,) = em.make_email_reporters(s, c)
    kw = notifier._config_kwargs
    assert (kw["relayhost"], kw["smtpPort"], kw["useSmtps"], kw["useTls"]) == ("127.0.0.1", 465, True, False)
    assert kw["fromaddr"] == "ci@example.com"
    # the password travels as a Buildbot secret, served by the provider added to c
    assert "pw-123456" not in repr(kw["smtpPassword"])
    (provider,) = c["secretsProviders"]
    provider.reconfigService(*provider._config_args, **provider._config_kwargs)
    assert provider.get(em.SMTP_PASSWORD_SECRET) == "pw-123456"
    assert "pw-123456" not in repr(provider)
    assert em.make_email_reporters(s.with_(email_enabled=False)) == []


@pytest.mark.parametrize("value, port", [(False, 25), (True, 587), (True, 465), ("ssl", 465), ("starttls", 587),
                                         ("true", 465), ("on", 587), ("off", 25)])
def test_notifier_takes_smtp_tls_from_the_settings(value, port):
    """One reading of ``smtp.tls`` (the settings'): the notifier gets STARTTLS/SMTPS from it."""
    s = Settings.from_dict({"forge": "local", "local": {"repo": "/r"}, "allowed_email_domains": ["example.com"],
                            "smtp": {"host": "127.0.0.1", "port": port, "tls": value}})
    (notifier,) = em.make_email_reporters(s)
    kw = notifier._config_kwargs
    assert (kw["useTls"], kw["useSmtps"]) == (s.smtp.tls == "starttls", s.smtp.tls == "ssl")
    assert "attempts" not in kw  # unset tuning keys: the notifier's defaults, in one place


def test_png_and_html_structure_of_evaluation_mail():
    (mail, _) = em.plan_mails(facts(), POLICY, ledger=(ledger_uses(3), state(3)))
    parts = mime_parts(mail.message)
    assert list(parts)[:3] == ["multipart/alternative", "text/plain", "multipart/related"]
    assert parts["image/png"][0]["Content-Disposition"].startswith("inline")


def test_facts_from_a_github_pull_request_build():
    """Properties set by the GitHub App hook: PR number, head sha; links to the forge's web UI."""
    s = Settings.from_dict({"forge": "local", "local": {"repo": "/tmp/r"},
                            "github": {"api_url": "https://ghe.example.com/api/v3"}})
    policy = em.MailPolicy.from_settings(s)
    assert policy.web_url == "https://ghe.example.com"
    assert em.MailPolicy.from_settings(Settings.from_dict({"forge": "local", "local": {"repo": "/x"}})).web_url \
        == "https://github.com"
    build = {"results": SUCCESS, "builder": {"name": "easeml"}, "buildset": {"sourcestamps": [{}]},
             "properties": {"easeml_status": ["evaluated", "easeml"], "easeml_repo": ["acme/m", "hook"],
                            "easeml_pr": [31, "hook"], "easeml_head_sha": ["c" * 40, "hook"],
                            "branch": ["refs/pull/31/merge", "hook"]}}
    f = em.facts_from_build(build, None, ["octocat"], policy)  # a login, not an address
    assert (f.pr_number, f.sha, f.author) == (31, "c" * 40, None)
    assert f.pr_url == "https://ghe.example.com/acme/m/pull/31"


def test_missing_test_set_asks_owners_for_one():
    f = facts(status="missing_dataset", results=FAILURE, use_id=None,
              cause="abc123456789:data/test.csv.gpg: no encrypted test set on the base branch",
              config={"condition": "n > 0.8 +/- 0.05", "reliability": 0.999, "adaptivity": "full",
                      "steps": 4, "samples_needed": 1234, "dataset": "data/test.csv.gpg"})
    mails = em.plan_mails(f, POLICY)
    assert kinds(mails) == [("exhaustion", ("owner@example.com", "lead@Sub.Example.com")),
                            ("note", ("dev@example.com",))]
    req = mails[0].message
    assert req["Subject"] == "[easeml] acme/m: no test set yet, one with 1234 samples is needed"
    text = req.get_body(("plain",)).get_content()
    assert "no encrypted test set at data/test.csv.gpg" in text and "1234 labelled samples" in text
    assert "easeml dataset encrypt --key easeml_pub.asc test.csv data/test.csv.gpg" in text


def test_undecryptable_test_set_also_tells_the_operator():
    f = facts(status="missing_dataset", results=FAILURE, use_id=None, cause_kind="key",
              cause="key: /srv/worker/keys/easeml_priv.asc: no secret key for data/test.csv.gpg")
    mails = em.plan_mails(f, POLICY)
    assert [m.kind for m in mails] == ["operator", "note"]
    assert "/srv/worker/keys/easeml_priv.asc: no secret key" in decoded_text(mails[0].message)
    note = mails[1].message
    assert "not evaluated (the test set could not be read)" in note["Subject"]
    text = decoded_text(note)
    assert "no secret key for data/test.csv.gpg" in text and "/srv/worker" not in text
    assert "operator has been notified" in text


def test_chart_shows_the_history_up_to_the_reported_use():
    from easeml_buildbot.master.chart import render_chart, thresholds_from_condition

    uses = ledger_uses(5)
    (mail, _) = em.plan_mails(facts(use_id=102), POLICY, ledger=(uses, state(5)))
    png = mime_parts(mail.message)["image/png"][0].get_content()
    expected = render_chart(uses[:2], thresholds_from_condition("n - o > 0.02 +/- 0.01"), highlight=2, budget=8,
                            title="acme/m: test set " + ("ab" * 32)[:12])
    assert png == expected
    assert "use 2 of 8, 6 left" in mail.message.get_body(("plain",)).get_content()


def test_recipients_are_deduplicated_case_insensitively():
    kept, dropped = em.filter_recipients(["A <a@Example.com>", "a@example.com", "b@evil.test", "B@EVIL.test"],
                                         ("example.com",))
    assert (kept, dropped) == (["a@Example.com"], ["b@evil.test"])


def test_a_pull_request_into_an_unlisted_branch_mails_nobody():
    """Not evaluated (the base branch is not the default branch nor listed): nothing was
    looked at, so neither the owners nor the author hear of it (the check run says why)."""
    assert em.plan_mails(facts(status="not_evaluated", use_id=None, dataset_id=None,
                               cause="pull requests into 'dev' are not evaluated"), POLICY) == []


def test_notifier_check_config_reports_every_problem_at_once(tmp_path):
    """As ``buildbot checkconfig`` collects them: each names its [smtp] key; a missing CA file
    is caught here, not at the first mail."""
    from buildbot.config.errors import capture_config_errors

    with capture_config_errors() as errors:
        em.EasemlMailNotifier(fromaddr="not an address", relayhost="127.0.0.1", useTls=True,
                              generators=[em.EasemlMailGenerator(em.MailPolicy(operator="ops"))],
                              attempts=0, timeout="soon", ca_file=str(tmp_path / "no-ca.pem"),
                              outbox=True, outbox_expiry=-1)
    text = "\n".join(errors.errors)
    for expected in ("smtp.from_addr: 'not an address' is not an email address",
                     "smtp.attempts: must be >= 1, not 0",
                     "smtp.timeout: must be a number of seconds, not 'soon'",
                     "smtp.outbox_expiry: must be > 0, not -1",
                     f"smtp.ca_file: {tmp_path / 'no-ca.pem'}: no such file",
                     "operator_email: 'ops' is not an email address"):
        assert expected in text, text
    bad_pem = tmp_path / "ca.pem"
    bad_pem.write_text("not a certificate\n")
    with capture_config_errors() as errors:
        em.EasemlMailNotifier(fromaddr="ci@example.com", useTls=True, ca_file=str(bad_pem),
                              generators=[em.EasemlMailGenerator(em.MailPolicy())])
    assert [e for e in errors.errors if "not a PEM file of CA certificates" in e], errors.errors


def test_an_author_who_is_an_owner_gets_only_the_owners_mail():
    mails = em.plan_mails(facts(author="Owner <owner@example.com>"), POLICY, ledger=(ledger_uses(3), state(3)))
    assert kinds(mails) == [("evaluation", ("owner@example.com", "lead@Sub.Example.com"))]
