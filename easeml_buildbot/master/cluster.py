"""Several masters on one database: Buildbot's ``multiMaster`` with the WAMP message queue.

Set ``mq_router_url`` (a crossbar router, ``crossbar/config.json``) and every master of the
service shares Buildbot's PostgreSQL database and the ledger's, and publishes its events
through the router. Buildbot then does the distribution itself: any master's webhook adds the
change, the one master holding a scheduler (a clustered service) creates the build request,
any master with a free worker claims it, and when a master stops heartbeating for
``master_expiry`` the others mark it dead, finish its running builds as RETRY, unclaim its
build requests and take over its schedulers (``buildbot.data.masters``).

Four things Buildbot 4.3 leaves to the configuration or gets wrong, done here:

* **Reaching the router.** Buildbot's WAMP connector (autobahn's ``Service``, one
  ``TCPClient``) tries the router once at start: a master that starts before crossbar
  (compose starts them together) runs on without a message queue, healthy to every probe,
  and no change it sees or receives is ever scheduled. Here it connects with backoff until
  the router answers, ``/healthz`` says ``mq`` is not ok until then, and a master that later
  loses the router exits (Buildbot stops its services but leaves the process running: a
  zombie no supervisor restarts) so ``restart: unless-stopped`` brings it back.

* **Failover time.** Buildbot declares a master dead after 10 minutes without a heartbeat
  (``EXPIRE_MINUTES``, heartbeat every 60 s, an orphaned scheduler is picked up at the next
  5-minute poll). ``master_expiry`` sets the first, the heartbeat to a third of it (at most
  60 s) and the poll to half of it (at most 300 s): the defaults are Buildbot's.
* **One report per event.** With the WAMP MQ every master receives every event, so every
  master's reporters would report every build: two ``queued`` check runs per pull request,
  every check-run update twice. A reporter here acts only on a build's events, and only on
  the master running that build (``masterid``). Build-request events (the ``queued`` check
  run at scheduling time) are not reported at all with several masters: the master that
  scheduled a request is usually not the one that runs it, and its paced ``queued`` create
  raced the other master's start report, which then found no check run, made a second one
  and left the first ``queued`` forever. The running master creates the check run when the
  build starts (``queued`` then ``in_progress``, in order); a retry on another master finds
  it by name and head. The mail outbox is keyed per build as well.
* **Taking over a dead master's builds.** Its build requests stay claimed by it after another
  master's housekeeping (see ``_take_over_dead_masters``): released here, so the retry runs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot.util import service

_state: dict[str, Any] = {"patched": False, "housekeeping": False}


def configure_cluster(c: dict[str, Any], settings: Any) -> None:
    """Fill ``c`` for several masters when ``settings.mq_router_url`` is set; else leave it."""
    if not settings.mq_router_url:
        return
    c["multiMaster"] = True
    c["mq"] = {"type": "wamp", "router_url": settings.mq_router_url, "realm": settings.mq_realm}
    _set_failover(settings.master_expiry)
    _connect_until_the_router_answers()
    _reporters_on_own_events()
    _take_over_dead_masters()
    c.setdefault("services", [])
    c["services"] = list(c["services"]) + [ClusterService(heartbeat=heartbeat_interval(settings.master_expiry))]


def mq_state(master: Any) -> str | None:
    """``"ok"`` when the master's WAMP session has joined the router, else why not; ``None``
    with Buildbot's in-process MQ (one master: nothing to connect)."""
    mq = getattr(getattr(master, "config", None), "mq", None) or {}
    if mq.get("type") != "wamp":
        return None
    return "ok" if getattr(master.wamp, "service", None) is not None else f"connecting to {mq.get('router_url')}"


def _connect_until_the_router_answers() -> None:
    if _state.get("wamp"):
        return
    from autobahn.twisted.wamp import Service
    from autobahn.wamp.types import ComponentConfig
    from autobahn.websocket.util import parse_url as parse_ws_url
    from buildbot.wamp import connector
    from twisted.application.internet import ClientService, backoffPolicy
    from twisted.internet import endpoints, reactor
    from twisted.internet.ssl import optionsForClientTLS

    class RetryingService(Service):
        """autobahn's ``Service`` with a ``ClientService`` (retries with backoff, also when
        the router's name does not resolve yet) instead of a one-shot ``TCPClient``."""

        def setupService(self):
            is_secure, host, port, _resource, _path, _params = parse_ws_url(self.url)
            factory = self.factory(lambda: self.make(ComponentConfig(self.realm, self.extra)), url=self.url)
            endpoint = endpoints.HostnameEndpoint(reactor, host, port)
            if is_secure:
                endpoint = endpoints.wrapClientTLS(self.context_factory or optionsForClientTLS(host), endpoint)
            ClientService(endpoint, factory, retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=10.0)
                          ).setServiceParent(self)

    connector.WampConnector.serviceClass = RetryingService
    def on_leave(self, details):
        # Buildbot's own onLeave stops the master's services and leaves the process running;
        # stopping the reactor instead shuts down as SIGTERM would (once), and the process ends.
        if self.leaving:  # set by a normal shutdown: nothing to do then
            return
        log.msg(f"easeml: lost the WAMP router ({details}); exiting so the supervisor restarts this master")
        reactor.stop()

    connector.MasterService.onLeave = on_leave
    _state["wamp"] = True


