"""Through a real master build: Buildbot master + worker processes, the local forge polling a
real git repository with a real model and a gpg-encrypted test set, delivering to aiosmtpd.

One master serves five builds of a 2-use test set (adaptivity full):
1. a better model: owners get the full verdict with the chart, the author only the outcome;
2. a commit that also edits .easeml.yml to add a recipient: not evaluated (protected file),
   the note goes to the base commit's recipients only, never to the added address. On the
   local forge the watched branch is the trusted default branch, so that commit becomes the
   accepted configuration (issue 14): from build 3 on, the added address is an owner;
3. the worker's private key is gone: the operator gets the failed step and its log, the
   owners a short note, and the use is released;
4. another model: use 2 of 2, so the owners also get the exhaustion mail;
5. with the SMTP server down: the test set is exhausted, the build still completes, the
   failed delivery is retried a bounded number of times, logged, and the master lives on.
"""

from __future__ import annotations

import html as htmllib
import io
import re
import shutil
import time
import uuid

import pytest
import yaml
from PIL import Image

from easeml_buildbot.master.rotation import rotation_text
from support.buildbot_harness import BuildbotHarness
from support.gpgkeys import service_keys  # noqa: F401  (fixture)
from support.models import make_model_repo
from support.smtp import SmtpServer

from mail_helpers import assert_no_key_material, decoded_text, mime_parts

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

OWNER, INTRUDER, ADDED = "owner@example.com", "intruder@evil.test", "added-by-pr@example.com"


def _git_ok() -> bool:
    return shutil.which("git") is not None and shutil.which("unshare") is not None


def _label_leaks(raw: bytes, text: str, labels) -> list[str]:
    """Any run of 12 consecutive test labels, as a column or a row, in the mail."""
    found = []
    for start in range(0, min(len(labels), 240), 12):
        run = [str(x) for x in labels[start:start + 12]]
        for sep in ("\n", "\r\n", ",", " "):
            needle = sep.join(run)
            if needle in text or needle.encode() in raw:
                found.append(needle)
    return found


