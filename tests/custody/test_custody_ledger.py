"""The usage ledger on real SQLite and PostgreSQL: semantics, races, crashes, rotation."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from custody_helpers import easeml
from easeml_buildbot.custody.ledger import (
    Ledger, LedgerError, PolicyMismatch, TestSetExhausted, TestSetRetired, normalize_url,
)
from easeml_buildbot.custody.policy import developer_may_see

REPO = "acme/model"
DS = "a" * 64
DS2 = "b" * 64
CHILD = Path(__file__).with_name("ledger_child.py")


def test_result_json_accepts_numpy_values(led):
    import numpy as np

    r = led.reserve(REPO, DS, 2, "full")
    led.commit(r.use_id, "pass", result={"n": np.float64(0.8125), "samples": np.int64(400),
                                         "interval": np.array([0.79, 0.83]), "tags": ("a", "b")})
    assert led.use(r.use_id).result == {"n": 0.8125, "samples": 400, "interval": [0.79, 0.83],
                                        "tags": ["a", "b"]}
    r2 = led.reserve(REPO, DS, 2, "full")
    with pytest.raises(LedgerError, match="not JSON-serialisable"):
        led.commit(r2.use_id, "pass", result={"x": object()})
    assert led.use(r2.use_id).state == "reserved"  # nothing half-written


def test_use_records_everything(led):
    before = dt.datetime.now(dt.timezone.utc)
    r = led.reserve(REPO, DS, steps=3, adaptivity="full", commit="c0ffee", build="http://ci/builds/7",
                    condition="n > 0.8 +/- 0.05", samples_needed=1234)
    assert (r.use_number, r.remaining, r.budget) == (1, 2, 3)
    st = led.commit(r.use_id, verdict="fail",
                    result={"estimates": {"n": 0.71}, "intervals": {"n": [0.66, 0.76]}},
                    notified=["b@x.org", "a@x.org"])
    assert (st.uses, st.remaining, st.retired, st.committed, st.pending) == (1, 2, False, 1, 0)
    assert st.samples_needed == 1234 and st.condition == "n > 0.8 +/- 0.05"
    use = led.use(r.use_id)
    assert use.commit == "c0ffee" and use.build == "http://ci/builds/7" and use.state == "committed"
    assert use.verdict == "fail" and use.result == {"estimates": {"n": 0.71}, "intervals": {"n": [0.66, 0.76]}}
    assert use.notified == ("a@x.org", "b@x.org")
    assert before <= use.reserved_at <= use.finished_at <= dt.datetime.now(dt.timezone.utc)
    assert use.developer_may_see is True
    assert led.add_notified(r.use_id, ["c@x.org"]).notified == ("a@x.org", "b@x.org", "c@x.org")
    # reopening sees the same durable state
    again = Ledger(led.url)
    assert again.use(r.use_id) == led.use(r.use_id)
    assert again.state(REPO, DS) == led.state(REPO, DS)
    again.close()
    assert led.state(REPO, "f" * 64) is None
    with pytest.raises(LedgerError, match="no use with id"):
        led.use(999999)


def test_reserved_but_unfinished_counts_as_spent(led):
    a = led.reserve(REPO, DS, 2, "full")
    b = led.reserve(REPO, DS, 2, "full")
    st = led.state(REPO, DS)
    assert (st.uses, st.remaining, st.pending, st.committed) == (2, 0, 2, 0)
    with pytest.raises(TestSetExhausted, match="no uses left"):
        led.reserve(REPO, DS, 2, "full")
    st = led.commit(a.use_id, "fail")  # the budget is spent: retired, b may still commit
    assert st.retired and st.retired_by_use == a.use_id
    with pytest.raises(TestSetRetired):
        led.reserve(REPO, DS, 2, "full")
    assert led.state(REPO, DS).pending == 1 and b.use_number == 2
    assert led.commit(b.use_id, "pass").committed == 2


def test_release_only_unscored(led):
    a = led.reserve(REPO, DS, 2, "full")
    st = led.release(a.use_id, reason="model crashed before producing predictions")
    assert (st.uses, st.remaining) == (0, 2)
    assert led.use(a.use_id).state == "released"
    assert led.release(a.use_id, reason="again") == st  # idempotent
    with pytest.raises(LedgerError, match="already released"):
        led.commit(a.use_id, "pass")
    b = led.reserve(REPO, DS, 2, "full")
    led.commit(b.use_id, "fail")
    with pytest.raises(LedgerError, match="never given back"):
        led.release(b.use_id, reason="oops")
    with pytest.raises(LedgerError, match="needs a reason"):
        led.release(b.use_id, reason="")
    # committing twice with the same verdict is a safe retry; another verdict is refused
    assert led.commit(b.use_id, "fail").uses == 1
    with pytest.raises(LedgerError, match="already committed"):
        led.commit(b.use_id, "pass")
    assert led.state(REPO, DS).uses == 1


@pytest.mark.parametrize("adaptivity", ["none", "full"])
def test_none_and_full_retire_after_h_uses(led, adaptivity):
    H = 3
    ids = []
    for i in range(H):
        r = led.reserve(REPO, DS, H, adaptivity, commit=f"c{i}")
        st = led.commit(r.use_id, "pass" if i % 2 else "fail")
        ids.append(r.use_id)
        assert st.retired is (i == H - 1)
    assert st.retired_by_use == ids[-1] and st.retired_reason == f"budget of {H} uses spent"
    with pytest.raises(TestSetRetired, match="retired"):
        led.reserve(REPO, DS, H, adaptivity)
    seen = [u.developer_may_see for u in led.uses(REPO, DS)]
    assert seen == ([False] * H if adaptivity == "none" else [True] * H)
    assert developer_may_see(adaptivity, "pass") is (adaptivity == "full")


def test_first_change_retires_at_first_pass(led):
    H = 5
    for _ in range(2):
        r = led.reserve(REPO, DS, H, "firstChange")
        st = led.commit(r.use_id, "fail")
        assert not st.retired and led.use(r.use_id).developer_may_see
    r = led.reserve(REPO, DS, H, "firstChange")
    st = led.commit(r.use_id, "pass")
    assert st.retired and st.retired_by_use == r.use_id and "first pass" in st.retired_reason
    assert (st.uses, st.remaining) == (3, 2)  # uses left, but the set is retired
    with pytest.raises(TestSetRetired, match="first pass"):
        led.reserve(REPO, DS, H, "firstChange")


def test_k_pass_retires_at_the_kth_pass(led):
    """2-pass: every verdict is visible; the second pass (not the first) retires the set."""
    H = 6
    verdicts = ["pass", "fail", "pass"]
    for i, v in enumerate(verdicts):
        r = led.reserve(REPO, DS, H, "2-pass", commit=f"c{i}", base="b")
        st = led.commit(r.use_id, v)
        assert led.use(r.use_id).developer_may_see
        assert st.retired is (i == len(verdicts) - 1)
    assert st.retired_reason == "pass 2 of 2 under adaptivity 2-pass" and st.remaining == H - 3
    with pytest.raises(TestSetRetired, match="pass 2 of 2"):
        led.reserve(REPO, DS, H, "2-pass")


def test_first_change_also_retires_after_h_failures(led):
    for _ in range(2):
        st = led.commit(led.reserve(REPO, DS, 2, "firstChange").use_id, "fail")
    assert st.retired and st.retired_reason == "budget of 2 uses spent"


def test_rotation_starts_a_new_entry_and_keeps_history(led):
    for _ in range(2):
        led.commit(led.reserve(REPO, DS, 2, "full").use_id, "fail")
    with pytest.raises(TestSetRetired):
        led.reserve(REPO, DS, 2, "full")
    r = led.reserve(REPO, DS2, 4, "none")  # a new test set may change budget and policy
    assert (r.use_number, r.remaining) == (1, 3)
    entries = led.entries(REPO)
    assert [(e.dataset_id, e.uses, e.retired) for e in entries] == [(DS, 2, True), (DS2, 1, False)]
    assert [u.dataset_id for u in led.history(REPO)] == [DS, DS, DS2]
    assert len(led.uses(REPO, DS)) == 2
    led.reserve("other/repo", DS, 2, "full")  # same file in another repo: its own budget
    assert [e.repo for e in led.entries()] == ["acme/model", "acme/model", "other/repo"]


def test_budget_and_policy_fixed_per_test_set(led):
    led.reserve(REPO, DS, 3, "full")
    with pytest.raises(PolicyMismatch, match="first used with steps=3, adaptivity=full"):
        led.reserve(REPO, DS, 10, "full")
    with pytest.raises(LedgerError, match="commit a new test set"):
        led.reserve(REPO, DS, 3, "none")
    with pytest.raises(ValueError, match="unknown adaptivity"):
        led.reserve(REPO, DS, 3, "sometimes")
    with pytest.raises(LedgerError, match="positive integer"):
        led.reserve(REPO, DS, 0, "full")
    with pytest.raises(LedgerError, match="verdict must be"):
        led.commit(1, "unknown")
    assert led.state(REPO, DS).uses == 1


def test_threads_race_for_the_last_use(ledger_url):
    H, threads = 4, 16
    with Ledger(ledger_url) as led:
        for _ in range(H - 1):
            led.commit(led.reserve(REPO, DS, H, "full").use_id, "fail")
        winners, losers, errors = [], [], []
        barrier = threading.Barrier(threads)

        def contender() -> None:
            barrier.wait()
            try:
                winners.append(led.reserve(REPO, DS, H, "full"))
            except TestSetExhausted:
                losers.append(1)
            except Exception as exc:  # noqa: BLE001 - any other error fails the test
                errors.append(exc)

        pool = [threading.Thread(target=contender) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        assert errors == [] and len(winners) == 1 and len(losers) == threads - 1
        assert winners[0].use_number == H and winners[0].remaining == 0
        st = led.state(REPO, DS)
        assert (st.uses, st.pending) == (H, 1)
        assert len(led.uses(REPO, DS)) == H


def test_threads_race_from_empty_never_overspend(ledger_url):
    H, threads = 7, 24
    with Ledger(ledger_url) as led:
        got, barrier = [], threading.Barrier(threads)

        def contender() -> None:
            barrier.wait()
            try:
                got.append(led.reserve(REPO, DS2, H, "none").use_number)
            except TestSetExhausted:
                pass

        pool = [threading.Thread(target=contender) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(60)
        assert sorted(got) == list(range(1, H + 1))
        assert led.state(REPO, DS2).uses == H


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=CHILD.parent)


def test_processes_race_for_the_last_use(ledger_url, tmp_path):
    H, procs = 3, 4
    with Ledger(ledger_url) as led:
        for _ in range(H - 1):
            led.commit(led.reserve(REPO, DS, H, "full").use_id, "fail")
    go = tmp_path / "go"
    children = [_spawn("race", ledger_url, REPO, DS, str(H), str(tmp_path / f"ready{i}"), str(go))
                for i in range(procs)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(procs)):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()
    outs = []
    for c in children:
        out, err = c.communicate(timeout=60)
        assert c.returncode == 0, err
        outs.append(out.strip())
    assert sum(o.startswith("WON") for o in outs) == 1, outs
    assert sum(o == "LOST TestSetExhausted" for o in outs) == procs - 1, outs
    with Ledger(ledger_url) as led:
        assert led.state(REPO, DS).uses == H and len(led.uses(REPO, DS)) == H


def test_crash_between_reserve_and_commit_keeps_the_use_spent(ledger_url):
    with Ledger(ledger_url) as led:
        led.commit(led.reserve(REPO, DS, 3, "full").use_id, "fail")
    child = _spawn("reserve-and-hang", ledger_url, REPO, DS, "3")
    line = child.stdout.readline().strip()
    assert line.startswith("RESERVED"), child.stderr.read() if child.poll() is not None else line
    use_id = int(line.split()[1])
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    with Ledger(ledger_url) as led:  # opens cleanly after the crash
        st = led.state(REPO, DS)
        assert (st.uses, st.remaining, st.pending) == (2, 1, 1)
        assert led.use(use_id).state == "reserved" and led.use(use_id).commit == "doomed"
        last = led.reserve(REPO, DS, 3, "full")  # only one use left, not two
        assert last.use_number == 3 and last.remaining == 0
        with pytest.raises(TestSetExhausted):
            led.reserve(REPO, DS, 3, "full")


def test_crash_inside_a_write_transaction_rolls_back(ledger_url):
    with Ledger(ledger_url) as led:
        led.reserve(REPO, DS, 5, "full")
    child = _spawn("hang-in-transaction", ledger_url, REPO, DS)
    line = child.stdout.readline().strip()
    assert line == "IN-TRANSACTION", child.stderr.read() if child.poll() is not None else line
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    t0 = time.monotonic()
    with Ledger(ledger_url, busy_timeout=10) as led:
        assert led.state(REPO, DS).uses == 1  # the killed transaction left no trace
        r = led.reserve(REPO, DS, 5, "full")  # and no lock
        assert r.use_number == 2
    assert time.monotonic() - t0 < 8


def test_url_forms(tmp_path, monkeypatch):
    assert normalize_url(tmp_path / "l.sqlite") == f"sqlite:///{tmp_path / 'l.sqlite'}"
    monkeypatch.setenv("EASEML_LEDGER_URL", "sqlite:////x/y.sqlite")
    assert normalize_url(None) == "sqlite:////x/y.sqlite"
    with Ledger(tmp_path / "deep" / "dir" / "l.sqlite") as led:  # parent dirs are created
        assert led.entries() == []
        led.reserve(REPO, DS, 2, "none")
    # verdicts the developer may not see live here: the files are private
    for f in (tmp_path / "deep" / "dir").iterdir():
        assert f.stat().st_mode & 0o077 == 0, f


def test_cli_ledger_show(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    assert easeml(["ledger", "show", "--url", url]) == 0
    assert "no test set has been used yet" in capsys.readouterr().out
    with Ledger(url) as led:
        for _ in range(2):
            led.commit(led.reserve(REPO, DS, 2, "full").use_id, "fail")
        led.reserve(REPO, DS2, 5, "firstChange")
        led.reserve("other/x", DS, 3, "none")
    assert easeml(["ledger", "show", "--url", url, "--repo", REPO]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["repo", "dataset", "adaptivity", "uses", "remaining", "pending", "retired"]
    assert out[2].split()[:6] == [REPO, DS[:12], "full", "2/2", "0", "0"] and "yes" in out[2]
    assert out[3].split() == [REPO, DS2[:12], "firstChange", "1/5", "4", "1", "no"]
    assert len(out) == 4
    assert easeml(["ledger", "show", "--url", url, "--repo", REPO, "--dataset", DS[:8]]) == 0
    out = capsys.readouterr().out.splitlines()
    uses = out[out.index("") + 3:]
    assert [ln.split()[:3] for ln in uses] == [["1", "1", "committed"], ["2", "2", "committed"]]
    assert easeml(["ledger", "show", "--url", url, "--dataset", DS[:8]]) == 1  # two repos share it
    assert "matches 2 test sets" in capsys.readouterr().err
    assert easeml(["ledger", "show", "--url", "postgresql+psycopg://u:secretpw@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert "secretpw" not in err and "Traceback" not in err and "error" in err


def test_second_ledger_in_a_process_keeps_the_wal_alive(tmp_path):
    """fcntl locks belong to the process: opening and closing the database file again (as a
    second Ledger on the same path once did) dropped the live connection's SQLite locks, so
    another process closing its last connection deleted the WAL the first one still wrote
    into, and its later commits vanished."""
    path = tmp_path / "ledger.sqlite"
    url = f"sqlite:///{path}"
    first = Ledger(url)
    try:
        first.reserve(REPO, DS, 8, "full")  # the pool keeps this connection open, WAL mode
        assert Path(str(path) + "-wal").exists()
        Ledger(url).close()  # another component of the same process opens the ledger
        reader = ("import sys; from easeml_buildbot.custody.ledger import Ledger\n"
                  "led = Ledger(sys.argv[1]); print(len(led.uses(sys.argv[2], sys.argv[3]))); led.close()")
        out = subprocess.run([sys.executable, "-c", reader, url, REPO, DS],
                             capture_output=True, text=True, check=True, timeout=60)
        assert out.stdout.strip() == "1"
        assert Path(str(path) + "-wal").exists(), "the other process deleted our live WAL"
        r = first.reserve(REPO, DS, 8, "full")
        first.commit(r.use_id, "pass", result={})
        out = subprocess.run([sys.executable, "-c", reader, url, REPO, DS],
                             capture_output=True, text=True, check=True, timeout=60)
        assert out.stdout.strip() == "2", "a committed use was lost"
    finally:
        first.close()
