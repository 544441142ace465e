"""Several real Buildbot masters as one service: a crossbar router, one PostgreSQL database
for Buildbot and the ledger, N masters (``mq_router_url`` set) each with its own workers,
all wired to one GitHub stand-in. Built from BuildbotHarness and the GitHub world, not a copy.

    from support.crossbar import crossbar_router       # noqa: F401 (session fixtures)
    from support.postgres import postgres_server       # noqa: F401
    world, stop = start_cluster(tmp, service_keys, postgres_server, crossbar_router,
                                masters=2, workers_per_master=2, master_expiry=15)
    world.send("pull_request", payload, master=1)      # a webhook to master 1 (default: round robin)
    world.masters[0].kill_master()                     # kill -9
    world.builds()                                     # every build, from any live master
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.buildbot_harness import BuildbotHarness, HarnessError
from support.github_sim import GitHubSim
from support.github_sim_world import SECRET, GitHubWorld, github_app_settings


@dataclass
class ClusterWorld(GitHubWorld):
    masters: list[BuildbotHarness] = field(default_factory=list)
    router: Any = None
    _rr: Any = field(default_factory=lambda: itertools.count())

    def send(self, event: str, payload: dict[str, Any], master: int | None = None, **kw: Any) -> tuple[int, str]:
        """Deliver to ``master`` (default: the next live one, round robin), like a load balancer."""
        kw.setdefault("secret", SECRET)
        if master is None:
            live = self.live_indices()
            master = live[next(self._rr) % len(live)]
        return self.masters[master].post_webhook(event, payload, **kw)

    def live_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.masters) if m.master_proc.poll() is None]

    def live(self) -> BuildbotHarness:
        return self.masters[self.live_indices()[0]]

    def builds(self) -> list[dict[str, Any]]:
        return self.live().api("builds", order="buildid")

    def master_ids(self) -> dict[int, str]:
        """Buildbot's masters table: masterid -> name (hostname:basedir)."""
        return {m["masterid"]: m["name"] for m in self.live().api("masters")}

    def logs(self) -> str:
        return "\n".join(f"===== master {i}\n{m.master_log()[-6000:]}" for i, m in enumerate(self.masters))

    def wait(self, cond: Any, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def wait_completed(self, name: str, count: int = 1, timeout: float = 180) -> None:
        self.wait(lambda: sum(1 for _, s, _c in self.statuses(name) if s == "completed") >= count,
                  f"{count} completed check runs of {name}: {self.statuses(name)}", timeout)


def uses_of(world: GitHubWorld, name: str, repo: Any) -> tuple[int, Any]:
    """The ledger's (uses, states) for test repository ``acme/<name>``."""
    from easeml_buildbot.custody.ledger import Ledger

    led = Ledger(world.ledger_url)
    try:
        return led.uses(f"acme/{name}", repo.dataset_id), led.state(f"acme/{name}", repo.dataset_id)
    finally:
        led.close()


def start_cluster(base: Path, keys: Any, postgres: Any, router: Any, *, masters: int = 2,
                  workers_per_master: int = 2, master_expiry: float | None = None, runner: str = "process",
                  extra_settings: dict[str, Any] | None = None,
                  worker_env: dict[str, str] | None = None) -> tuple[ClusterWorld, Any]:
    """Start ``masters`` masters on one new database; each accepts every worker, runs its own."""
    sim, app_key = GitHubSim.with_new_app_key(app_id=4242)
    sim.start()
    db_url = postgres.create_database()
    extra = {"db_url": db_url, "mq_router_url": router.url, "mq_realm": router.realm, **(extra_settings or {})}
    if master_expiry is not None:
        extra["master_expiry"] = master_expiry
    settings, env = github_app_settings(sim, app_key, base, keys, runner=runner, ledger_url=db_url,
                                        extra_settings=extra, worker_env=worker_env)
    bbs = [BuildbotHarness(base / f"m{i + 1}", settings=settings, workers=workers_per_master, worker_env=env,
                           worker_prefix=f"m{i + 1}-worker") for i in range(masters)]
    for bb in bbs:
        for other in bbs:
            if other is not bb:
                bb.accept_workers(other.worker_passwords)
    try:
        for bb in bbs:  # one after the other: the first one's upgrade-master creates the schema
            bb.start()
    except BaseException:
        for bb in bbs:
            bb.stop()
        sim.stop()
        raise
    world = ClusterWorld(sim=sim, bb=bbs[0], keys=keys, base=base, ledger_url=db_url, masters=bbs, router=router)

    def stop() -> None:
        for bb in bbs:
            bb.stop()
        sim.stop()
    return world, stop


__all__ = ["ClusterWorld", "start_cluster", "uses_of", "HarnessError"]
