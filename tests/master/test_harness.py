"""The harness itself: real master + worker processes run a trivial build end to end."""

from __future__ import annotations

import pytest

from support.buildbot_harness import BuildbotHarness

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
        bb.force_build(builder="trivial", scheduler="force-trivial")
        (build,) = bb.wait_for_builds(1, timeout=60, builder="trivial")
        assert build["results"] == 0, bb.master_log()[-3000:]
        text = bb.step_logs_text(build["buildid"])
        assert "hello from process" in text
    assert all(p.poll() is not None for p in bb._procs) or not bb._procs
