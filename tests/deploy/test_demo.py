"""`easeml demo` end to end, as a user runs it: real master, worker, GitPoller, gpg, SMTP.

The verdicts it announces must be the ones the ledger recorded, the mails must have
arrived in the folder it names, and everything it started must be gone when it returns
(also after Ctrl-C)."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from easeml_buildbot.custody.ledger import Ledger

pytestmark = pytest.mark.e2e
EASEML = [sys.executable, "-m", "easeml_buildbot"]


def port_open(url: str) -> bool:
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def test_demo_announces_what_the_ledger_recorded_and_mails_arrive(tmp_path):
    out_dir = tmp_path / "demo"
    summary_path = tmp_path / "summary.json"
    t0 = time.monotonic()
    proc = subprocess.run([*EASEML, "demo", "--dir", str(out_dir), "--no-wait", "--port", "0",
                           "--summary-json", str(summary_path)],
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(proc.stdout)
    print(f"demo took {took:.0f}s")
    s = json.loads(summary_path.read_text())
    out = proc.stdout
    assert f"runner: {s['runner']} (" in out and s["runner"] in ("docker", "process")

    # 1. What it announced, commit by commit.
    statuses = [(c["status"], c["verdict"]) for c in s["commits"]]
    assert statuses == [("evaluated", "pass"), ("evaluated", "fail"), ("model_error", None)], statuses
    for c, word in zip(s["commits"], ("verdict: PASS", "verdict: FAIL", "verdict: MODEL ERROR")):
        assert f"{c['sha'][:10]}: {c['message']}" in out
    assert out.index("verdict: PASS") < out.index("verdict: FAIL") < out.index("verdict: MODEL ERROR")

    # 2. The ledger agrees: one committed use per scored commit with the announced verdict
    #    and sample count; the broken model crashed after reading the features, so its use
    #    is spent too (not released); uses left as announced.
    with Ledger(s["ledger_url"]) as led:
        uses = {u.commit: u for u in led.uses(s["repo"], s["dataset_id"])}
        state = led.state(s["repo"], s["dataset_id"])
    for c in s["commits"]:
        use = uses[c["sha"]]
        assert use.id == c["use_id"]
        if c["status"] == "evaluated":
            assert use.state == "committed" and use.verdict == c["verdict"]
            assert use.result["samples_used"] == c["samples_used"] == s["samples_needed"]
        else:
            assert use.state != "released" and use.verdict is None and not c["samples_used"]
            assert c["released"] is False
    assert state.budget == s["budget"] == 8
    assert state.remaining == s["commits"][-1]["uses_left"] == s["ledger_remaining"] == 5
    assert s["ledger_agrees"] is True and "it agrees with every verdict announced above" in out
    assert [c["uses_left"] for c in s["commits"]] == [7, 6, 5]
    assert f"uses left: 7/8" in out and f"uses left: 5/8" in out

    # 3. Mails landed in the folder it named: each scored commit's owner mail, with its verdict.
    mail_dir = Path(s["mail_dir"])
    assert f"mails ({len(s['mails'])}):    {mail_dir}" in out
    messages = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted(mail_dir.glob("*.eml"))]
    assert len(messages) == len(s["mails"]) >= 3
    for c in s["commits"]:
        subjects = [m["Subject"] for m in messages if c["sha"][:7] in m["Subject"]]
        assert subjects, f"no mail for {c['sha'][:7]}: {[m['Subject'] for m in messages]}"
        if c["verdict"]:
            assert any(c["verdict"] in subj.lower() for subj in subjects), subjects
    assert any("model-owner@example.com" in m["X-Envelope-To"] for m in messages)

    # 4. Everything stopped: the UI is gone, and it said so.
    assert "stopped everything the demo started" in out
    assert not port_open(s["ui_url"])
    assert "Buildbot UI:" in out and s["ui_url"] in out


def test_ctrl_c_stops_everything_the_demo_started(tmp_path):
    out_dir = tmp_path / "demo"
    proc = subprocess.Popen([*EASEML, "demo", "--dir", str(out_dir), "--wait", "--port", "0",
                             "--runner", "process"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if "master: up at " in line:
                url = line.split("master: up at ")[1].split(",")[0]
            if "worker: demo-worker connected" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert url and port_open(url), "".join(lines)
        os.kill(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the demo
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "stopped everything the demo started" in text and "interrupted" in text
    assert not port_open(url)
    # No master or worker of this demo is left: nothing runs from its directories.
    left = subprocess.run(["pgrep", "-f", str(out_dir)], capture_output=True, text=True).stdout.split()
    assert left == [], left
