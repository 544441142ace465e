"""Operators can see it (issue 14): a real master's /metrics and /healthz on its metrics port."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

import pytest

from support.local_forge import local_forge_master
from support.models import make_model_repo

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample ``name{labels}`` in Prometheus' text format."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if have == labels:
            return float(m.group(3))
    return None


def test_metrics_count_a_build_and_health_reports_the_ledger(tmp_path, service_keys):
    repo = make_model_repo(tmp_path / "repo", public_key=service_keys.public, quality=0.6,
                           condition="n - o > 0.02 +/- 0.1", reliability=0.95,
                           adaptivity="none", steps=4)
    ledger = tmp_path / "ledger.sqlite"
    with local_forge_master(tmp_path / "bb", repo, service_keys, ledger_url=f"sqlite:///{ledger}") as bb:
        status, body = _get(bb.metrics_url + "healthz")
        assert status == 200 and json.loads(body) == {"master": "ok", "db": "ok", "ledger": "ok"}, body
        status, before = _get(bb.metrics_url + "metrics")
        assert status == 200
        assert _sample(before, "easeml_builds_total", status="evaluated") == 0
        assert _sample(before, "easeml_pending_build_requests") == 0
        assert _sample(before, "easeml_check_runs_pending") == 0  # (the GitHub faults e2e sees them > 0)
        assert _sample(before, "easeml_outbox_pending") == 0
        bb.wait_first_poll()
        repo.commit_model(quality=0.97, branch="main", message="better model")
        (b1,) = bb.wait_for_builds(1, timeout=120)
        assert bb.build_properties(b1["buildid"])["easeml_status"] == "evaluated"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            _, after = _get(bb.metrics_url + "metrics")
            if _sample(after, "easeml_builds_total", status="evaluated") == 1:
                break
            time.sleep(0.5)
        assert _sample(after, "easeml_builds_total", status="evaluated") == 1, after
        assert _sample(after, "easeml_builds_total", status="protected_changed") == 0
        # uses left of the test set, from the ledger (the gauges are refreshed every 15 s)
        t0 = time.monotonic()
        while _sample(after, "easeml_testset_uses_left", repo="demo/models",
                      dataset=repo.dataset_id[:12]) != 3 and time.monotonic() - t0 < 30:
            time.sleep(1)
            _, after = _get(bb.metrics_url + "metrics")
        assert _sample(after, "easeml_testset_uses_left", repo="demo/models", dataset=repo.dataset_id[:12]) == 3, after
        assert _sample(after, "easeml_pending_build_requests") == 0
        # adaptivity none: the verdict goes to the owners only; no series carries it
        assert "verdict" not in after and "pass" not in after.replace("passed", "")
        # read-only: nothing but GET
        req = urllib.request.Request(bb.metrics_url + "metrics", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=10)
        # the ledger goes away (file deleted under the running master): the probe says so
        ledger.unlink()
        status, body = _get(bb.metrics_url + "healthz")
        assert status == 503, body
        state = json.loads(body)
        assert state["master"] == "ok" and state["db"] == "ok" and state["ledger"].startswith("unreachable"), state
