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


PROPERTIES = '''
import json as _j, sqlalchemy as _sa
from buildbot.plugins import schedulers, steps, util
_writes = []  # per transaction that wrote build properties: how many rows it wrote


@_sa.event.listens_for(_sa.engine.Engine, "before_cursor_execute")
def _count(conn, cursor, statement, parameters, context, executemany):
    if statement.lstrip().upper().startswith(("INSERT INTO BUILD_PROPERTIES", "UPDATE BUILD_PROPERTIES")):
        conn.info["bp_rows"] = conn.info.get("bp_rows", 0) + 1


@_sa.event.listens_for(_sa.engine.Engine, "commit")
def _commit(conn):
    rows = conn.info.pop("bp_rows", 0)
    if rows:
        _writes.append(rows)
        with open(%(path)r, "w") as fh:
            _j.dump(_writes, fh)


_f = util.BuildFactory([
    steps.SetProperties(name="twenty", properties={f"p{i:02d}": f"v{i}" for i in range(20)}),
    steps.SetProperties(name="again", properties={"p00": "changed", **{f"q{i}": i for i in range(5)}}),
    steps.ShellCommand(name="hello", command=["true"]),
])
c["builders"].append(util.BuilderConfig(name="props", workernames=["worker1"], factory=_f))
c["schedulers"].append(schedulers.ForceScheduler(name="force-props", builderNames=["props"]))
'''


def test_a_steps_properties_are_written_in_one_transaction(tmp_path, git_repo):
    """Buildbot 4.3 wrote each changed build property in a transaction of its own after every
    step (~46 of a trivial evaluation's ~146 transactions); buildbot_fixes.apply_to_master
    writes one step's changes in one. The same rows: every property is in the REST API with
    its last value, and the first step's 20 properties took one transaction, not 20."""
    import json

    counts = tmp_path / "bp_writes.json"
    with BuildbotHarness(tmp_path / "bb", settings={"local": {"repo": str(git_repo)}},
                         master_cfg_extra=PROPERTIES % {"path": str(counts)}) as bb:
        bb.force_build(builder="props", scheduler="force-props")
        (build,) = bb.wait_for_builds(1, timeout=60, builder="props")
        assert build["results"] == 0, bb.master_log()[-3000:]
        props = bb.build_properties(build["buildid"])
        writes = json.loads(counts.read_text())
    assert props["p00"] == "changed" and props["p19"] == "v19" and props["q4"] == 4, props
    assert all(f"p{i:02d}" in props for i in range(20))
    assert sum(writes) >= 26, writes  # 20 + 1 changed + 5 new, and Buildbot's own
    assert max(writes) >= 20, f"each property in a transaction of its own: {writes}"
    assert len(writes) < 15, writes
