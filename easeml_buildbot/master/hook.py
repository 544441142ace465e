"""``/change_hook/github``: the GitHub App webhook, as a Buildbot change-hook dialect.

Why not Buildbot's own ``github`` dialect: an App must verify ``X-Hub-Signature-256``
on *every* request (Buildbot's checks SHA-1 and only when a signature is present),
drop redelivered events (remembered in the database all masters share:
``master.deliveries``), understand ``check_suite``/``check_run`` re-runs and carry the
installation id to the reporter. It follows the structure of
``buildbot/www/hooks/github.py``: one ``handle_<event>`` per event, returning change dicts.

A rejected request raises ``ValueError`` (Buildbot answers 400) before anything is recorded;
that includes a correctly signed payload whose fields are missing or of the wrong type
(:class:`PayloadError`, checked field by field before anything is read from it). Bodies over
GitHub's 25 MB are refused by the web server before they are read (``www_limits``).

Which pull requests are evaluated: the hook does not know the configuration (it lives on
the default branch), so every pull request is scheduled with its base branch, the
repository's default branch and the commit to read the configuration from (the accepted
commit of the default branch, when a push recorded one); the build's inspect step answers
"not evaluated" for a base branch the default branch's ``.easeml.yml`` does not list, before
any use is reserved. Pull requests into another branch report on their own check run
(``easeml/ci (into BRANCH)``), because check runs belong to the head commit, not to the pull
request: a result for a pull request into ``dev`` must never satisfy ``main``'s protection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Hashable
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log

from buildbot.www.hooks.base import BaseHookHandler

from easeml_buildbot.master.accepted import get_accepted, set_accepted

SKIP_PATTERNS = (r"\[ *skip *ci *\]", r"\[ *ci *skip *\]")
PR_ACTIONS = ("opened", "synchronize", "reopened")
COMMIT_MESSAGE_TIMEOUT = 5.0  # seconds the webhook waits for the head commit's message
ACK_EVENTS = ("ping", "installation", "installation_repositories", "github_app_authorization")


class SignatureError(ValueError):
    """Unsigned or mis-signed delivery (answered with 400, nothing recorded)."""


class PayloadError(ValueError):
    """A signed payload without a field the event needs, or with a field of the wrong type
    (answered with 400 naming the field, nothing recorded)."""


_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_KINDS = {str: "a string", int: "an integer", dict: "an object", list: "an array"}


def field(obj: Any, path: str, kind: type, *, optional: bool = False) -> Any:
    """``obj[a][b]...`` for ``path`` "a.b...", checked to be of ``kind``; :class:`PayloadError`
    naming the path when a level is missing or has the wrong type."""
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            raise PayloadError(f"malformed payload: '{path}' is missing (a parent is not an object)")
        cur = cur.get(part)
    if cur is None and optional:
        return None
    if cur is None:
        raise PayloadError(f"malformed payload: '{path}' is missing")
    if not isinstance(cur, kind) or (kind is int and isinstance(cur, bool)):
        raise PayloadError(f"malformed payload: '{path}' must be {_KINDS[kind]}, not {type(cur).__name__}")
    return cur


def sha_field(obj: Any, path: str) -> str:
    value = field(obj, path, str)
    if not _SHA.match(value):
        raise PayloadError(f"malformed payload: '{path}' is not a commit sha")
    return value


def ref_field(obj: Any, path: str, *, optional: bool = False) -> str | None:
    """A branch name as git allows it (git check-ref-format's rules that matter here)."""
    value = field(obj, path, str, optional=optional)
    if value is None:
        return None
    if (not value or value.startswith(("-", "/")) or ".." in value or ":" in value or "\\" in value
            or any(c.isspace() or ord(c) < 32 or c in "~^?*[" for c in value) or len(value) > 255):
        raise PayloadError(f"malformed payload: '{path}' is not a branch name")
    return value


def verify_signature(secret: str, body: bytes, header: str | None) -> None:
    """Check GitHub's ``X-Hub-Signature-256: sha256=<hex>`` in constant time."""
    if not secret:
        raise SignatureError("webhook secret not configured: refusing unsigned deliveries")
    if not header:
        raise SignatureError("missing X-Hub-Signature-256")
    algo, _, digest = header.partition("=")
    if algo != "sha256" or not digest:
        raise SignatureError("malformed X-Hub-Signature-256")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest.strip().lower()):
        raise SignatureError("X-Hub-Signature-256 does not match")


