"""End to end with the Docker runner: a PR whose Dockerfile does not build gets a failing
check run with the cause, and its reserved use of the test set is released (nothing was
scored). A good model runs sandboxed in Docker to a success on the same master."""

from __future__ import annotations

import pytest

from support.dockerd import docker_unavailable
from support.github_sim_world import running_world
from support.models import DEFAULT_BASE_IMAGE

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture(scope="module")
def world(tmp_path_factory, service_keys):
    with running_world(tmp_path_factory.mktemp("ghd"), service_keys,
                       needs=docker_unavailable(DEFAULT_BASE_IMAGE), workers=1, runner="docker") as w:
        yield w


def test_broken_dockerfile_fails_with_cause_and_spends_nothing(world):
    from easeml_buildbot.custody.ledger import Ledger

    repo = world.repo("broken", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1",
                             dockerfile="FROM easeml/does-not-exist:never\nRUN false\n")
    world.send("pull_request", world.pr_payload("broken", repo, 1, head.sha))
    world.wait_completed("broken", timeout=240)
    # queued first only when the build waited for a worker, in_progress only when it ran
    # longer than the started grace (master.checkruns)
    assert world.statuses("broken") in ([("create", "queued", None), ("update", "in_progress", None),
                                         ("update", "completed", "failure")],
                                        [("create", "in_progress", None), ("update", "completed", "failure")],
                                        [("create", "queued", None), ("update", "completed", "failure")],
                                        [("create", "completed", "failure")])
    out = [b for _, b in world.calls("broken") if b.get("conclusion")][-1]["output"]
    assert out["title"] == "The model could not be evaluated"
    assert "build" in out["summary"].lower() and "No use of the test set was spent" in out["summary"]
    led = Ledger(world.ledger_url)
    state = led.state("acme/broken", repo.dataset_id)
    assert state is not None and state.remaining == 8
    led.close()
    assert world.sim.errors() == []


def test_good_model_in_docker_passes(world):
    repo = world.repo("docker-pass", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    world.send("pull_request", world.pr_payload("docker-pass", repo, 1, head.sha))
    world.wait_completed("docker-pass", timeout=300)
    assert world.statuses("docker-pass")[-1][1:] == ("completed", "success")
