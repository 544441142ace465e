"""The Buildbot side of easeml-buildbot: ``configure(c, settings)`` fills a BuildmasterConfig.

``master/master.cfg`` is three lines::

    from easeml_buildbot.master import Settings, configure
    c = BuildmasterConfig = {}
    configure(c, Settings.load(os.path.join(basedir, "easeml.toml"), strict=False))

Everything else (hook, builder, reporters) is derived from the settings, so the demo,
docker-compose and the tests all run the same configuration. The settings, the ledger and
the GitHub App belong to one service, ``EasemlService`` (``master/service.py``), that the
other parts find through their master; its ``checkConfig`` reports the settings' problems
(``strict=False`` keeps them in ``settings.problems``) with every other configuration
error, all at once.
"""

from __future__ import annotations

import os
from typing import Any

from easeml_buildbot.master.settings import (GitHubSettings, LocalSettings, Settings, SettingsError,
                                             SmtpSettings, WorkerSettings)

__all__ = ["configure", "Settings", "SettingsError", "WorkerSettings", "GitHubSettings",
           "LocalSettings", "SmtpSettings", "BUILDER_NAME"]

BUILDER_NAME = "easeml"


def sqlite_engine_kwargs() -> dict[str, Any]:
    """Buildbot 4.3 gives a SQLite file ``NullPool``: every query opens a connection and
    closes it, and closing the last connection to a WAL database checkpoints it (fsync) and
    deletes the WAL. A build makes a few hundred queries: that was half the master's CPU per
    trivial build (1.5 s, now 0.8 s) and ~40 % of its build time (benchmarks/bench_master.py). SQLAlchemy 2's own
    default for a SQLite file is a ``QueuePool``: keep connections open. Buildbot runs SQLite
    queries in one thread; a connection is only ever used by one thread at a time (the pool
    checks it out), so ``check_same_thread`` may be off. Durability is unchanged (WAL,
    ``synchronous`` as before)."""
    from sqlalchemy.pool import QueuePool

    return {"poolclass": QueuePool, "connect_args": {"check_same_thread": False}}


def _sqlite_file(url: str) -> bool:
    """Buildbot's own test for a SQLite file (``special_case_sqlite``: a database name), an
    in-memory database excepted; the URL's spelling (driver, query) does not matter."""
    from sqlalchemy.engine import make_url

    return make_url(url).database not in (None, "", ":memory:")


def configure(c: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from buildbot.plugins import changes, schedulers, util, worker

    from easeml_buildbot.master import buildbot_fixes, gpus, www_limits
    from easeml_buildbot.master.console import ConsoleReporter
    from easeml_buildbot.master.factory import make_factory
    from easeml_buildbot.master.service import EasemlService

    buildbot_fixes.apply()
    www_limits.install()  # request bodies over GitHub's 25 MB are refused before being read

    c.setdefault("buildbotNetUsageData", None)
    c["title"] = settings.title
    c["titleURL"] = settings.buildbot_url
    c["buildbotURL"] = settings.buildbot_url
    c["db"] = {"db_url": settings.db_url}
    if not settings.db_url.startswith("sqlite"):
        # a pooled connection a database restart cut is replaced at checkout; without this
        # Buildbot 4.3 fails the next query on each one (it retries no PostgreSQL disconnect),
        # e.g. the first webhook after the restart is answered 500
        c["db"]["engine_kwargs"] = {"pool_pre_ping": True}
    elif _sqlite_file(settings.db_url):
        c["db"]["engine_kwargs"] = sqlite_engine_kwargs()
    c["protocols"] = {"pb": {"port": _endpoint(settings, settings.worker_port)}}
    c["workers"] = [worker.Worker(w.name, w.password, max_builds=w.max_builds) for w in settings.workers]
    c["builders"] = [util.BuilderConfig(name=BUILDER_NAME, workernames=[w.name for w in settings.workers],
                                        factory=make_factory(settings), collapseRequests=False,
                                        canStartBuild=gpus.can_start_build)]
    # first: the others look it up (settings, ledger, GitHub App) when they start
    services: list[Any] = [EasemlService(settings), ConsoleReporter()]
    www: dict[str, Any] = {"port": _endpoint(settings, settings.www_port),
                           "plugins": {}, "change_hook_dialects": {}}
    if settings.forge == "github":
        from easeml_buildbot.master.checks import CheckRunReporter
        from easeml_buildbot.master.hook import GitHubAppHook

        www["change_hook_dialects"]["github"] = {"custom_class": GitHubAppHook}
        c["change_source"] = []
        c["schedulers"] = [schedulers.AnyBranchScheduler(
            name="easeml-pull-requests", builderNames=[BUILDER_NAME], treeStableTimer=None,
            change_filter=util.ChangeFilter(category="pull"))]
        from easeml_buildbot.master.checkruns import CheckRunReconciler

        # the reconciler owns the GitHub thread pool (the hook reads commit messages in it too)
        services.append(CheckRunReconciler())
        services.append(CheckRunReporter(check_name=settings.github.check_name))
    else:
        c["change_source"] = [changes.GitPoller(
            repourl=settings.local.repo, branches=[settings.local.branch], pollInterval=settings.local.poll_interval,
            project=settings.local.project, category="local", workdir=os.path.abspath("gitpoller-work"),
            pollAtLaunch=True)]
        c["schedulers"] = [schedulers.SingleBranchScheduler(
            name="easeml-local", builderNames=[BUILDER_NAME], treeStableTimer=None,
            change_filter=util.ChangeFilter(category="local", branch=settings.local.branch),
            properties={"easeml_repo": settings.local.project})]
    c["schedulers"].append(schedulers.ForceScheduler(name="force", builderNames=[BUILDER_NAME],
                                                     properties=[util.StringParameter(name="easeml_repo",
                                                                                      default=settings.local.project)]))
    if settings.email_enabled and not settings.problems:
        # (with problems the EasemlService reports them; a notifier made of the rejected
        # values would only repeat them)
        from easeml_buildbot.master.mail import make_email_reporters

        # with ``c``: the SMTP password becomes a Buildbot secret, never a plain argument
        services.extend(make_email_reporters(settings, c))
    if settings.metrics_port:
        from easeml_buildbot.master.metrics import MetricsService

        services.append(MetricsService(_endpoint(settings, settings.metrics_port)))
    c["services"] = list(c.get("services", [])) + services
    # several masters (mq_router_url): multiMaster + WAMP MQ, failover time, one report per event
    from easeml_buildbot.master.cluster import configure_cluster

    configure_cluster(c, settings)
    # Forcing, stopping or rebuilding a build spends or wastes a use of a test set: only the
    # operator's admin account may (nobody, when none is configured). Reading stays open.
    if settings.admin_user:
        www["auth"] = util.UserPasswordAuth({settings.admin_user: settings.admin_password})
    www["authz"] = util.Authz(
        allowRules=[util.AnyControlEndpointMatcher(role="admins")],
        roleMatchers=[util.RolesFromUsername(roles=["admins"],
                                             usernames=[settings.admin_user] if settings.admin_user else [])])
    c["www"] = www
    return c


def _endpoint(settings: Settings, port: int) -> str:
    if settings.bind_address in ("", "0.0.0.0", "*"):
        return f"tcp:{port}"
    return f"tcp:{port}:interface={settings.bind_address}"