def has_skip(message: str | None) -> bool:
    return bool(message) and any(re.search(p, message, re.I) for p in SKIP_PATTERNS)


class GitHubAppHook(BaseHookHandler):
    """Settings, ledger and GitHub App come from the master's ``EasemlService``. Options
    (tests): ``settings``, ``app`` (a GitHubApp, or None for none), ``deliveries`` (a
    ``DeliveryStore``; default: one on the master's ledger), ``run_db`` (how a blocking
    database call is run; default: the reactor's thread pool)."""

    def __init__(self, master: Any, options: dict[str, Any] | None) -> None:
        super().__init__(master, options)
        self._options = options = options or {}
        self._deliveries = options.get("deliveries")  # opened on first use (in a thread)
        self._run_db = options.get("run_db") or self._in_thread
        # pull_request.synchronize and check_suite.requested both announce a push: build once
        # per pull request base (the same head into main must be evaluated after one into dev):
        # claims of kind "head", key (repo, head sha, base branch)

    def _service(self):
        from easeml_buildbot.master.service import easeml_service

        return easeml_service(self.master)

    @property
    def settings(self):
        if "settings" in self._options:
            return self._options["settings"]
        return self._service().settings

    @property
    def app(self):
        """The GitHub App, opened on first use (reads the key file: call in a thread)."""
        if "app" in self._options:
            return self._options["app"]
        return self._service().app()

    def _in_thread(self, fn):
        reactor = getattr(self.master, "reactor", None)
        if reactor is None:
            from twisted.internet import reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn)

    def _store(self):
        if self._deliveries is None:
            from easeml_buildbot.master.deliveries import DeliveryStore

            self._deliveries = DeliveryStore(self._service().ledger().engine)
        return self._deliveries

    def claim(self, kind: str, key: Hashable):
        """Deferred: True when no master claimed ``(kind, key)`` before."""
        return self._run_db(lambda: self._store().claim(kind, key))

    def forget(self, kind: str, key: Hashable):
        """Deferred; a failure is logged (the caller is already handling an error)."""
        d = self._run_db(lambda: self._store().forget(kind, key))
        d.addErrback(lambda f: log.msg(f"easeml: could not forget {kind} claim: {f.getErrorMessage()[:200]}"))
        return d

    def _github(self, fn, *args):
        """A blocking GitHub call in the GitHub thread pool (``master.checkruns``)."""
        manager = getattr(self.master, "service_manager", None)
        svc = getattr(manager, "namedServices", {}).get("easeml-github")
        if svc is not None:
            return svc.run(fn, *args)
        return threads.deferToThread(fn, *args)

    def check_name_for(self, base_ref: str, default_branch: str) -> str:
        """The check run a build for a pull request into ``base_ref`` reports on."""
        name = self.settings.github.check_name
        return name if base_ref == default_branch else f"{name} (into {base_ref})"

    @defer.inlineCallbacks
    def getChanges(self, request: Any):
        from easeml_buildbot.master.www_limits import MAX_BODY_BYTES

        body = request.content.read(MAX_BODY_BYTES + 1)  # the web server refused larger ones
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"body larger than {MAX_BODY_BYTES} bytes")
        verify_signature(self.settings.github.webhook_secret, body,
                         _header(request, b"X-Hub-Signature-256"))
        event = _header(request, b"X-GitHub-Event") or ""
        delivery = _header(request, b"X-GitHub-Delivery") or ""
        ctype = (_header(request, b"Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            raise ValueError(f"unsupported content type {ctype!r}: configure the App to send application/json")
        try:
            payload = json.loads(body)
        except ValueError:
            raise ValueError("body is not JSON") from None
        except RecursionError:
            raise ValueError("body is nested too deeply") from None
        if not isinstance(payload, dict):
            raise PayloadError(f"malformed payload: a JSON object was expected, not {type(payload).__name__}")
        if delivery and not (yield self.claim("delivery", delivery)):
            log.msg(f"easeml: dropping duplicate delivery {delivery} ({event})")
            return ([], "git")
        try:
            handler = getattr(self, f"handle_{event}", None)
            if handler is None:
                log.msg(f"easeml: ignoring event {event!r}")
                return ([], "git")
            changes = yield handler(payload, delivery)
        except Exception as exc:
            if delivery:
                yield self.forget("delivery", delivery)  # let GitHub's redelivery try again
            if isinstance(exc, (KeyError, TypeError, AttributeError, IndexError)):
                # a payload shape the field checks missed: still the sender's problem, a 400
                log.err(None, f"easeml: malformed {event} payload (delivery {delivery})")
                raise PayloadError(f"malformed {event} payload ({type(exc).__name__})") from None
            raise
        log.msg(f"easeml: {event} {payload.get('action', '')} delivery={delivery}: {len(changes)} change(s)")
        return (changes, "git")

    # -- acknowledged events ------------------------------------------------------------
    def _ack(self, payload: dict[str, Any], delivery: str):
        return defer.succeed([])

    handle_ping = handle_installation = handle_installation_repositories = _ack
    handle_github_app_authorization = _ack

    # -- the accepted model -------------------------------------------------------------
    @defer.inlineCallbacks
    def handle_push(self, payload: dict[str, Any], delivery: str):
        name = field(payload, "repository.full_name", str)
        default = ref_field(payload, "repository.default_branch", optional=True) or "main"
        if field(payload, "ref", str) != f"refs/heads/{default}" or payload.get("deleted") is True:
            return []
        sha = sha_field(payload, "after") if payload.get("after") else None
        if sha is None and field(payload, "head_commit", dict, optional=True):
            sha = sha_field(payload, "head_commit.id")
        if sha:
            yield set_accepted(self.master, name, sha, default)
            log.msg(f"easeml: accepted model of {name} is now {sha[:12]} ({default})")
        return []

    # -- evaluation requests ------------------------------------------------------------
    @defer.inlineCallbacks
    def handle_pull_request(self, payload: dict[str, Any], delivery: str):
        action = payload.get("action")
        if not isinstance(action, str) or action not in PR_ACTIONS:
            return []
        _repository(payload)
        number = field(payload, "pull_request.number", int)
        head_sha = sha_field(payload, "pull_request.head.sha")
        base_ref = ref_field(payload, "pull_request.base.ref")
        base_sha = sha_field(payload, "pull_request.base.sha")
        title = field(payload, "pull_request.title", str, optional=True) or ""
        revlink = field(payload, "pull_request.html_url", str, optional=True)
        repo = payload["repository"]["full_name"]
        claim = action != "reopened"  # drafts are evaluated too: the developer pushed
        key = (repo, head_sha, base_ref)
        if claim and not (yield self.claim("head", key)):
            return []
        try:
            message = yield self._commit_message(payload, head_sha)
            if has_skip(message) or has_skip(title):
                log.msg(f"easeml: {repo}#{number} {head_sha[:12]}: [skip ci]")
                return []
            change = yield self._change(payload, number=number, head_sha=head_sha,
                                        base_ref=base_ref, base_sha=base_sha,
                                        title=title, revlink=revlink,
                                        event=f"pull_request.{action}", delivery=delivery)
        except Exception:
            if claim:  # nothing was scheduled: GitHub's redelivery must be able to schedule it
                yield self.forget("head", key)
            raise
        return [change]

    @defer.inlineCallbacks
    def handle_check_suite(self, payload: dict[str, Any], delivery: str):
        action = payload.get("action")
        if not isinstance(action, str) or action not in ("requested", "rerequested"):
            return []
        _repository(payload)
        head_sha = sha_field(payload, "check_suite.head_sha")
        message = field(payload, "check_suite.head_commit.message", str, optional=True) \
            if field(payload, "check_suite.head_commit", dict, optional=True) else None
        if action == "requested" and has_skip(message):
            return []
        prs = field(payload, "check_suite.pull_requests", list, optional=True) or []
        changes = yield self._for_pull_requests(payload, prs, head_sha, f"check_suite.{action}",
                                                delivery, rerun=action == "rerequested")
        return changes

    @defer.inlineCallbacks
    def handle_check_run(self, payload: dict[str, Any], delivery: str):
        if payload.get("action") != "rerequested":
            return []
        _repository(payload)
        name = field(payload, "check_run.name", str)
        if name != self.settings.github.check_name and \
                not name.startswith(f"{self.settings.github.check_name} (into "):
            return []
        head_sha = sha_field(payload, "check_run.head_sha")
        prs = field(payload, "check_run.pull_requests", list, optional=True) or []
        changes = yield self._for_pull_requests(payload, prs, head_sha, "check_run.rerequested",
                                                delivery, rerun=True, check_name=name)
        return changes

    @defer.inlineCallbacks
    def _for_pull_requests(self, payload, prs, head_sha, event, delivery, rerun, check_name=None):
        repo = payload["repository"]["full_name"]
        default = _default_branch(payload)
        wanted = []
        for i, pr in enumerate(prs):
            where = f"pull_requests.{i}"
            if not isinstance(pr, dict):
                raise PayloadError(f"malformed payload: '{where}' must be an object")
            number = field(pr, "number", int)
            base_ref, base_sha = ref_field(pr, "base.ref"), sha_field(pr, "base.sha")
            if field(pr, "base.repo", dict, optional=True) and \
                    pr["base"]["repo"].get("id") not in (None, payload["repository"].get("id")):
                continue  # a PR into another repository that happens to contain this commit
            if check_name is not None and self.check_name_for(base_ref, default) != check_name:
                continue  # the re-run check run belongs to a pull request into another branch
            wanted.append((number, base_ref, base_sha, field(pr, "url", str, optional=True)))
        changes = []
        for number, base_ref, base_sha, url in wanted:
            key = (repo, head_sha, base_ref)
            if not rerun and not (yield self.claim("head", key)):
                continue
            try:
                change = yield self._change(payload, number=number, head_sha=head_sha,
                                            base_ref=base_ref, base_sha=base_sha,
                                            title=f"{event} for #{number}", revlink=url,
                                            event=event, delivery=delivery)
            except Exception:
                if not rerun:  # see handle_pull_request
                    yield self.forget("head", key)
                raise
            changes.append(change)
        return changes

    @defer.inlineCallbacks
    def _commit_message(self, payload: dict[str, Any], sha: str):
        inst = (payload.get("installation") or {}).get("id")
        if inst is None or ("app" in self._options and self._options["app"] is None):
            return ""
        d = self._github(lambda: self.app.commit_message(inst, payload["repository"]["full_name"], sha))
        reactor = getattr(self.master, "reactor", None)
        if reactor is not None:  # GitHub gives a webhook 10 s to answer: a slow GitHub must not eat them
            d.addTimeout(COMMIT_MESSAGE_TIMEOUT, reactor)
        try:
            msg = yield d
        except Exception as exc:  # the check still runs; only [skip ci] detection is lost
            log.msg(f"easeml: could not read commit message of {sha[:12]}: {exc.__class__.__name__}")
            return ""
        return msg

    @defer.inlineCallbacks
    def _change(self, payload, *, number, head_sha, base_ref, base_sha, title, revlink, event, delivery):
        repo = payload["repository"]
        default = _default_branch(payload)
        accepted = yield get_accepted(self.master, repo["full_name"])
        if accepted and accepted.get("branch") == base_ref:
            base_sha = accepted["sha"]  # the old model o: the accepted commit of the base branch
        # where .easeml.yml and the test set come from: the default branch's accepted commit;
        # none recorded yet: the build fetches the default branch and reads its head
        config_sha = accepted["sha"] if accepted and accepted.get("branch") == default else None
        props = {
            "easeml_repo": repo["full_name"],
            "easeml_installation_id": (payload.get("installation") or {}).get("id"),
            "easeml_pr": number,
            "easeml_head_sha": head_sha,
            "easeml_base_ref": base_ref,
            "easeml_base_sha": base_sha,
            "easeml_default_branch": default,
            "easeml_check_name": self.check_name_for(base_ref, default),
            "easeml_event": event,
            "easeml_delivery": delivery,
        }
        if config_sha:
            props["easeml_config_sha"] = config_sha
        return {
            "revision": head_sha,
            "branch": f"refs/pull/{number}/head",
            "repository": repo.get("clone_url") or repo.get("html_url"),
            "project": repo["full_name"],
            "category": "pull",
            "author": str((payload.get("sender") if isinstance(payload.get("sender"), dict) else {})
                          .get("login") or "unknown")[:100],
            "comments": f"#{number}: {title}",
            "revlink": revlink,
            "files": [],
            "properties": props,
        }


def _repository(payload: dict[str, Any]) -> None:
    """The repository fields every evaluation request needs, checked."""
    field(payload, "repository.full_name", str)
    field(payload, "repository.id", int, optional=True)
    ref_field(payload, "repository.default_branch", optional=True)
    if field(payload, "installation", dict, optional=True):
        field(payload, "installation.id", int, optional=True)
    if not (field(payload, "repository.clone_url", str, optional=True)
            or field(payload, "repository.html_url", str, optional=True)):
        raise PayloadError("malformed payload: 'repository.clone_url' is missing")


def _default_branch(payload: dict[str, Any]) -> str:
    return payload["repository"].get("default_branch") or "main"


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
