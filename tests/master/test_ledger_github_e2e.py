"""Concurrent duplicate deliveries against the GitHub App flavour (issue 11): a pull request's
``opened`` and a ``rerequested`` check run for the same head arrive together, with a real
master, two real workers (both builds run at once) and the GitHub stand-in. One use of the
test set is spent, and no check run of the head ends with anything but the real result."""

from __future__ import annotations

import threading

import pytest

from easeml_buildbot.custody.ledger import Ledger
from support.github_sim import fixtures_available
from support.github_sim_world import require_worker_cli, start_world
from support.models import PREDICT_PY

pytestmark = pytest.mark.e2e


def test_opened_and_rerequested_together_spend_one_use(tmp_path, service_keys):
    reason = fixtures_available()
    if reason:
        pytest.skip(reason)
    require_worker_cli()
    world, stop = start_world(tmp_path / "gh", service_keys, workers=2)
    try:
        repo = world.repo("twice", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
        slow = PREDICT_PY.replace("def main():\n", "def main():\n    import time\n    time.sleep(6)\n", 1)
        head = repo.commit_model(quality=0.97, branch="pr-1", predict_py=slow)
        opened = world.pr_payload("twice", repo, 1, head.sha)
        rerun = world.check_payload("check_run", "rerequested", "twice", repo, 1, head.sha)
        replies = []
        senders = [threading.Thread(target=lambda e=e, p=p: replies.append(world.send(e, p)))
                   for e, p in (("pull_request", opened), ("check_run", rerun))]
        for t in senders:
            t.start()
        for t in senders:
            t.join(60)
        assert [c for c, _ in replies] == [200, 200], replies
        builds = 2 - sum("no change found" in body for _, body in replies)
        world.bb.wait_for_builds(builds, timeout=240)
        assert world.sim.wait_for(lambda: [r["status"] for r in world.sim.check_runs_for(head.sha)] == ["completed"]
                                  and world.calls("twice")[-1][1].get("status") == "completed", timeout=120)
        led = Ledger(world.ledger_url)
        try:
            uses = led.uses("acme/twice", repo.dataset_id)
            left = led.state("acme/twice", repo.dataset_id).remaining
        finally:
            led.close()
        assert [(u.commit, u.state, u.verdict) for u in uses] == [(head.sha, "committed", "pass")], uses
        completed = [b for _, b in world.calls("twice") if b.get("status") == "completed"]
        # both builds report on the head's one check run; a result superseded by the newer
        # build's before it reached GitHub is not written at all
        assert 1 <= len(completed) <= builds
        (run,) = world.sim.check_runs_for(head.sha)
        assert run["status"] == "completed" and run["conclusion"] == "success", run
        assert {b["conclusion"] for b in completed} == {"success"}  # nothing clobbers the verdict
        for b in completed:
            assert f"Uses of the test set left:** {left}" in b["output"]["summary"]
        assert left == 7
    finally:
        stop()
