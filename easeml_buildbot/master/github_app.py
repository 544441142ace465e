"""Talking to GitHub as a GitHub App, with PyGithub.

Why its own module: the App's JWT and the short-lived installation tokens are the only
credentials the master holds for GitHub; keeping them here means one place caches,
refreshes and never logs them. Every call here is blocking (PyGithub uses ``requests``, 15 s
timeout); Buildbot code calls it in the GitHub thread pool (``master.checkruns``), never in
the reactor's default pool.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from github import Auth, Github, GithubIntegration
from github.CheckRun import CheckRun
from urllib3.util.retry import Retry

from easeml_buildbot.master import metrics


class _CountedRetry(Retry):
    """urllib3's Retry, counting each retry for ``easeml_github_retries_total``."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        new = super().increment(*args, **kwargs)  # raises MaxRetryError when none are left
        metrics.GITHUB_RETRIES.inc()
        return new


def _retry() -> Retry:
    """Retry idempotent calls on GitHub's transient errors; never re-POST (no duplicate runs)."""
    return _CountedRetry(total=3, connect=3, read=2, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504),
                 allowed_methods=frozenset({"GET", "PATCH"}), raise_on_status=False)


@dataclass
class _Token:
    token: str = field(repr=False)
    expires_at: float  # epoch seconds


class GitHubApp:
    """JWT → installation token (cached until ``refresh_margin`` s before expiry) → API clients."""

    def __init__(self, app_id: int, private_key: str, api_url: str = "https://api.github.com",
                 refresh_margin: int = 300, clock=time.time, seconds_between_requests: float = 0.25,
                 seconds_between_writes: float = 1.0, timeout: float = 15) -> None:
        self.app_id = app_id
        self.api_url = api_url.rstrip("/")
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._pace = dict(seconds_between_requests=seconds_between_requests or None,
                          seconds_between_writes=seconds_between_writes or None, timeout=timeout)
        self._integration = GithubIntegration(auth=Auth.AppAuth(app_id, private_key), base_url=self.api_url,
                                              retry=_retry(), **self._pace)
        self._tokens: dict[tuple[int, tuple], _Token] = {}  # (installation, permissions) -> token
        self._clients: dict[int, Github] = {}
        self._lock = threading.Lock()
        self.tokens_fetched = 0  # for tests and metrics

    def __repr__(self) -> str:
        return f"GitHubApp(app_id={self.app_id}, api_url={self.api_url!r})"

    def installation_token(self, installation_id: int) -> str:
        """The master's own token (check runs, commits): every permission the App has."""
        return self._token(installation_id, None)

    def clone_token(self, installation_id: int) -> str:
        """A token for workers to clone with: ``contents: read`` only, so a worker that leaks
        it cannot write check runs or read anything but code. Cached like the master's."""
        return self._token(installation_id, {"contents": "read"})

    def _token(self, installation_id: int, permissions: dict[str, str] | None) -> str:
        key = (installation_id, tuple(sorted((permissions or {}).items())))
        with self._lock:
            tok = self._tokens.get(key)
            if tok is None or tok.expires_at - self.refresh_margin <= self._clock():
                auth = self._integration.get_access_token(installation_id, permissions=permissions)
                expires = auth.expires_at
                if expires is None:
                    exp = self._clock() + 3600
                else:
                    if expires.tzinfo is None:
                        expires = expires.replace(tzinfo=timezone.utc)
                    exp = expires.timestamp()
                tok = _Token(auth.token, exp)
                self._tokens[key] = tok
                if permissions is None:
                    self._clients.pop(installation_id, None)
                self.tokens_fetched += 1
            return tok.token

    def client(self, installation_id: int) -> Github:
        token = self.installation_token(installation_id)
        with self._lock:
            gh = self._clients.get(installation_id)
            if gh is None:
                gh = Github(auth=Auth.Token(token), base_url=self.api_url, retry=_retry(), lazy=True, **self._pace)
                self._clients[installation_id] = gh
            return gh

    def repo(self, installation_id: int, full_name: str):
        return self.client(installation_id).get_repo(full_name)

    def commit_message(self, installation_id: int, full_name: str, sha: str) -> str:
        return self.repo(installation_id, full_name).get_commit(sha).commit.message

    # -- check runs ---------------------------------------------------------------------
    def create_check_run(self, installation_id: int, full_name: str, *, name: str, head_sha: str,
                         status: str, details_url: str | None = None, external_id: str | None = None,
                         output: dict[str, Any] | None = None, **fields: Any) -> CheckRun:
        """POST a check run; ``fields`` are further check-run fields (``conclusion``,
        ``started_at``, ``completed_at``), None ones left out: a run can be created directly
        in the state it should show."""
        kwargs: dict[str, Any] = {"name": name, "head_sha": head_sha, "status": status}
        if _web_link(details_url):
            kwargs["details_url"] = details_url
        if external_id:
            kwargs["external_id"] = external_id
        if output:
            kwargs["output"] = output
        kwargs.update({k: v for k, v in fields.items() if v is not None})
        return self.repo(installation_id, full_name).create_check_run(**kwargs)

    def find_check_run(self, installation_id: int, full_name: str, name: str, head_sha: str) -> CheckRun | None:
        """The newest check run ``name`` on ``head_sha`` (one created by an attempt whose answer
        was lost, or before the master's state knew its id)."""
        runs = self.repo(installation_id, full_name).get_commit(head_sha).get_check_runs(check_name=name)
        return next(iter(runs), None)

    def update_check_run(self, run: CheckRun, **fields: Any) -> None:
        if not _web_link(fields.get("details_url")):
            fields.pop("details_url", None)
        run.edit(**{k: v for k, v in fields.items() if v is not None})

    def update_check_run_by_id(self, installation_id: int, full_name: str, run_id: int, **fields: Any) -> None:
        """PATCH check run ``run_id`` (one request: the run object is not fetched first)."""
        self.update_check_run(self.repo(installation_id, full_name).get_check_run(int(run_id)), **fields)


def _web_link(url: str | None) -> bool:
    """GitHub accepts only http(s) details URLs (a Buildbot without buildbotURL has none)."""
    return bool(url) and url.startswith(("http://", "https://"))


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
