"""The webhook dialect without a master: signatures, skip markers, delivery de-duplication."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import types
import uuid

import pytest
from twisted.internet import defer

from easeml_buildbot.master.deliveries import DeliveryStore
from easeml_buildbot.master.hook import SignatureError, has_skip, verify_signature

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


def _engine(path=None):
    import sqlalchemy as sa
    from sqlalchemy.pool import StaticPool

    if path is not None:
        return sa.create_engine(f"sqlite:///{path}")
    return sa.create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})


def test_delivery_claims_are_shared_through_the_database_and_bounded(tmp_path):
    """Two stores on one database file are two masters (or one master before and after a
    restart): a key claimed by one is a duplicate for the other, until it is forgotten or
    older than the retention."""
    now = [1000.0]
    db = tmp_path / "ledger.sqlite"
    one = DeliveryStore(_engine(db), retention=60, clock=lambda: now[0])
    other = DeliveryStore(_engine(db), retention=60, clock=lambda: now[0])
    assert one.claim("delivery", "a") and not other.claim("delivery", "a") and not one.claim("delivery", "a")
    assert other.claim("head", "a")  # kinds do not collide
    key = ("o/r", "c" * 40, "release/" + "x" * 300)  # longer than any column: stored as a digest
    assert other.claim("head", key) and not one.claim("head", key)
    one.forget("delivery", "a")
    assert other.claim("delivery", "a")
    now[0] += 61
    assert other.purge() == 3 and one.claim("head", key)


def _sync(fn):
    return defer.maybeDeferred(fn)


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
                         {"settings": settings, "app": None, "deliveries": DeliveryStore(_engine()),
                          "run_db": _sync})
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


def _hook(check_name="easeml/ci", deliveries=None):
    from easeml_buildbot.master.hook import GitHubAppHook
    from easeml_buildbot.master.settings import Settings

    settings = Settings.from_dict({"forge": "local", "local": {"repo": "/x"},
                                   "github": {"webhook_secret": "s", "check_name": check_name}})
    return GitHubAppHook(types.SimpleNamespace(db=types.SimpleNamespace(state=_FlakyState())),
                         {"settings": settings, "app": None, "deliveries": deliveries or DeliveryStore(_engine()),
                          "run_db": _sync})


def _deliver(hook, event, payload, delivery=None):
    body = json.dumps(payload).encode()
    headers = {b"X-Hub-Signature-256": sign("s", body).encode(), b"X-GitHub-Event": event.encode(),
               b"X-GitHub-Delivery": (delivery or uuid.uuid4().hex).encode(),
               b"Content-Type": b"application/json"}
    out = []
    hook.getChanges(_Request(body, headers)).addBoth(out.append)
    return out[0]


def test_a_delivery_seen_before_a_restart_or_by_another_master_is_dropped(tmp_path):
    db = tmp_path / "ledger.sqlite"
    before, after = _hook(deliveries=DeliveryStore(_engine(db))), _hook(deliveries=DeliveryStore(_engine(db)))
    (change,), _ = _deliver(before, "pull_request", PR_SYNC, delivery="d-1")
    assert change["revision"] == "a" * 40
    assert _deliver(after, "pull_request", PR_SYNC, delivery="d-1") == ([], "git")  # redelivered
    assert _deliver(after, "check_suite", {**SUITE, "check_suite": {**SUITE["check_suite"], "head_sha": "a" * 40}}) \
        == ([], "git")  # the same push announced again, to the other master


def test_check_name_per_base_branch():
    hook = _hook()
    assert hook.check_name_for("main", "main") == "easeml/ci"
    assert hook.check_name_for("dev", "main") == "easeml/ci (into dev)"
    assert hook.check_name_for("main", "trunk") == "easeml/ci (into main)"
    # no branch name makes the default branch's check name (branch names are never empty)
    assert all(hook.check_name_for(b, "main") != "easeml/ci" for b in ("", "easeml/ci", ")", "main "))


def test_the_same_head_is_scheduled_once_per_base_branch():
    hook = _hook()
    into = {}
    for ref in ("dev", "main", "dev"):
        payload = json.loads(json.dumps(PR_SYNC))
        payload["pull_request"]["base"]["ref"] = ref
        payload["pull_request"]["number"] = len(into) + 10
        into.setdefault(ref, []).append(_deliver(hook, "pull_request", payload))
    (dev_first, dev_again), (main,) = into["dev"], into["main"]
    (change,) = dev_first[0]
    assert change["properties"]["easeml_check_name"] == "easeml/ci (into dev)"
    assert change["properties"]["easeml_default_branch"] == "main"
    assert [c["properties"]["easeml_check_name"] for c in main[0]] == ["easeml/ci"]
    assert dev_again == ([], "git")  # the same head into dev again: a duplicate


def test_config_sha_is_the_accepted_commit_of_the_default_branch_only():
    hook = _hook()
    accepted = {"o/r": {"sha": "d" * 40, "branch": "main"}}
    hook.master.db.state.getState = lambda oid, name, default=None: defer.succeed(accepted.get(name, default))
    payload = json.loads(json.dumps(PR_SYNC))
    payload["repository"] = {**REPO, "default_branch": "main"}
    ((change,), _) = _deliver(hook, "pull_request", payload)
    assert change["properties"]["easeml_config_sha"] == "d" * 40 and change["properties"]["easeml_base_sha"] == "d" * 40
    accepted["o/r"]["branch"] = "trunk"  # the default branch changed since: fetch it in the build
    payload["pull_request"]["head"]["sha"] = "e" * 40
    ((change,), _) = _deliver(hook, "pull_request", payload)
    assert "easeml_config_sha" not in change["properties"] and change["properties"]["easeml_base_sha"] == "b" * 40


@pytest.mark.parametrize("event, payload, field", [
    ("pull_request", [1], "JSON object"),
    ("pull_request", {**PR_SYNC, "pull_request": {**PR_SYNC["pull_request"], "head": {"sha": "zz"}}}, "pull_request.head.sha"),
    ("pull_request", {**PR_SYNC, "repository": {**REPO, "default_branch": 3}}, "repository.default_branch"),
    ("check_suite", {**SUITE, "check_suite": {**SUITE["check_suite"], "pull_requests": [{"number": 4}]}}, "base.ref"),
    ("push", {"ref": "refs/heads/main", "after": True, "repository": REPO}, "after"),
])
def test_malformed_payloads_name_the_field(event, payload, field):
    from easeml_buildbot.master.hook import PayloadError

    failure = _deliver(_hook(), event, payload)
    assert failure.check(PayloadError) and field in str(failure.value), failure
