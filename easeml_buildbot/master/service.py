"""The master's shared state as one Buildbot service: the operator settings, the ledger and
the GitHub App.

``configure`` puts one :class:`EasemlService` first in ``c['services']``; steps, reporters,
the webhook handler, the outbox, the check-run reconciler and the metrics find it through
their master (:func:`easeml_service`), so a master process holds one ``Ledger`` (one
SQLAlchemy engine) and one ``GitHubApp`` (one token cache), and a reconfig with other
settings replaces them: no module-level caches.

``checkConfig`` reports every problem of the settings through Buildbot's ``config.error``
(``Settings.load(..., strict=False)`` collected them, each naming the file and the key), so
``buildbot checkconfig`` and ``buildbot start`` list them together with Buildbot's own and
the other services' problems.
"""

from __future__ import annotations

import threading
from typing import Any

from buildbot import config
from buildbot.util import service

from easeml_buildbot.master.settings import Settings

NAME = "easeml"


class EasemlService(service.BuildbotService):
    """Owns ``settings``, :meth:`ledger` and :meth:`app` for one master process.

    ``ledger()`` and ``app()`` are opened on first use and may be called from any thread
    (build steps and mail read the ledger in the reactor's thread pool)."""

    name = NAME
    # reconfigured before the services that read its settings and ledger (default 128)
    reconfig_priority = 900

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        # Buildbot starts new services in no fixed order: one started before this one's
        # reconfigService may already look the settings up
        self.settings = settings
        self._lock = threading.Lock()
        self._ledger: Any = None
        self._app: Any = None

    def checkConfig(self, settings: Settings, **kwargs: Any) -> None:
        for problem in settings.problems:
            config.error(problem)

    def reconfigService(self, settings: Settings, **kwargs: Any) -> None:
        old, self.settings = self.settings, settings
        with self._lock:
            if old.ledger_url != settings.ledger_url:
                self._ledger = None  # builds in flight keep the one they hold
            if _app_key(old) != _app_key(settings):
                self._app = None

    def startService(self):
        from easeml_buildbot.master import buildbot_fixes

        buildbot_fixes.apply_to_master(self.master)
        return super().startService()

    def stopService(self):
        with self._lock:
            led, self._ledger = self._ledger, None
        if led is not None:
            led.close()
        return super().stopService()

    def ledger(self):
        """The master's ``Ledger`` at ``settings.ledger_url`` (blocking on first use: call in a thread)."""
        with self._lock:
            if self._ledger is None:
                from easeml_buildbot.custody.ledger import Ledger

                self._ledger = Ledger(self.settings.ledger_url)
            return self._ledger

    def app(self):
        """The GitHub App (installation tokens, cached until near expiry) of ``settings.github``."""
        with self._lock:
            if self._app is None:
                from easeml_buildbot.master.github_app import GitHubApp

                gh = self.settings.github
                self._app = GitHubApp(gh.app_id, gh.private_key(), gh.api_url, gh.token_refresh_margin,
                                      seconds_between_requests=gh.seconds_between_requests,
                                      seconds_between_writes=gh.seconds_between_writes)
            return self._app


def _app_key(s: Settings) -> tuple:
    gh = s.github
    return (gh.app_id, gh.api_url, gh.private_key_path, gh.token_refresh_margin,
            gh.seconds_between_requests, gh.seconds_between_writes)


def easeml_service(master: Any) -> EasemlService:
    """The master's :class:`EasemlService` (``configure`` always adds one).

    Buildbot adds the new services of a configuration in no fixed order, so one that starts
    first finds it in the configuration being applied (the very instance about to be added;
    its ``settings`` are set, its ledger and App open on first use)."""
    svc = master.service_manager.namedServices.get(NAME)
    if svc is None:
        svc = getattr(getattr(master, "config", None), "services", {}).get(NAME)
    if svc is None:
        raise LookupError(f"no {NAME!r} service: configure() adds EasemlService to c['services']")
    return svc
