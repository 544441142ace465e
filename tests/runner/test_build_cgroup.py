"""The per-build cgroup: limits written where the daemon's step containers will live, removed
afterwards, and cgroups left by a worker that died mid-build swept once they are old."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from easeml_buildbot.runner.build_cgroup import PARENT, BuildCgroup, CgroupUnavailable, cgroup_root

ROOT = cgroup_root()  # where BuildCgroup makes its cgroups in this environment


@pytest.fixture
def cgroup():
    cg = BuildCgroup(pids=17, cpus=0.25, memory=123 << 20)
    try:
        cg.create()
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    yield cg
    cg.remove()


def test_limits_are_written_and_removed(cgroup):
    if cgroup.v2:
        d = ROOT / cgroup.name
        assert (d / "pids.max").read_text().strip() == "17"
        assert (d / "cpu.max").read_text().split() == ["25000", "100000"]
        assert int((d / "memory.max").read_text()) == 123 << 20
    else:
        assert (ROOT / "pids" / cgroup.name / "pids.max").read_text().strip() == "17"
        assert (ROOT / "cpu" / cgroup.name / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert int((ROOT / "memory" / cgroup.name / "memory.limit_in_bytes").read_text()) == 123 << 20
    assert cgroup.events() == {"oom_kill": 0, "pids_max": 0, "memory_failcnt": 0}
    dirs = list(cgroup.dirs)
    cgroup.remove()
    assert dirs and not any(d.exists() for d in dirs)


def test_old_empty_cgroups_are_swept(cgroup):
    base = ROOT / PARENT if cgroup.v2 else ROOT / "pids" / PARENT
    old, young = base / f"test-old-{uuid.uuid4().hex[:8]}", base / f"test-young-{uuid.uuid4().hex[:8]}"
    old.mkdir()
    young.mkdir()
    try:
        os.utime(old, (time.time() - 7 * 3600,) * 2)
        cgroup.sweep()
        assert not old.exists() and young.exists()
    finally:
        for d in (old, young):
            if d.exists():
                d.rmdir()
