"""The harness itself: real master + worker processes run a trivial build end to end."""

from __future__ import annotations

import pytest

from support.buildbot_harness import BuildbotHarness, HarnessError

pytestmark = pytest.mark.e2e

TRIVIAL = '''
from buildbot.plugins import schedulers, steps, util
_f = util.BuildFactory([steps.ShellCommand(name="hello", command=["sh", "-c", "echo hello from $EASEML_WORKER_RUNNER"])])
c["builders"].append(util.BuilderConfig(name="trivial", workernames=["worker1"], factory=_f))
c["schedulers"].append(schedulers.ForceScheduler(name="force-trivial", builderNames=["trivial"]))
'''


def test_trivial_build_runs_on_a_real_worker(tmp_path, git_repo):
    with BuildbotHarness(tmp_path / "bb", settings={"local": {"repo": str(git_repo)}},
                         worker_env={"EASEML_WORKER_RUNNER": "process"}, master_cfg_extra=TRIVIAL) as bb:
        with pytest.raises(HarnessError, match="refused"):
            bb.force_build(builder="trivial", scheduler="force-trivial", login=False)
        bb.force_build(builder="trivial", scheduler="force-trivial")
        (build,) = bb.wait_for_builds(1, timeout=60, builder="trivial")
        assert build["results"] == 0, bb.master_log()[-3000:]
        text = bb.step_logs_text(build["buildid"])
        assert "hello from process" in text
    assert all(p.poll() is not None for p in bb._procs) or not bb._procs


def test_rest_clients_that_hang_up_do_not_wedge_the_master(tmp_path, git_repo):
    """Buildbot 4.3 writes REST responses from a thread; clients that disconnect early used
    to corrupt the reactor (see easeml_buildbot/master/buildbot_fixes.py)."""
    import socket

    with BuildbotHarness(tmp_path / "bb", settings={"local": {"repo": str(git_repo)}}) as bb:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", bb.www_port))
            s.sendall(b"GET /api/v2/application.spec HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            if i % 2:
                try:
                    s.recv(100)  # hang up while the response is being written
                except OSError:
                    pass
            s.close()
        bb.kill_worker(0)
        bb.start_worker(0)  # needs the master to accept a new connection
        assert [b["name"] for b in bb.api("builders")] == ["easeml"]
        assert "FileNotFoundError" not in bb.master_log()
