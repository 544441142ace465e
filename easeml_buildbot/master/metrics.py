"""What an operator watches: Prometheus ``/metrics`` and a ``/healthz`` probe, per master.

Why a service on its own port and not a page of Buildbot's www: the www port is the one
developers reach (UI, REST API, webhooks). The metrics port is the operator's: compose and
Kubernetes probe it inside the pod/network and it need not be published. It is read-only
(GET only) and shows nothing a developer may not see anyway: builds are counted by
``easeml_status`` only (never by verdict, which under adaptivity ``none`` goes to the owners
alone), and per test set only the uses left, which every check run states.

Counters are per master process (Prometheus sums them over masters); builds are counted by
the master that ran them, so a multi-master setup counts each build once. Gauges that need a
database query (queue depth, the check-run and mail backlogs, uses left) are refreshed at most every ``cache_seconds`` however
often the endpoint is scraped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.internet import defer, endpoints, threads
from twisted.python import log
from twisted.web import resource, server

from buildbot import config
from buildbot.util import service

from easeml_buildbot.master.status import STATUSES

#: the registry this module's metrics live in (not the global one: no process/platform
#: collectors with host details, and a test can read it directly)
REGISTRY = CollectorRegistry(auto_describe=True)

BUILDS = Counter("easeml_builds", "Finished evaluation builds run by this master, by easeml_status "
                 "(cancelled: stopped before a status).", ["status"], registry=REGISTRY)
GITHUB_ERRORS = Counter("easeml_github_errors", "GitHub API calls that failed (after retries).",
                        registry=REGISTRY)
GITHUB_RETRIES = Counter("easeml_github_retries", "GitHub API requests retried on a transient "
                         "error (connection, 5xx).", registry=REGISTRY)
SMTP_ERRORS = Counter("easeml_smtp_errors", "SMTP delivery attempts that failed.", registry=REGISTRY)
SMTP_RETRIES = Counter("easeml_smtp_retries", "SMTP deliveries attempted again after a failure.",
                       registry=REGISTRY)

for _status in STATUSES + ("cancelled", "other"):  # every series exists from the start (0)
    BUILDS.labels(_status)

PROBE_TIMEOUT = 5.0  # seconds a health check may wait for a database


class _Gauges:
    """Collector for the database-backed gauges: yields the last refreshed values."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.check_runs: int | None = None
        self.outbox: int | None = None
        self.testsets: list[Any] = []

    def collect(self):
        g = GaugeMetricFamily("easeml_pending_build_requests",
                              "Build requests waiting for a worker (all masters).")
        if self.pending is not None:
            g.add_metric([], self.pending)
        yield g
        for name, doc, value in (
                ("easeml_check_runs_pending", "Check runs whose desired state GitHub does not show yet "
                 "(the reconciler's backlog, all masters).", self.check_runs),
                ("easeml_outbox_pending", "Mails in the outbox waiting to be delivered (all masters).",
                 self.outbox)):
            g = GaugeMetricFamily(name, doc)
            if value is not None:  # unknown (the database is unreachable): no sample
                g.add_metric([], value)
            yield g
        left = GaugeMetricFamily("easeml_testset_uses_left",
                                 "Uses of a test set left (0 once retired).", labels=["repo", "dataset"])
        retired = GaugeMetricFamily("easeml_testset_retired", "1 when a test set is retired.",
                                    labels=["repo", "dataset"])
        for e in self.testsets:
            left.add_metric([e.repo, e.short_id], 0 if e.retired else e.remaining)
            retired.add_metric([e.repo, e.short_id], 1 if e.retired else 0)
        yield left
        yield retired


