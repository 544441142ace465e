"""The webhook dialect without a master: signatures, skip markers, delivery de-duplication."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import types

import pytest
from twisted.internet import defer

from easeml_buildbot.master.hook import DeliveryLog, SignatureError, has_skip, verify_signature

BODY = b'{"action":"opened"}'


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_valid_signature_passes():
    verify_signature("s", BODY, sign("s", BODY))


@pytest.mark.parametrize("header", [None, "", "sha1=abc", "sha256=", "sha256=" + "0" * 64, "garbage"])
def test_missing_or_wrong_signatures_are_rejected(header):
    with pytest.raises(SignatureError):
        verify_signature("s", BODY, header)


def test_signature_from_another_secret_or_body_is_rejected():
    with pytest.raises(SignatureError):
        verify_signature("s", BODY, sign("other", BODY))
    with pytest.raises(SignatureError):
        verify_signature("s", BODY + b" ", sign("s", BODY))


def test_no_secret_configured_rejects_everything():
    with pytest.raises(SignatureError):
        verify_signature("", BODY, sign("", BODY))


def test_skip_markers():
    assert has_skip("fix typo [skip ci]") and has_skip("[ci skip] docs") and has_skip("[ Skip CI ]")
    assert not has_skip("skip the ci") and not has_skip("") and not has_skip(None)


def test_delivery_log_is_bounded_and_forgets_on_request():
    log = DeliveryLog(size=3)
    assert log.claim("a") and not log.claim("a")
    log.forget("a")
    assert log.claim("a")
    for d in "bcd":
        assert log.claim(d)
    assert log.claim("a")  # evicted as the oldest


class _Request:
    def __init__(self, body: bytes, headers: dict[bytes, bytes]):
        self.content = io.BytesIO(body)
        self._headers = headers

    def getHeader(self, name: bytes):
        return self._headers.get(name)


class _FlakyState:
    """Buildbot's state table (the accepted model) that fails its next ``failures`` reads."""

    failures = 0

    def getObjectId(self, *names):
        if self.failures:
            self.failures -= 1
            return defer.fail(RuntimeError("database is locked"))
        return defer.succeed(1)

    def getState(self, oid, name, default=None):
        return defer.succeed(default)


REPO = {"id": 7, "full_name": "o/r", "clone_url": "https://github.com/o/r.git"}
PR_SYNC = {"action": "synchronize", "repository": REPO, "installation": {"id": 5},
           "pull_request": {"number": 3, "title": "t", "head": {"sha": "a" * 40},
                            "base": {"ref": "main", "sha": "b" * 40}}}
SUITE = {"action": "requested", "repository": REPO, "installation": {"id": 5},
         "check_suite": {"head_sha": "c" * 40, "head_commit": {"message": "m"},
                         "pull_requests": [{"number": 4, "url": "u",
                                            "base": {"ref": "main", "sha": "b" * 40, "repo": {"id": 7}}}]}}


@pytest.mark.parametrize("event, payload, sha", [("pull_request", PR_SYNC, "a" * 40),
                                                 ("check_suite", SUITE, "c" * 40)])
def test_a_delivery_that_failed_is_scheduled_when_github_redelivers_it(event, payload, sha):
    """The first attempt breaks after the head was claimed; the redelivery (same delivery id)
    must still schedule the build, not be taken for a duplicate of the failed attempt."""
    from easeml_buildbot.master.hook import GitHubAppHook
    from easeml_buildbot.master.settings import Settings

    settings = Settings.from_dict({"forge": "local", "local": {"repo": "/x"}, "github": {"webhook_secret": "s"}})
    state = _FlakyState()
    hook = GitHubAppHook(types.SimpleNamespace(db=types.SimpleNamespace(state=state)),
                         {"settings": settings, "app": None})
    body = json.dumps(payload).encode()
    headers = {b"X-Hub-Signature-256": sign("s", body).encode(), b"X-GitHub-Event": event.encode(),
               b"X-GitHub-Delivery": b"delivery-1", b"Content-Type": b"application/json"}

    def deliver(headers):
        out = []
        hook.getChanges(_Request(body, headers)).addBoth(out.append)
        return out[0]

    state.failures = 1
    failed = deliver(headers)
    assert "database is locked" in str(failed.value)
    changes, _ = deliver(headers)  # GitHub's redelivery
    assert [c["revision"] for c in changes] == [sha]
    assert deliver({**headers, b"X-GitHub-Delivery": b"delivery-2"}) == ([], "git")  # same head again
