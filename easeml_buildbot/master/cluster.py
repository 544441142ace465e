"""Several masters on one database: Buildbot's ``multiMaster`` with the WAMP message queue.

Set ``mq_router_url`` (a crossbar router, ``crossbar/config.json``) and every master of the
service shares Buildbot's PostgreSQL database and the ledger's, and publishes its events
through the router. Buildbot then does the distribution itself: any master's webhook adds the
change, the one master holding a scheduler (a clustered service) creates the build request,
any master with a free worker claims it, and when a master stops heartbeating for
``master_expiry`` the others mark it dead, finish its running builds as RETRY, unclaim its
build requests and take over its schedulers (``buildbot.data.masters``).

Two things Buildbot leaves to the configuration, done here:

* **Failover time.** Buildbot declares a master dead after 10 minutes without a heartbeat
  (``EXPIRE_MINUTES``, heartbeat every 60 s, an orphaned scheduler is picked up at the next
  5-minute poll). ``master_expiry`` sets the first, the heartbeat to a third of it (at most
  60 s) and the poll to half of it (at most 300 s): the defaults are Buildbot's.
* **One report per event.** With the WAMP MQ every master receives every event, so every
  master's reporters would report every build: two ``queued`` check runs per pull request,
  every check-run update twice. A reporter here acts only on the events its master owns: a
  build's events on the master running it (``masterid``), a build request's on the master
  that holds the scheduler creating build requests (it published them). The mail outbox is
  keyed per build as well, so a mail is stored once even if two masters rendered it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot.util import service

#: The scheduler whose master reports build-request events (set by ``configure``).
_state: dict[str, Any] = {"scheduler": None, "patched": False}


def configure_cluster(c: dict[str, Any], settings: Any, scheduler_name: str) -> None:
    """Fill ``c`` for several masters when ``settings.mq_router_url`` is set; else leave it."""
    if not settings.mq_router_url:
        return
    c["multiMaster"] = True
    c["mq"] = {"type": "wamp", "router_url": settings.mq_router_url, "realm": settings.mq_realm}
    _state["scheduler"] = scheduler_name
    _set_failover(settings.master_expiry)
    _reporters_on_own_events()
    _take_over_dead_masters()
    c.setdefault("services", [])
    c["services"] = list(c["services"]) + [ClusterService(heartbeat=heartbeat_interval(settings.master_expiry))]


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
        name = _state["scheduler"]
        sched = master.scheduler_manager.namedServices.get(name) if name else None
        return sched is not None and sched.isActive()
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
