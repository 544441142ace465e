"""The local forge (used by the demo): a GitPoller on a local repository, console log lines
instead of check runs, the last passing commit becomes the accepted model ``o``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from easeml_buildbot.custody.ledger import Ledger
from support.local_forge import PROJECT, local_forge_master
from support.models import make_model_repo

pytestmark = pytest.mark.e2e


def _repo(tmp_path, service_keys, steps):
    return make_model_repo(tmp_path / "repo", public_key=service_keys.public, quality=0.6,
                           condition="n - o > 0.02 +/- 0.1", reliability=0.95, adaptivity="full", steps=steps)


def test_local_forge_evaluates_new_commits_and_advances_the_baseline(tmp_path, service_keys):
    repo = _repo(tmp_path, service_keys, steps=4)
    with local_forge_master(tmp_path / "bb", repo, service_keys) as bb:
        # the poller records the current head at its first poll; commit only after that
        bb.wait_first_poll()
        # and once the worker's warm server is up (a command before it runs cold)
        t0 = time.monotonic()
        while "easeml warm: serving " not in (bb.worker_dirs[0] / "twistd.log").read_text():
            assert time.monotonic() - t0 < 60, "the worker's warm server did not start"
            time.sleep(0.1)
        better = repo.commit_model(quality=0.97, branch="main", message="much better model")
        (b1,) = bb.wait_for_builds(1, timeout=120)
        p1 = bb.build_properties(b1["buildid"])
        assert p1["easeml_status"] == "evaluated" and p1["easeml_verdict"] == "pass", bb.master_log()[-5000:]
        assert p1["easeml_base_sha"] == repo.base.sha  # no accepted commit yet: the parent
        # the master's plan reached the worker, which used it rather than planning again
        assert json.loads(p1["easeml_plan"])["rows"] == p1["easeml_samples_needed"]
        with Ledger(f"sqlite:///{tmp_path / 'bb'}-ledger.sqlite") as led:
            (use,) = led.uses(PROJECT, repo.dataset_id)
        assert use.result["plan_by"] == "master" and use.result["samples_used"] == p1["easeml_samples_needed"]
        worse = repo.commit_model(quality=0.7, branch="main", message="worse model")
        b1, b2 = bb.wait_for_builds(2, timeout=120)
        p2 = bb.build_properties(b2["buildid"])
        assert p2["easeml_base_sha"] == better.sha  # the accepted model advanced
        assert p2["easeml_verdict"] == "fail"
        t0 = time.monotonic()  # the console reporter runs just after the build completes
        while time.monotonic() - t0 < 30:
            log = bb.master_log()
            lines = [ln for ln in log.splitlines() if "easeml: demo/models@" in ln]
            if len(lines) >= 2:
                break
            time.sleep(0.2)
        assert len(lines) == 2, log[-4000:]
        assert f"@{better.sha[:12]} status=evaluated verdict=success" in lines[0]
        assert f"@{worse.sha[:12]} status=evaluated verdict=failure" in lines[1]
        assert re.search(r"samples_used=\d+ uses_left=2", lines[1])
        # the typed outcome's summary line, the same text as the build's summary in the UI
        assert "summary='fail · n - o > 0.02 ± 0.1 · use 2 of 4 · 2 left'" in lines[1], lines[1]
        assert bb.api(f"builds/{b2['buildid']}")[0]["state_string"].endswith(
            "fail · n - o > 0.02 ± 0.1 · use 2 of 4 · 2 left")
        # the outcome step removed the worker's ../easeml-out (no clean-up step of its own), and
        # record result read result.json into memory: no copy on either side
        builddirs = [d for w in bb.worker_dirs for d in w.glob("*/build")]
        leftovers = [d for w in bb.worker_dirs for d in w.glob("*/easeml-out")]
        assert builddirs and not leftovers, (builddirs, leftovers)
        names = [s["name"] for s in bb.api(f"builds/{b2['buildid']}/steps")]
        assert "collect result" not in names and "clean up" not in names, names
        # both worker commands of each build were forked from the worker's warm server
        # (runner/warm.py: started by worker/buildbot.tac), not started as fresh interpreters
        wlog = "".join((w / "twistd.log").read_text() for w in bb.worker_dirs)
        assert len(re.findall(r"easeml warm: \d+ runs worker evaluate", wlog)) == 2, wlog[-3000:]
        assert len(re.findall(r"easeml warm: \d+ runs worker inspect", wlog)) == 2, wlog[-3000:]
        # the long-lived server was started with an interpreter's environment only: no worker
        # setting (key path, passphrase file, password) is in it for its whole life
        (server,) = [int(p) for p in re.findall(r"easeml warm: serving \S+ \(pid (\d+)\)", wlog)]
        env = dict(kv.split(b"=", 1) for kv in (Path(f"/proc/{server}/environ").read_bytes().split(b"\0")) if kv)
        assert env and not [k for k in env if k.startswith(b"EASEML")], sorted(env)


def test_local_forge_takes_a_configuration_commit_as_the_new_configuration(tmp_path, service_keys):
    """Issue 14: a commit on the watched (trusted) branch that edits ``.easeml.yml`` is not
    evaluated as a model; it becomes the accepted commit, so the commits after it are
    evaluated under the new configuration instead of being ``protected_changed`` forever."""
    repo = _repo(tmp_path, service_keys, steps=8)
    with local_forge_master(tmp_path / "bb", repo, service_keys) as bb:
        bb.wait_first_poll()
        better = repo.commit_model(quality=0.97, branch="main", message="much better model")
        (b1,) = bb.wait_for_builds(1, timeout=120)
        assert bb.build_properties(b1["buildid"])["easeml_verdict"] == "pass"  # the accepted model
        # a new owner address (the condition, steps and adaptivity are bound to the test set
        # by the ledger: changing them takes a new test set)
        config = (repo.path / ".easeml.yml").read_text().replace("- owner@example.com",
                                                                  "- owner@example.com\n- second@example.com")
        assert "second@example.com" in config
        config_sha = repo.commit_files({".easeml.yml": config}, branch="main", message="owners: a second owner")
        _, b0 = bb.wait_for_builds(2, timeout=120)
        p0 = bb.build_properties(b0["buildid"])
        assert p0["easeml_base_sha"] == better.sha
        assert p0["easeml_status"] == "protected_changed", bb.master_log()[-5000:]
        assert not p0.get("easeml_use_id")  # no use of the test set was spent on it
        seen = [b1, b0]
        for i, quality in enumerate((0.9, 0.7, 0.95)):
            commit = repo.commit_model(quality=quality, branch="main", message=f"model {i}", flip_seed=3 + i)
            builds = bb.wait_for_builds(len(seen) + 1, timeout=120)
            p = bb.build_properties(builds[-1]["buildid"])
            assert p["revision"] == commit.sha
            assert p["easeml_status"] == "evaluated", (p.get("easeml_status"), p.get("easeml_cause"))
            assert "second@example.com" in p["easeml_email"]  # read from the configuration commit
            if i == 0:
                assert p["easeml_base_sha"] == config_sha
            seen = builds