def test_mails_through_real_master_builds(tmp_path, service_keys):
    if not _git_ok():
        pytest.skip("needs git and unshare for the process runner")
    repo = make_model_repo(tmp_path / "repo", public_key=service_keys.public, quality=0.8,
                           condition="n > 0.6 +/- 0.1", reliability=0.99, adaptivity="full", steps=2,
                           email=(OWNER, INTRUDER))
    password = "smtp-" + uuid.uuid4().hex
    with SmtpServer(user="ci-mailer", password=password) as smtp:
        settings = {
            "local": {"repo": str(repo.path), "branch": "main", "project": "acme/digits", "poll_interval": 1},
            "email_enabled": True, "operator_email": "ops@example.com",
            "allowed_email_domains": ["example.com"],
            "smtp": {"host": smtp.host, "port": smtp.port, "from_addr": "easeml-ci@example.com",
                     "user": "ci-mailer", "password": password},
        }
        key = tmp_path / "worker-key.asc"  # a copy the test can take away (operator-side failure)
        shutil.copy(service_keys.private, key)
        worker_env = {"EASEML_WORKER_KEY": str(key), "EASEML_WORKER_RUNNER": "process"}
        if service_keys.passphrase_file:
            worker_env["EASEML_WORKER_PASSPHRASE_FILE"] = str(service_keys.passphrase_file)
        env = {"EASEML_SMTP_ATTEMPTS": "3", "EASEML_SMTP_BACKOFF": "0.5", "EASEML_SMTP_TIMEOUT": "5",
               "EASEML_SMTP_OUTBOX_MAX_BACKOFF": "1"}
        # configure() makes the SMTP password a Buildbot secret (util.Secret) for the notifier
        with BuildbotHarness(tmp_path / "bb", settings=settings, worker_env=worker_env, env=env) as bb:
            time.sleep(2)  # the poller's first run records the current head without building it
            # 1. a better model
            better = repo.commit_model(quality=0.95, branch="main")
            (b1,) = bb.wait_for_builds(1, timeout=120)
            p1 = bb.build_properties(b1["buildid"])
            assert p1.get("easeml_status") == "evaluated", (p1, bb.master_log()[-4000:])
            mails = smtp.wait_for(2, timeout=30)
            owner = next(m for m in mails if OWNER in m.rcpt_tos)
            author = next(m for m in mails if m.rcpt_tos == ["dev@example.com"])
            assert owner.rcpt_tos == [OWNER]  # the intruder's domain is not allowed
            msg = owner.message
            outcome = msg["Subject"].rsplit(": ", 1)[1]
            assert msg["Subject"] == f"[easeml] acme/digits {better.sha[:7]}: {outcome}"
            parts = mime_parts(msg)
            text = parts["text/plain"][0].get_content()
            html = parts["text/html"][0].get_content()
            for body in (text, htmllib.unescape(html)):
                assert "n > 0.6 +/- 0.1" in body and "fp-free" in body and "full (H = 2 uses)" in body
                assert "use 1 of 2, 1 left" in body
                assert f"#/builders/{b1['builderid']}/builds/{b1['number']}" in body
                assert str(p1["easeml_samples_used"]) in body
            png = parts["image/png"][0]
            assert f'src="cid:{png["Content-ID"].strip("<>")}"' in html
            Image.open(io.BytesIO(png.get_content())).verify()
            assert "interval" not in decoded_text(author.message).lower()
            assert outcome in decoded_text(author.message)
            for m in mails:
                assert not _label_leaks(m.data, decoded_text(m.message), repo.labels)
                assert_no_key_material(m.data, secrets=(service_keys.private.read_bytes(),))

            # 2. the pull request edits .easeml.yml to add a recipient: nobody new is mailed
            cfg = yaml.safe_load((repo.path / ".easeml.yml").read_text())
            cfg["email"] = [*cfg["email"], ADDED]
            repo.commit_model(quality=0.9, branch="main", files={".easeml.yml": yaml.safe_dump(cfg)})
            (_, b2) = bb.wait_for_builds(2, timeout=120)
            assert bb.build_properties(b2["buildid"]).get("easeml_status") == "protected_changed"
            mails = smtp.wait_for(3, timeout=30)
            note = mails[2]
            assert sorted(note.rcpt_tos) == sorted([OWNER, "dev@example.com"])
            assert "not evaluated (protected files changed)" in note.message["Subject"]

            # 3. the worker's key is gone (operator-side): the operator gets the details, the
            #    owners a short note, and no use of the test set is spent
            hidden = key.with_suffix(".away")
            key.rename(hidden)
            third = repo.commit_model(quality=0.9, branch="main")
            (_, _, b3) = bb.wait_for_builds(3, timeout=120)
            p3 = bb.build_properties(b3["buildid"])
            assert p3.get("easeml_status") in ("infra_error", "missing_dataset"), p3
            assert p3.get("easeml_released") is True
            # the typed outcome (issue 13): a key problem is its own kind, the use was given
            # back, and uses left is the ledger's answer to the release
            ev3 = p3["easeml_outcome"]
            assert (ev3["kind"], ev3["use_state"]) == ("key", "released"), ev3
            assert ev3["uses_left"] == p3["easeml_uses_left"]
            mails = smtp.wait_for(5, timeout=30)
            by_rcpt = {tuple(m.rcpt_tos): m.message for m in mails[3:]}
            owners = [OWNER, ADDED]  # the configuration commit of build 2 is the default branch's now
            op, note = by_rcpt[("ops@example.com",)], by_rcpt[(*owners, "dev@example.com")]
            assert op["Subject"].startswith(f"[easeml] acme/digits {third.sha[:7]}: ")
            op_text = decoded_text(op)
            assert p3["easeml_status"] in op_text and "worker1" in op_text and p3["easeml_cause"][:40] in op_text
            assert "Failed step: evaluate" in op_text or "Failed step: record result" in op_text
            assert f"#/builders/{b3['builderid']}/builds/{b3['number']}" in op_text
            assert "not evaluated" in note["Subject"]
            if p3["easeml_status"] == "missing_dataset":
                assert "could not be read" in note["Subject"]
            assert str(tmp_path) not in decoded_text(note)  # no worker paths for data scientists
            assert "image/png" not in mime_parts(note) and "interval" not in decoded_text(note)
            for m in mails[3:]:
                assert_no_key_material(m.data, secrets=(service_keys.private.read_bytes(),))
            hidden.rename(key)

            # 4. the last use of the test set: verdict and the request for a new test set
            repo.commit_model(quality=0.88, branch="main")
            (_, _, _, b4) = bb.wait_for_builds(4, timeout=120)
            p4 = bb.build_properties(b4["buildid"])
            assert p4.get("easeml_status") == "evaluated", p4
            mails = smtp.wait_for(8, timeout=30)
            exhaustion = next(m for m in mails[5:] if "test set exhausted" in m.message["Subject"])
            assert exhaustion.rcpt_tos == owners
            etext = exhaustion.message.get_body(("plain",)).get_content()
            assert f"{p4['easeml_samples_needed']} labelled samples" in etext
            assert "easeml dataset encrypt --key easeml_pub.asc test-2.csv data/test-2.csv.gpg" in etext
            assert rotation_text("data/test.csv.gpg", samples=p4["easeml_samples_needed"],
                                 markdown=False) in etext.replace("\r\n", "\n")
            assert any("use 2 of 2, 0 left" in decoded_text(m.message) for m in mails[5:])

            # 5. SMTP down: the build completes, the mail waits in the outbox (retried, logged)
            # for longer than the old bounded retries (3 attempts), and goes out once it is back
            smtp.down()
            repo.commit_model(quality=0.85, branch="main")
            builds = bb.wait_for_builds(5, timeout=120)
            assert bb.build_properties(builds[4]["buildid"]).get("easeml_status") == "exhausted"
            deadline = time.monotonic() + 30
            while (bb.master_log().count("kept in the outbox") < 4) and time.monotonic() < deadline:
                time.sleep(0.3)
            log = bb.master_log()
            assert re.search(r"attempt 4 to send exhaustion mail #\d+ failed", log), log[-3000:]
            assert "giving up" not in log
            assert len(smtp.messages) == 8
            assert bb.metric("easeml_outbox_pending") == 1  # the operator sees it waiting (first scrape: fresh)
            assert bb.api("builders")  # the master still answers
            smtp.up()
            late = smtp.wait_for(9, timeout=30)[8]
            assert "test set exhausted" in late.message["Subject"] and late.rcpt_tos == owners
            assert bb.master_proc.poll() is None
            # the password was rendered from the secret (AUTH succeeded) and never logged
            assert password not in log and password not in bb.step_logs_text(builds[0]["buildid"])
            time.sleep(1.5)  # more drain ticks: the late mail is not sent again
        assert len(smtp.messages) == 9
        assert {m.authenticated_as for m in smtp.messages} == {"ci-mailer"}
        assert all(password.encode() not in m.data for m in smtp.messages)


