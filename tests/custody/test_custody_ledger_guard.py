"""The ledger cannot be reset, double-spent or re-promised (issue 11), on real SQLite and
PostgreSQL: (head, base) claims under process races, the instance id, 64-bit budgets, the
migration of a ledger made by the previous schema, the whole promise bound to a test set,
uses spent without a verdict."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from easeml_buildbot.custody.ledger import Ledger, LedgerError, PolicyMismatch, TestSetExhausted

REPO = "acme/model"
DS = "c" * 64
HEAD, BASE = "1" * 40, "2" * 40
CHILD = Path(__file__).with_name("ledger_child.py")


def test_reserving_is_idempotent_per_head_and_base(led):
    a = led.reserve(REPO, DS, 4, "full", commit=HEAD, base=BASE)
    assert a.fresh and a.use_number == 1
    twin = led.reserve(REPO, DS, 4, "full", commit=HEAD, base=BASE)  # while a is open
    assert (twin.fresh, twin.use_id, twin.state, twin.remaining) == (False, a.use_id, "reserved", 3)
    assert led.state(REPO, DS).uses == 1
    led.commit(a.use_id, "pass", result={"base": BASE})
    again = led.reserve(REPO, DS, 4, "full", commit=HEAD, base=BASE)  # after it committed
    assert (again.fresh, again.use_id, again.state) == (False, a.use_id, "committed")
    other_base = led.reserve(REPO, DS, 4, "full", commit=HEAD, base="3" * 40)
    assert other_base.fresh and other_base.use_number == 2
    led.release(other_base.use_id, reason="the image did not build")  # a release drops the claim
    retry = led.reserve(REPO, DS, 4, "full", commit=HEAD, base="3" * 40)
    assert retry.fresh and retry.use_id != other_base.use_id
    assert led.state(REPO, DS).uses == 2 and led.state(REPO, DS).reservations == 3


def test_a_duplicate_of_the_last_use_is_not_exhausted(led):
    a = led.reserve(REPO, DS, 1, "full", commit=HEAD, base=BASE)
    led.commit(a.use_id, "fail")
    # the set is spent and retired; the duplicate still gets its twin's use back
    twin = led.reserve(REPO, DS, 1, "full", commit=HEAD, base=BASE)
    assert (twin.fresh, twin.use_id) == (False, a.use_id)
    with pytest.raises(TestSetExhausted):
        led.reserve(REPO, DS, 1, "full", commit="4" * 40, base=BASE)


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=CHILD.parent)


TRIALS, PROCS = 3, 4


def test_processes_racing_with_one_head_spend_one_use(ledger_url, tmp_path):
    """opened + rerequested (+ more) delivered at once, in separate processes: one use."""
    spent = []
    for trial in range(TRIALS):
        head = f"{trial:040d}"
        go = tmp_path / f"go{trial}"
        ready = [tmp_path / f"ready{trial}-{i}" for i in range(PROCS)]
        children = [_spawn("dup", ledger_url, REPO, DS, "32", str(r), str(go), head, BASE) for r in ready]
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready):
            assert time.monotonic() < deadline, "children did not start"
            time.sleep(0.01)
        go.touch()
        outs = []
        for c in children:
            out, err = c.communicate(timeout=60)
            assert c.returncode == 0, err
            outs.append(out.split())
        assert sum(o[0] == "WON" for o in outs) == 1, outs
        assert sum(o[0] == "DUP" for o in outs) == PROCS - 1, outs
        assert len({o[1] for o in outs}) == 1, outs  # all name the same use
        with Ledger(ledger_url) as led:
            spent.append(len([u for u in led.uses(REPO, DS) if u.commit == head]))
    assert spent == [1] * TRIALS
    with Ledger(ledger_url) as led:
        assert led.state(REPO, DS).uses == TRIALS


def test_budget_of_a_trillion_steps_fits(led):
    r = led.reserve(REPO, DS, 10**12, "none")
    assert (r.budget, r.remaining) == (10**12, 10**12 - 1)
    assert led.state(REPO, DS).budget == 10**12


def test_the_whole_promise_is_bound_to_the_test_set(led):
    promise = dict(condition="n - o > 0.02 +/- 0.01", reliability=0.9999, mode="fp-free", method="hoeffding")
    led.reserve(REPO, DS, 8, "full", **promise)
    # the same promise, written differently, is not a change
    led.reserve(REPO, DS, 8, "full", condition="n-o>0.02+/-0.01", reliability="0.99990",
                mode="fp-free", method="hoeffding")
    for key, value in (("condition", "n - o > 0.01 +/- 0.01"), ("reliability", 0.99),
                       ("mode", "fn-free"), ("method", "betting")):
        with pytest.raises(PolicyMismatch, match=f"{key}=") as exc:
            led.reserve(REPO, DS, 8, "full", **{**promise, key: value})
        assert "commit a new test set" in str(exc.value)
    st = led.state(REPO, DS)
    assert st.uses == 2 and (st.reliability, st.mode, st.method) == ("0.9999", "fp-free", "hoeffding")
    assert st.condition == "n - o > 0.02 +/- 0.01"


def test_a_use_spent_without_a_verdict_counts(led):
    r = led.reserve(REPO, DS, 2, "firstChange", commit=HEAD, base=BASE)
    st = led.commit(r.use_id, None, result={"status": "model_error", "spent": True})
    assert (st.uses, st.committed, st.retired) == (1, 1, False)
    assert led.commit(r.use_id, None).uses == 1  # a safe retry
    with pytest.raises(LedgerError, match="never given back"):
        led.release(r.use_id, reason="retry path")
    assert led.reserve(REPO, DS, 2, "firstChange", commit=HEAD, base=BASE).fresh is False


def test_instance_id_is_made_with_the_schema_and_kept(ledger_url, tmp_path):
    with Ledger(ledger_url) as a, Ledger(ledger_url) as b:
        assert a.instance_id() == b.instance_id() and len(a.instance_id()) == 32
    other = tmp_path / "other.sqlite"
    with Ledger(other) as c, Ledger(ledger_url) as a:
        assert c.instance_id() != a.instance_id()


def test_a_sqlite_ledger_deleted_while_open_is_noticed(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path)
    led.reserve(REPO, DS, 4, "full")
    before = led.instance_id()
    for f in tmp_path.glob("ledger.sqlite*"):
        f.unlink()
    with pytest.raises(LedgerError, match="deleted or replaced"):
        led.instance_id()
    led.close()
    with Ledger(path) as fresh:
        assert fresh.instance_id() != before and fresh.state(REPO, DS) is None


# the schema the previous release created (int4 counts, no promise, no claims, no instance)
OLD = sa.MetaData()
sa.Table("easeml_testsets", OLD,
         sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("repo", sa.String(255), nullable=False),
         sa.Column("dataset_id", sa.String(64), nullable=False),
         sa.Column("budget", sa.Integer, nullable=False),
         sa.Column("adaptivity", sa.String(16), nullable=False),
         sa.Column("uses", sa.Integer, nullable=False, default=0),
         sa.Column("retired", sa.Boolean, nullable=False, default=False),
         sa.Column("retired_reason", sa.Text, nullable=True),
         sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
         sa.Column("retired_by_use", sa.Integer, nullable=True),
         sa.Column("condition", sa.Text, nullable=True),
         sa.Column("samples_needed", sa.Integer, nullable=True),
         sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
         sa.UniqueConstraint("repo", "dataset_id", name="uq_easeml_testsets_repo_dataset"),
         sa.CheckConstraint("uses >= 0 AND uses <= budget", name="ck_easeml_testsets_uses"))
sa.Table("easeml_uses", OLD,
         sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("testset_id", sa.Integer, sa.ForeignKey("easeml_testsets.id"), nullable=False, index=True),
         sa.Column("use_number", sa.Integer, nullable=False),
         sa.Column("state", sa.String(16), nullable=False),
         sa.Column("commit_sha", sa.String(64), nullable=True),
         sa.Column("build", sa.Text, nullable=True),
         sa.Column("condition", sa.Text, nullable=True),
         sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
         sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
         sa.Column("verdict", sa.String(8), nullable=True),
         sa.Column("result", sa.JSON, nullable=True),
         sa.Column("notified", sa.JSON, nullable=True),
         sa.Column("release_reason", sa.Text, nullable=True))


def test_a_ledger_of_the_previous_schema_keeps_working(ledger_url):
    engine = sa.create_engine(ledger_url)
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        OLD.create_all(conn)
        conn.execute(OLD.tables["easeml_testsets"].insert().values(
            repo=REPO, dataset_id=DS, budget=4, adaptivity="full", uses=1, retired=False,
            condition="n > 0.8   +/- 0.05", created_at=now))
        conn.execute(OLD.tables["easeml_uses"].insert().values(
            testset_id=1, use_number=1, state="committed", commit_sha=HEAD, reserved_at=now,
            verdict="pass", result={"base": BASE}, notified=[]))
    engine.dispose()
    with Ledger(ledger_url) as led:
        st = led.state(REPO, DS)
        assert (st.uses, st.committed, st.budget, st.reservations) == (1, 1, 4, 1)
        assert (st.reliability, st.mode, st.method) == (None, None, None)
        # the recorded condition is compared normalized; the missing fields are adopted
        r = led.reserve(REPO, DS, 4, "full", commit=HEAD, base="5" * 40, condition="n > 0.8 +/- 0.05",
                        reliability=0.95, mode="fp-free", method="auto")
        assert r.fresh and r.use_number == 2
        st = led.state(REPO, DS)
        assert (st.reliability, st.mode, st.method) == ("0.95", "fp-free", "auto")
        with pytest.raises(PolicyMismatch, match="reliability="):
            led.reserve(REPO, DS, 4, "full", reliability=0.9)
        assert led.reserve(REPO, DS, 4, "full", commit=HEAD, base="5" * 40).fresh is False
        assert led.use(1).verdict == "pass"
        types = {c["name"]: c["type"] for c in sa.inspect(led.engine).get_columns("easeml_testsets")}
        if led.engine.dialect.name == "postgresql":
            assert isinstance(types["budget"], sa.BigInteger) and isinstance(types["uses"], sa.BigInteger)
            # a big budget on a migrated database: a new test set of 10**12 steps
            assert led.reserve(REPO, "d" * 64, 10**12, "none").budget == 10**12
        instance = led.instance_id()
    with Ledger(ledger_url) as again:  # migration is once; the identity stays
        assert again.instance_id() == instance and again.state(REPO, DS).uses == 2