class MetricsService(service.BuildbotService):
    """Serves ``/metrics`` and ``/healthz`` on ``endpoint`` (a Twisted server endpoint string)."""

    name = "easeml-metrics"

    def checkConfig(self, endpoint: str, cache_seconds: float = 15.0) -> None:
        if not endpoint:
            config.error("easeml metrics: an endpoint is needed (e.g. tcp:8011)")
        if cache_seconds < 0:
            config.error("easeml metrics: cache_seconds must be >= 0")

    @defer.inlineCallbacks
    def reconfigService(self, endpoint: str, cache_seconds: float = 15.0):
        self.cache_seconds = float(cache_seconds)
        if getattr(self, "_gauges", None) is None:
            self._gauges = _Gauges()
            REGISTRY.register(self._gauges)
            self._refreshed = float("-inf")
            self._refreshing: defer.Deferred | None = None
            self._stores: tuple[Any, Any] | None = None
        if endpoint != getattr(self, "_endpoint", None):
            if getattr(self, "_port", None) is not None:
                yield self._port.stopListening()
            root = resource.Resource()
            root.putChild(b"metrics", _Metrics(self))
            root.putChild(b"healthz", _Health(self))
            self._port = yield endpoints.serverFromString(self.master.reactor, endpoint).listen(
                server.Site(root))
            self._endpoint = endpoint
            log.msg(f"easeml: metrics and health on {endpoint}")

    @defer.inlineCallbacks
    def startService(self):
        yield super().startService()
        self._consumer = yield self.master.mq.startConsuming(self._build_finished,
                                                             ("builds", None, "finished"))

    @defer.inlineCallbacks
    def stopService(self):
        if getattr(self, "_consumer", None) is not None:
            self._consumer.stopConsuming()
            self._consumer = None
        if getattr(self, "_port", None) is not None:
            yield self._port.stopListening()
            self._port, self._endpoint = None, None
        if getattr(self, "_gauges", None) is not None:
            REGISTRY.unregister(self._gauges)
            self._gauges = None
        yield super().stopService()

    # -- builds ----------------------------------------------------------------------
    @defer.inlineCallbacks
    def _build_finished(self, key, build):
        if build.get("masterid") != self.master.masterid:
            return  # another master's build (multi-master MQ): that master counts it
        try:
            props = yield self.master.data.get(("builds", build["buildid"], "properties"))
        except Exception as exc:  # noqa: BLE001 - a metric must never break the master
            log.msg(f"easeml metrics: properties of build {build.get('buildid')}: {exc}")
            props = {}
        status = (props or {}).get("easeml_status", (None,))[0]
        if status is None and build.get("results") == 6:  # CANCELLED before any status
            status = "cancelled"
        BUILDS.labels(status if status in STATUSES else "other").inc()

    # -- database-backed gauges ----------------------------------------------------
    def refresh(self):
        """Bring the gauges up to date unless they are younger than ``cache_seconds``; one
        refresh at a time, concurrent scrapes share it."""
        if time.monotonic() - self._refreshed < self.cache_seconds:
            return defer.succeed(None)
        if self._refreshing is None:
            self._refreshing = self._refresh()

            def done(r):
                self._refreshing = None
                return r
            self._refreshing.addBoth(done)
        d = defer.Deferred()
        self._refreshing.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    @defer.inlineCallbacks
    def _refresh(self):
        from easeml_buildbot.master.service import easeml_service

        svc = easeml_service(self.master)
        try:
            pending = yield self.master.db.buildrequests.getBuildRequests(claimed=False, complete=False)
            self._gauges.pending = len(pending)
        except Exception as exc:  # noqa: BLE001
            log.msg(f"easeml metrics: pending build requests: {exc}")
            self._gauges.pending = None
        try:
            self._gauges.check_runs, self._gauges.outbox = yield threads.deferToThread(self._backlogs)
        except Exception as exc:  # noqa: BLE001
            log.msg(f"easeml metrics: check-run and outbox backlog: {type(exc).__name__}")
            self._gauges.check_runs = self._gauges.outbox = None
        try:
            self._gauges.testsets = yield threads.deferToThread(
                lambda: svc.ledger().entries())
        except Exception as exc:  # noqa: BLE001
            log.msg(f"easeml metrics: ledger entries: {type(exc).__name__}")
            self._gauges.testsets = []
        self._refreshed = time.monotonic()

    def _backlogs(self) -> tuple[int, int]:
        """(check runs not yet as desired on GitHub, mails not yet delivered); blocking."""
        from easeml_buildbot.master.checkruns import CheckRunStore
        from easeml_buildbot.master.outbox import Outbox
        from easeml_buildbot.master.service import easeml_service

        led = easeml_service(self.master).ledger()
        if self._stores is None or self._stores[0] is not led:  # (a reconfig may bring another ledger)
            self._stores = (led, CheckRunStore(led.engine), Outbox(led))  # creating either makes its table
        _led, check_runs, outbox = self._stores
        return check_runs.depth(), outbox.depth()

    # -- health -------------------------------------------------------------------
    @defer.inlineCallbacks
    def health(self):
        """``{"master": ..., "db": ..., "ledger": ...[, "mq": ...]}``, each "ok" or why not."""
        from easeml_buildbot.master.service import easeml_service

        svc = easeml_service(self.master)
        out = {"master": "ok" if self.master.running else "stopping"}

        def probe(d):
            d.addTimeout(PROBE_TIMEOUT, self.master.reactor)
            d.addCallbacks(lambda _: "ok", lambda f: f"unreachable ({f.type.__name__})")
            return d

        db = probe(self.master.db.pool.do(lambda conn: conn.exec_driver_sql("SELECT 1").fetchall()))
        led = probe(threads.deferToThread(lambda: svc.ledger().instance_id()))
        out["db"] = yield db
        out["ledger"] = yield led
        from easeml_buildbot.master.cluster import mq_state

        mq = mq_state(self.master)
        if mq is not None:  # several masters: a master without the router schedules nothing
            out["mq"] = mq
        return out


def _answer(request, code: int, content_type: bytes, body: bytes) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return  # the prober hung up (timeout): nothing to write to
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, svc: MetricsService) -> None:
        super().__init__()
        self.svc = svc

    def render_GET(self, request):
        def failed(f):
            log.err(f, "easeml metrics")
            _answer(request, 500, b"text/plain", b"metrics failed; see the master log\n")
        self.svc.refresh().addCallback(
            lambda _: _answer(request, 200, CONTENT_TYPE_LATEST.encode(), generate_latest(REGISTRY))
        ).addErrback(failed)
        return server.NOT_DONE_YET


class _Health(resource.Resource):
    isLeaf = True

    def __init__(self, svc: MetricsService) -> None:
        super().__init__()
        self.svc = svc

    def render_GET(self, request):
        def write(state):
            ok = all(v == "ok" for v in state.values())
            _answer(request, 200 if ok else 503, b"application/json", json.dumps(state).encode() + b"\n")

        def failed(f):
            log.err(f, "easeml health")
            _answer(request, 503, b"application/json", b'{"master": "error"}\n')
        self.svc.health().addCallback(write).addErrback(failed)
        return server.NOT_DONE_YET