def test_github_pull_request_mail(tmp_path, service_keys):
    """GitHub App flavour: a signed pull_request webhook (GitHub's own example payload) to a
    real master talking to the GitHub stand-in; the owners' mail names the PR and links it."""
    from support.github_sim import fixtures_available
    from support.github_sim_world import require_worker_cli, start_world

    reason = fixtures_available()
    if reason:
        pytest.skip(reason)
    require_worker_cli()
    with SmtpServer() as smtp:
        extra = {"email_enabled": True, "allowed_email_domains": ["example.com"],
                 "operator_email": "ops@example.com",
                 "smtp": {"host": smtp.host, "port": smtp.port, "from_addr": "easeml-ci@example.com"}}
        world, stop = start_world(tmp_path / "gh", service_keys, workers=1, extra_settings=extra)
        try:
            repo = world.repo("mailed", quality=0.9, condition="n > 0.6 +/- 0.1", reliability=0.99,
                              adaptivity="none", steps=4, email=(OWNER, INTRUDER))
            head = repo.commit_model(quality=0.97, branch="pr-1")
            status, body = world.send("pull_request", world.pr_payload("mailed", repo, 7, head.sha))
            assert status == 200, body
            (build,) = world.bb.wait_for_builds(1, timeout=120)
            props = world.bb.build_properties(build["buildid"])
            assert props.get("easeml_status") == "evaluated", props
            (got,) = smtp.wait_for(1, timeout=30)
        finally:
            stop()
    assert got.rcpt_tos == [OWNER]  # adaptivity none: no author mail; intruder not allowed
    msg = got.message
    outcome = msg["Subject"].rsplit(": ", 1)[1]
    assert msg["Subject"] == f"[easeml] acme/mailed PR #7 {head.sha[:7]}: {outcome}"
    text = decoded_text(msg)
    assert "/acme/mailed/pull/7" in text and f"#/builders/{build['builderid']}/builds/{build['number']}" in text
    assert "use 1 of 4, 3 left" in text and "none (H = 4 uses)" in text
    assert "image/png" in mime_parts(msg)
    assert not _label_leaks(got.data, text, repo.labels)
