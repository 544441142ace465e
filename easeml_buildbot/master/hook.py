"""``/change_hook/github``: the GitHub App webhook, as a Buildbot change-hook dialect.

Why not Buildbot's own ``github`` dialect: an App must verify ``X-Hub-Signature-256``
on *every* request (Buildbot's checks SHA-1 and only when a signature is present),
drop redelivered events, understand ``check_suite``/``check_run`` re-runs and carry the
installation id to the reporter. It follows the structure of
``buildbot/www/hooks/github.py``: one ``handle_<event>`` per event, returning change dicts.

A rejected request raises ``ValueError`` (Buildbot answers 400) before anything is recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from twisted.internet import defer, threads
from twisted.python import log

from buildbot.www.hooks.base import BaseHookHandler

from easeml_buildbot.master.accepted import get_accepted, set_accepted

SKIP_PATTERNS = (r"\[ *skip *ci *\]", r"\[ *ci *skip *\]")
PR_ACTIONS = ("opened", "synchronize", "reopened")
ACK_EVENTS = ("ping", "installation", "installation_repositories", "github_app_authorization")


class SignatureError(ValueError):
    """Unsigned or mis-signed delivery (answered with 400, nothing recorded)."""


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


class DeliveryLog:
    """Bounded memory of keys seen (delivery ids, scheduled heads), so a redelivered event
    schedules nothing twice."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def claim(self, key: Hashable) -> bool:
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True

    def forget(self, key: Hashable) -> None:
        self._seen.pop(key, None)


