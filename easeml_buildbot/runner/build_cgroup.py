"""A cgroup per image build, so that the operator's pid and CPU limits hold for RUN steps.

Docker's classic builder takes only memory and CPU shares/sets per step container
(``container_limits``); it has no pids limit and no CPU quota. It does take a
``cgroup_parent``: every step container of the build is created under it, and a cgroup's
limits hold for everything below it. So the runner makes one cgroup per build, writes the
limits into it, hands it to the daemon as the parent and removes it afterwards.

This needs the daemon's cgroup tree writable by the worker (the worker runs as root on the
daemon's host, ``cgroupfs`` driver, cgroup v1 or v2). Where it is not, :meth:`create`
raises :class:`CgroupUnavailable` and the runner refuses to build unless the operator set
``EASEML_BUILD_CGROUP=off`` (then only memory and CPU shares are limited).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def cgroup_root() -> Path:
    """Read when a cgroup is made, not at import: a warm worker command (runner/warm.py) runs
    in a process that imported this module before the command's environment was known."""
    return Path(os.environ.get("EASEML_CGROUP_ROOT", "/sys/fs/cgroup"))


PARENT = "easeml-build"
PERIOD = 100_000  # µs, the CFS period the quota is measured against


class CgroupUnavailable(Exception):
    """The build's cgroup cannot be made here."""


class BuildCgroup:
    """One build's cgroup; ``parent`` is the value for the build's ``cgroup_parent``."""

    def __init__(self, *, pids: int, cpus: float, memory: int, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cgroup_root()
        self.name = f"{PARENT}/{uuid.uuid4().hex[:16]}"
        self.parent = "/" + self.name
        self.limits = {"pids": int(pids), "cpus": float(cpus), "memory": int(memory)}
        self.dirs: list[Path] = []
        self.v2 = (self.root / "cgroup.controllers").exists()

    # --------------------------------------------------------------- creation
    def create(self) -> "BuildCgroup":
        self.sweep()
        try:
            if self.v2:
                self._create_v2()
            else:
                self._create_v1()
        except OSError as exc:
            self.remove()
            raise CgroupUnavailable(f"cannot create the build cgroup under {self.root}: {exc}") from None
        return self

    def _create_v1(self) -> None:
        quota = max(1000, int(self.limits["cpus"] * PERIOD))
        files = {
            "pids": {"pids.max": str(self.limits["pids"])},
            "cpu": {"cpu.cfs_period_us": str(PERIOD), "cpu.cfs_quota_us": str(quota)},
            "memory": {"memory.limit_in_bytes": str(self.limits["memory"])},
        }
        for controller, values in files.items():
            base = self.root / controller
            if not base.is_dir():
                raise OSError(f"no {controller} controller at {base}")
            d = base / self.name
            d.mkdir(parents=True, exist_ok=True)
            self.dirs.append(d)
            for fname, value in values.items():
                (d / fname).write_text(value)
        # cpuset: a new cgroup starts with no CPUs and no memory nodes; inherit them, or
        # the daemon cannot place a container below it.
        cs = self.root / "cpuset"
        if cs.is_dir():
            parent = cs / PARENT
            parent.mkdir(exist_ok=True)
            for fname in ("cpuset.cpus", "cpuset.mems"):
                if not (parent / fname).read_text().strip():
                    (parent / fname).write_text((cs / fname).read_text().strip())
            d = cs / self.name
            d.mkdir(exist_ok=True)
            self.dirs.append(d)
            for fname in ("cpuset.cpus", "cpuset.mems"):
                (d / fname).write_text((parent / fname).read_text().strip())

    def _create_v2(self) -> None:
        parent = self.root / PARENT
        parent.mkdir(exist_ok=True)
        for level in (self.root, parent):
            (level / "cgroup.subtree_control").write_text("+pids +cpu +memory")
        d = self.root / self.name
        d.mkdir(exist_ok=True)
        self.dirs.append(d)
        (d / "pids.max").write_text(str(self.limits["pids"]))
        (d / "cpu.max").write_text(f"{max(1000, int(self.limits['cpus'] * PERIOD))} {PERIOD}")
        (d / "memory.max").write_text(str(self.limits["memory"]))
        (d / "memory.swap.max").write_text("0")

    def events(self) -> dict[str, int]:
        """Counters of limits hit so far: ``oom_kill``, ``memory_failcnt`` (v1) and ``pids_max``."""
        out = {"oom_kill": 0, "pids_max": 0, "memory_failcnt": 0}
        if self.v2:
            mem, pids = self.root / self.name / "memory.events", self.root / self.name / "pids.events"
        else:
            mem = self.root / "memory" / self.name / "memory.oom_control"
            pids = self.root / "pids" / self.name / "pids.events"
        for path, key, name in ((mem, "oom_kill", "oom_kill"), (pids, "max", "pids_max")):
            try:
                for line in path.read_text().splitlines():
                    k, _, v = line.partition(" ")
                    if k == key:
                        out[name] = int(v)
            except (OSError, ValueError):
                pass
        peak = (self.root / self.name if self.v2 else self.root / "pids" / self.name) / "pids.peak"
        try:  # the forking cgroup (the step's own, gone by now) counts failed forks; the
            # build's cgroup keeps its peak
            if int(peak.read_text()) >= self.limits["pids"]:
                out["pids_max"] = max(out["pids_max"], 1)
        except (OSError, ValueError):
            pass
        if not self.v2:
            # v1 counts an OOM kill in the step container's own cgroup (gone by now); the
            # build's cgroup counts how often its limit was hit
            try:
                out["memory_failcnt"] = int((self.root / "memory" / self.name / "memory.failcnt").read_text())
            except (OSError, ValueError):
                pass
        return out

    def sweep(self, older_than: float = 6 * 3600) -> None:
        """Remove build cgroups left by a worker that died mid-build: empty ones (no
        process, no step container) older than any build may run."""
        now = time.time()
        bases = [self.root / PARENT] if self.v2 else [c / PARENT for c in self.root.iterdir()
                                                       if (c / PARENT).is_dir()]
        for base in bases:
            try:
                for d in base.iterdir():
                    if d.is_dir() and now - d.stat().st_mtime > older_than:
                        try:
                            d.rmdir()  # fails, harmlessly, when anything is inside
                        except OSError:
                            pass
            except OSError:
                pass

    # ---------------------------------------------------------------- removal
    def remove(self, wait: float = 10.0) -> None:
        """Remove the cgroup once the daemon removed the step containers below it."""
        deadline = time.monotonic() + wait
        # runc made the build's cgroup under every controller (devices, blkio, ...), not
        # only under the ones limited here.
        others = [] if self.v2 else [c / self.name for c in self.root.iterdir()
                                     if (c / self.name).is_dir() and c / self.name not in self.dirs]
        for d in [*reversed(self.dirs), *others]:
            while True:
                try:
                    for child in [c for c in d.iterdir() if c.is_dir()]:
                        child.rmdir()  # a finished step container's own cgroup
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        self.dirs = []

    def __enter__(self) -> "BuildCgroup":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()
