"""Several masters for real (issue 14): a crossbar router, one PostgreSQL for Buildbot and the
ledger, two Buildbot masters (``mq_router_url`` set) behind one webhook URL, one worker on
each, the GitHub stand-in. Webhooks alternate between the masters like a load balancer.

* PRs spread over both masters: each is built once, one check run each, one use each.
* kill -9 of the master running a build, mid-model: the other master declares it dead after
  ``master_expiry``, retries the build request on its own worker, the lost attempt's use is
  given back and the retry's is the only one spent, and the check run completes.
"""

from __future__ import annotations

import time

import pytest
from buildbot.process.results import RETRY, SUCCESS

from support.crossbar import crossbar_router  # noqa: F401 (session fixture)
from support.github_sim import fixtures_available
from support.github_sim_world import require_worker_cli
from support.models import PREDICT_PY
from support.multimaster import start_cluster, uses_of
from support.postgres import postgres_server  # noqa: F401 (session fixture)

pytestmark = pytest.mark.e2e

EXPIRY = 12  # seconds without a heartbeat before a master is declared dead (Buildbot: 600)

PHASES = ("queued", "in_progress", "completed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, service_keys, postgres_server, crossbar_router):  # noqa: F811
    reason = fixtures_available()
    if reason:
        pytest.skip(reason)
    require_worker_cli()
    world, stop = start_cluster(tmp_path_factory.mktemp("mm"), service_keys, postgres_server, crossbar_router,
                                masters=2, workers_per_master=1, master_expiry=EXPIRY)
    try:
        yield world
    finally:
        stop()


def test_prs_over_both_masters_each_evaluated_once(cluster):
    world = cluster
    ids = world.master_ids()
    assert len(ids) == 2 and len(set(ids.values())) == 2, ids  # two masters, unique names
    slow = PREDICT_PY.replace("def main():\n", "def main():\n    import time\n    time.sleep(3)\n", 1)
    prs = {}
    for i in range(4):
        name = f"spread{i}"
        repo = world.repo(name, quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
        head = repo.commit_model(quality=0.97, branch="pr-1", predict_py=slow)
        prs[name] = (repo, head)
        assert world.send("pull_request", world.pr_payload(name, repo, 1, head.sha), master=i % 2)[0] == 200
    for name in prs:
        world.wait_completed(name, timeout=240)
    time.sleep(2)  # a duplicate report would land right after the first
    builds = [b for b in world.builds() if b["complete"]]
    assert len(builds) == 4, builds
    assert {b["masterid"] for b in builds} == set(ids), "both masters ran builds"
    for name, (repo, head) in prs.items():
        # one check run, its states in order; the reconciler writes the newest desired state, so
        # a run whose build started before its create went out is created in_progress directly
        statuses = world.statuses(name)
        assert statuses[-1][1:] == ("completed", "success"), (name, statuses)
        assert [v for v, _s, _c in statuses] == ["create"] + ["update"] * (len(statuses) - 1), (name, statuses)
        ranks = [PHASES.index(s) for _v, s, _c in statuses]
        assert ranks == sorted(ranks), (name, statuses)
        uses, state = uses_of(world, name, repo)
        assert [(u.commit, u.state, u.verdict) for u in uses] == [(head.sha, "committed", "pass")], uses
        assert state.remaining == 7
    assert world.sim.errors() == []


def test_kill9_master_mid_build_other_master_retries_use_counted_once(cluster):
    world = cluster
    name = "failover"
    repo = world.repo(name, quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    slow = PREDICT_PY.replace("def main():\n", "def main():\n    import time\n    time.sleep(15)\n", 1)
    head = repo.commit_model(quality=0.97, branch="pr-1", predict_py=slow)
    assert world.send("pull_request", world.pr_payload(name, repo, 1, head.sha))[0] == 200

    def running():  # the build has reserved its use: the model is running with the features
        uses, _ = uses_of(world, name, repo)
        return [u for u in uses if u.state == "reserved"] and [b for b in world.builds() if not b["complete"]]

    world.wait(running, "the build to reserve its use", timeout=120)
    build = [b for b in world.builds() if not b["complete"]][0]
    ids = world.master_ids()
    victim = next(i for i, m in enumerate(world.masters) if str(m.master_dir) in ids[build["masterid"]])
    world.masters[victim].kill_master()
    survivor = world.masters[1 - victim]

    world.wait_completed(name, timeout=EXPIRY * 4 + 120)
    builds = sorted(survivor.api("builds", order="buildid"), key=lambda b: b["buildid"])
    mine = [b for b in builds if b["buildrequestid"] == build["buildrequestid"]]
    assert [(b["masterid"], b["results"]) for b in mine][0] == (build["masterid"], RETRY), mine
    assert len(mine) == 2 and mine[-1]["masterid"] != build["masterid"] and mine[-1]["results"] == SUCCESS, mine
    uses, state = uses_of(world, name, repo)
    assert [u.state for u in uses] == ["released", "committed"], uses  # the lost attempt gave its use back
    assert uses[-1].verdict == "pass" and state.uses == 1 and state.remaining == 7, state
    statuses = world.statuses(name)
    assert statuses[0][0] == "create" and statuses[-1][1:] == ("completed", "success"), statuses
    assert sum(1 for v, _s, _c in statuses if v == "create") == 1, statuses  # the same check run
    assert world.sim.errors() == []

