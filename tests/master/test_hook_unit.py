"""Pure parts of the webhook dialect: signatures, skip markers, delivery de-duplication."""

from __future__ import annotations

import hashlib
import hmac

import pytest

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