class GitHubAppHook(BaseHookHandler):
    """Options: ``settings`` (Settings), ``app`` (GitHubApp or None), ``dedup_size``."""

    def __init__(self, master: Any, options: dict[str, Any] | None) -> None:
        super().__init__(master, options)
        options = options or {}
        if options.get("settings") is None:  # mounted by name through the entry point
            from easeml_buildbot.master.settings import Settings

            options["settings"] = Settings.load()
        self.settings = options["settings"]
        self.app = options.get("app")
        self.deliveries = DeliveryLog(int(options.get("dedup_size", 10000)))
        # pull_request.synchronize and check_suite.requested both announce a push: build once
        self.scheduled_heads = DeliveryLog()  # (repo, head sha)

    @defer.inlineCallbacks
    def getChanges(self, request: Any):
        body = request.content.read()
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
        if delivery and not self.deliveries.claim(delivery):
            log.msg(f"easeml: dropping duplicate delivery {delivery} ({event})")
            return ([], "git")
        try:
            handler = getattr(self, f"handle_{event}", None)
            if handler is None:
                log.msg(f"easeml: ignoring event {event!r}")
                return ([], "git")
            changes = yield handler(payload, delivery)
        except Exception:
            if delivery:
                self.deliveries.forget(delivery)  # let GitHub's redelivery try again
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
        repo = payload["repository"]
        default = repo.get("default_branch") or "main"
        if payload.get("ref") != f"refs/heads/{default}" or payload.get("deleted"):
            return []
        sha = payload.get("after") or (payload.get("head_commit") or {}).get("id")
        if sha:
            yield set_accepted(self.master, repo["full_name"], sha, default)
            log.msg(f"easeml: accepted model of {repo['full_name']} is now {sha[:12]} ({default})")
        return []

    # -- evaluation requests ------------------------------------------------------------
    @defer.inlineCallbacks
    def handle_pull_request(self, payload: dict[str, Any], delivery: str):
        action = payload.get("action")
        if action not in PR_ACTIONS:
            return []
        pr = payload["pull_request"]  # drafts are evaluated too: the developer pushed
        head_sha = pr["head"]["sha"]
        repo = payload["repository"]["full_name"]
        claim = action != "reopened"
        if claim and not self.scheduled_heads.claim((repo, head_sha)):
            return []
        try:
            message = yield self._commit_message(payload, head_sha)
            if has_skip(message) or has_skip(pr.get("title")):
                log.msg(f"easeml: {repo}#{pr['number']} {head_sha[:12]}: [skip ci]")
                return []
            change = yield self._change(payload, number=pr["number"], head_sha=head_sha,
                                        base_ref=pr["base"]["ref"], base_sha=pr["base"]["sha"],
                                        title=pr.get("title") or "", revlink=pr.get("html_url"),
                                        event=f"pull_request.{action}", delivery=delivery)
        except Exception:
            if claim:  # nothing was scheduled: GitHub's redelivery must be able to schedule it
                self.scheduled_heads.forget((repo, head_sha))
            raise
        return [change]

    @defer.inlineCallbacks
    def handle_check_suite(self, payload: dict[str, Any], delivery: str):
        action = payload.get("action")
        if action not in ("requested", "rerequested"):
            return []
        suite = payload["check_suite"]
        if action == "requested" and has_skip((suite.get("head_commit") or {}).get("message")):
            return []
        changes = yield self._for_pull_requests(payload, suite.get("pull_requests") or [],
                                                suite["head_sha"], f"check_suite.{action}",
                                                delivery, rerun=action == "rerequested")
        return changes

    @defer.inlineCallbacks
    def handle_check_run(self, payload: dict[str, Any], delivery: str):
        run = payload["check_run"]
        if payload.get("action") != "rerequested" or run.get("name") != self.settings.github.check_name:
            return []
        changes = yield self._for_pull_requests(payload, run.get("pull_requests") or [],
                                                run["head_sha"], "check_run.rerequested", delivery, rerun=True)
        return changes

    @defer.inlineCallbacks
    def _for_pull_requests(self, payload, prs, head_sha, event, delivery, rerun):
        repo = payload["repository"]["full_name"]
        changes = []
        for pr in prs:
            if pr.get("base", {}).get("repo", {}).get("id") not in (None, payload["repository"].get("id")):
                continue  # a PR into another repository that happens to contain this commit
            if not rerun and not self.scheduled_heads.claim((repo, head_sha)):
                continue
            try:
                change = yield self._change(payload, number=pr["number"], head_sha=head_sha,
                                            base_ref=pr["base"]["ref"], base_sha=pr["base"]["sha"],
                                            title=f"{event} for #{pr['number']}", revlink=pr.get("url"),
                                            event=event, delivery=delivery)
            except Exception:
                if not rerun:  # see handle_pull_request
                    self.scheduled_heads.forget((repo, head_sha))
                raise
            changes.append(change)
        return changes

    @defer.inlineCallbacks
    def _commit_message(self, payload: dict[str, Any], sha: str):
        inst = (payload.get("installation") or {}).get("id")
        if self.app is None or inst is None:
            return ""
        try:
            msg = yield threads.deferToThread(self.app.commit_message, inst,
                                              payload["repository"]["full_name"], sha)
        except Exception as exc:  # the check still runs; only [skip ci] detection is lost
            log.msg(f"easeml: could not read commit message of {sha[:12]}: {exc.__class__.__name__}")
            return ""
        return msg

    @defer.inlineCallbacks
    def _change(self, payload, *, number, head_sha, base_ref, base_sha, title, revlink, event, delivery):
        repo = payload["repository"]
        accepted = yield get_accepted(self.master, repo["full_name"])
        if accepted and accepted.get("branch") == base_ref:
            base_sha = accepted["sha"]
        props = {
            "easeml_repo": repo["full_name"],
            "easeml_installation_id": (payload.get("installation") or {}).get("id"),
            "easeml_pr": number,
            "easeml_head_sha": head_sha,
            "easeml_base_ref": base_ref,
            "easeml_base_sha": base_sha,
            "easeml_event": event,
            "easeml_delivery": delivery,
        }
        return {
            "revision": head_sha,
            "branch": f"refs/pull/{number}/head",
            "repository": repo.get("clone_url") or repo.get("html_url"),
            "project": repo["full_name"],
            "category": "pull",
            "author": (payload.get("sender") or {}).get("login", "unknown"),
            "comments": f"#{number}: {title}",
            "revlink": revlink,
            "files": [],
            "properties": props,
        }


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
