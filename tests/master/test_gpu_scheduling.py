"""GPU scheduling with a real Buildbot master and two real workers: worker1 has no GPU,
worker2 advertises one (EASEML_WORKER_GPUS through its settings file). A model with
``model.gpus: 1`` first lands on worker1 (this master prefers it), is queued again and runs on
worker2; with worker2 gone, the build fails saying why instead of waiting. (The model itself
uses no GPU: the process runner runs it; the device is untestable on this machine.) The
workers hold the private key only as EASEML_WORKER_KEY_B64."""

from __future__ import annotations

import base64
import time

import pytest

from support.buildbot_harness import BuildbotHarness
from support.github_sim_world import require_worker_cli
from support.models import make_model_repo

pytestmark = pytest.mark.e2e

# Deterministic for the test: the CPU worker is offered each request first (Buildbot's
# default picks at random), so the re-queue path is always exercised.
PREFER_WORKER1 = """
c["builders"][0].nextWorker = lambda builder, wfbs, request: sorted(wfbs, key=lambda w: w.worker.workername)[0]
"""


def _worker_names(bb: BuildbotHarness) -> dict[int, str]:
    return {w["workerid"]: w["name"] for w in bb.api("workers")}


def test_gpu_builds_go_to_gpu_workers_and_fail_clearly_without_one(tmp_path, service_keys):
    require_worker_cli()
    repo = make_model_repo(tmp_path / "repo", public_key=service_keys.public, quality=0.6,
                           condition="n - o > 0.02 +/- 0.1", reliability=0.95, adaptivity="full",
                           steps=4, model={"gpus": 1})
    settings = {"forge": "local", "ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite",
                "local": {"repo": str(repo.path), "branch": "main", "poll_interval": 1, "project": "demo/gpu"}}
    env = {"EASEML_WORKER_RUNNER": "process"}
    # the workers take the private key base64-encoded from their environment (buildbot.tac
    # turns it into a private file; no key path is configured anywhere)
    key_b64 = base64.b64encode(service_keys.private.read_bytes()).decode()
    with BuildbotHarness(tmp_path / "bb", settings=settings, workers=2, worker_env=env,
                         env={"EASEML_WORKER_KEY_B64": key_b64},
                         worker_settings=[{}, {"gpus": 1}], master_cfg_extra=PREFER_WORKER1) as bb:
        bb.wait_first_poll()
        repo.commit_model(quality=0.97, branch="main", message="better model")
        first, second = bb.wait_for_builds(2, timeout=180)
        names = _worker_names(bb)
        p1, p2 = bb.build_properties(first["buildid"]), bb.build_properties(second["buildid"])
        assert names[first["workerid"]] == "worker1" and first["results"] == 5, first  # RETRY
        assert p1["easeml_status"] == "requeued" and "queued again for a worker that has them (worker2)" \
            in p1["easeml_cause"]
        assert "easeml_use_id" not in p1  # nothing reserved on the CPU worker
        assert first["buildrequestid"] == second["buildrequestid"]  # the same request, re-queued
        assert names[second["workerid"]] == "worker2", bb.master_log()[-4000:]
        assert p2["easeml_status"] == "evaluated" and p2["easeml_verdict"] == "pass", bb.master_log()[-4000:]
        assert p2["easeml_use_id"]
        logs = bb.step_logs_text(second["buildid"])
        assert "model.gpus: 1 GPU; worker worker2 has 1" in logs
        assert key_b64[:40] not in logs and "EASEML_WORKER_KEY_B64" not in logs

        # the only GPU worker goes away: the next build says so and spends nothing
        bb.kill_worker(1)
        t0 = time.monotonic()
        while bb._worker_connected("worker2") and time.monotonic() - t0 < 60:
            time.sleep(0.5)
        repo.commit_model(quality=0.98, branch="main", message="another model")
        third = bb.wait_for_builds(3, timeout=120)[2]
        p3 = bb.build_properties(third["buildid"])
        assert names[third["workerid"]] == "worker1" and third["results"] == 2, third  # FAILURE
        assert p3["easeml_status"] == "infra_error"
        assert p3["easeml_cause"].startswith("the model asks for 1 GPU (model.gpus in .easeml.yml), "
                                             "but no connected worker has that many (GPUs per connected "
                                             "worker: worker1: 0)")
        assert "easeml_use_id" not in p3