def heartbeat_interval(expiry: float) -> float:
    return min(60.0, expiry / 3)


def _set_failover(expiry: float) -> None:
    from buildbot.data import masters

    masters.EXPIRE_MINUTES = expiry / 60  # read at each expireMasters() call
    # orphaned clustered services (schedulers, change sources) are looked for at this interval
    service.ClusteredBuildbotService.POLL_INTERVAL_SEC = min(300.0, expiry / 2)


class ClusterService(service.BuildbotService):
    """Sets the interval of the master's heartbeat (``masterActive`` + ``expireMasters``).

    The master starts its heartbeat timer after the configuration is applied, so setting the
    step here takes effect from the first beat."""

    name = "easeml-cluster"

    def checkConfig(self, heartbeat: float = 60.0, **kwargs):
        super().checkConfig(**kwargs)

    def reconfigService(self, heartbeat: float = 60.0, **kwargs):
        hb = getattr(self.master, "masterHeartbeatService", None)
        if hb is not None:
            hb.step = heartbeat
            call = getattr(hb, "_loop", None)
            if call is not None and call.running:  # a reconfig of a running master
                call.interval = heartbeat
        return super().reconfigService(**kwargs)


def _take_over_dead_masters() -> None:
    """Buildbot 4.3's housekeeping for a dead master (``_masterDeactivatedHousekeeping``) does
    not release what the dead master held when another master runs it:

    * ``db.buildrequests.unclaimBuildRequests`` deletes only claims of *the calling* master,
      so the dead master's build requests stay claimed by it: its builds are finished as
      RETRY and never retried (until the dead master itself comes back);
    * its workers stay listed as connected to it.

    After the original housekeeping, this releases the dead master's claims, announces them
    with the ``unclaimed`` event (every master's build request distributor waits for it:
    whichever master has a free worker claims the retry) and disconnects its workers."""
    if _state.get("housekeeping"):
        return
    from buildbot.data import masters

    original = masters.Master._masterDeactivatedHousekeeping

    @defer.inlineCallbacks
    def housekeeping(self, masterid, name):
        yield original(self, masterid, name)
        db = self.master.db
        brs = yield db.buildrequests.getBuildRequests(complete=False, claimed=masterid)
        brids = [br.buildrequestid for br in brs]
        if brids:
            yield db.buildrequests._unclaim_buildrequests_for_master(brids, masterid)
            log.msg(f"easeml: released build requests {brids} of dead master {name}")
            yield self.master.data.rtypes.buildrequest.generateEvent(brids, "unclaimed")
        workers = yield db.workers.getWorkers()
        for w in workers:
            if masterid in (w.connected_to or []):
                yield db.workers.workerDisconnected(workerid=w.id, masterid=masterid)

    masters.Master._masterDeactivatedHousekeeping = housekeeping
    _state["housekeeping"] = True


def owned_here(master: Any, key: tuple, msg: dict[str, Any]) -> bool:
    """Whether this master reports the event ``key`` (see the module docstring)."""
    if not getattr(getattr(master, "config", None), "multiMaster", False):
        return True  # one master: it owns everything
    kind = key[0] if key else None
    if kind == "builds":
        return msg.get("masterid") in (None, master.masterid)
    if kind == "buildrequests":
        return False  # reported by the master that runs the build, when it starts
    return True


def _reporters_on_own_events() -> None:
    if _state["patched"]:
        return
    from buildbot.reporters.base import ReporterBase

    original = ReporterBase._got_event

    def _got_event(self, key, msg):
        if not owned_here(self.master, key, msg):
            return defer.succeed(None)
        return original(self, key, msg)

    ReporterBase._got_event = _got_event
    _state["patched"] = True
