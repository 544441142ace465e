"""A master and its WAMP router (issue 14, compose): a master that starts before crossbar
must not run on without a message queue. Buildbot 4.3's connector tries the router once; a
master started first stayed healthy to every probe and scheduled nothing (the compose
cluster stalled that way in CI). Real master, real crossbar started late, then stopped."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from support.buildbot_harness import BuildbotHarness, free_port
from support.crossbar import CROSSBAR, CrossbarRouter
from support.github_sim_world import require_worker_cli
from support.models import make_model_repo
from support.postgres import postgres_server  # noqa: F401 (session fixture)

pytestmark = pytest.mark.e2e


def _health(bb: BuildbotHarness) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(bb.metrics_url + "healthz", timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(cond, what: str, bb: BuildbotHarness, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{bb.master_log()[-5000:]}")


def test_a_master_started_before_its_router_connects_when_it_comes_and_exits_when_it_goes(
        tmp_path, service_keys, postgres_server):  # noqa: F811
    if not CROSSBAR.exists():
        pytest.skip(f"{CROSSBAR} not found (scripts/setup.sh installs crossbar into .venv-crossbar)")
    require_worker_cli()
    repo = make_model_repo(tmp_path / "repo", public_key=service_keys.public, quality=0.6,
                           condition="n - o > 0.02 +/- 0.1", reliability=0.95, adaptivity="none", steps=4)
    router = CrossbarRouter(tmp_path / "router", port=free_port())  # not started yet
    db_url = postgres_server.create_database()
    settings = {"forge": "local", "db_url": db_url, "ledger_url": db_url,
                "mq_router_url": router.url, "mq_realm": router.realm,
                "local": {"repo": str(repo.path), "branch": "main", "poll_interval": 1, "project": "demo/models"}}
    env = {"EASEML_WORKER_KEY": str(service_keys.private), "EASEML_WORKER_RUNNER": "process"}
    with BuildbotHarness(tmp_path / "bb", settings=settings, worker_env=env) as bb:
        try:
            status, state = _health(bb)
            assert status == 503 and state["mq"].startswith("connecting to ws://"), state
            assert state["db"] == "ok" and state["ledger"] == "ok", state
            router.start()
            _until(lambda: _health(bb)[0] == 200, "the master to join the router", bb)
            assert _health(bb)[1]["mq"] == "ok"
            # Events go through the router: the poller's change reaches the scheduler.
            bb.wait_first_poll()
            repo.commit_model(quality=0.97, branch="main", message="better model")
            (b1,) = bb.wait_for_builds(1, timeout=180)
            assert bb.build_properties(b1["buildid"])["easeml_status"] == "evaluated"
            # The router goes away: the master exits for its supervisor to restart it.
            router.stop()
            _until(lambda: bb.master_proc.poll() is not None, "the master process to exit", bb, timeout=60)
            assert "lost the WAMP router" in bb.master_log()
        finally:
            router.stop()
