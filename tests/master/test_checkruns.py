"""The check runs' desired state (``master.checkruns``) without a master: ordering, leases
between masters (SQLite and a real PostgreSQL), backoff, and ``push`` against the GitHub
stand-in when GitHub answers too late (a create whose answer is lost is found, not repeated).
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from easeml_buildbot.master.checkruns import CheckRunStore, push
from support.github_sim import APP_ID, app_sim  # noqa: F401  (fixture)
from support.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

HEAD = dict(repo="o/r", head_sha="a" * 40, name="easeml/ci", installation_id=5)


def _queued():
    return {"status": "queued", "output": {"title": "Queued", "summary": "Waiting for a worker."}}


def _started():
    return {"status": "in_progress", "started_at": "2026-12-01T10:00:00Z",
            "output": {"title": "Evaluating", "summary": "..."}}


def _done(conclusion="success"):
    return {"status": "completed", "conclusion": conclusion, "completed_at": "2026-12-01T10:01:00Z",
            "output": {"title": "t", "summary": "s"}}


def _store(url, now, **kw):
    return CheckRunStore(sa.create_engine(url), clock=lambda: now[0], **kw)


def test_newer_states_supersede_older_ones_and_never_the_reverse(tmp_path):
    now = [100.0]
    st = _store(f"sqlite:///{tmp_path}/l.sqlite", now)
    assert st.desire(**HEAD, order=(7, 0, 0), desired=_queued())
    assert st.desire(**HEAD, order=(7, 30, 1), desired=_started())
    assert st.desire(**HEAD, order=(7, 30, 2), desired=_done())
    assert not st.desire(**HEAD, order=(7, 30, 1), desired=_started())  # late in_progress
    assert not st.desire(**HEAD, order=(7, 30, 2), desired=_done())  # the same report, another master
    (row,) = st.rows()
    assert row["desired"]["status"] == "completed" and row["version"] == 3
    # a worker was lost: build 30 ended RETRY (queued again), build 31 of the same request starts
    assert st.desire(**HEAD, order=(8, 0, 0), desired=_queued())  # a re-run: a newer build request
    assert st.desire(**HEAD, order=(8, 41, 2), desired={**_queued(), "output": {"title": "Queued again"}})
    assert st.desire(**HEAD, order=(8, 42, 1), desired=_started())
    assert not st.desire(**HEAD, order=(7, 30, 2), desired=_done("failure"))  # the old request's result
    assert len(st.rows()) == 1 and st.rows()[0]["desired"]["status"] == "in_progress"
    # another check name on the same head is another run
    assert st.desire(**{**HEAD, "name": "easeml/ci (into dev)"}, order=(1, 0, 0), desired=_queued())
    assert len(st.rows()) == 2


def test_a_claim_is_a_lease_one_master_at_a_time(tmp_path):
    now = [100.0]
    url = f"sqlite:///{tmp_path}/l.sqlite"
    a, b = _store(url, now, lease=30), _store(url, now, lease=30)
    a.desire(**HEAD, order=(1, 0, 0), desired=_queued())
    (row,) = a.claim()
    assert b.claim() == [] and a.claim() == []
    a.desire(**HEAD, order=(1, 5, 1), desired=_started())  # newer state while the write is in flight
    assert a.synced(row, 1001)
    (again,) = b.claim()  # still dirty: version 2 is not on GitHub yet
    assert again.version == 2 and again.check_run_id == 1001 and again.desired["status"] == "in_progress"
    now[0] += 31  # b died holding it: the lease expires and a goes on
    (taken,) = a.claim()
    assert not b.synced(again, 1001)  # the dead master's late answer is not recorded
    assert a.synced(taken, 1001) and a.depth() == 0 and a.claim() == []


def test_failures_back_off_doubling_up_to_the_cap_and_look_up_before_creating(tmp_path):
    now = [100.0]
    st = _store(f"sqlite:///{tmp_path}/l.sqlite", now, backoff=1, max_backoff=5)
    st.desire(**HEAD, order=(1, 0, 0), desired=_queued())
    delays = []
    for _ in range(5):
        (row,) = st.claim()
        assert row.lookup == bool(delays)  # after a failed create, look first
        delays.append(st.failed(row, "GithubException: 500"))
        assert st.claim() == []  # not due yet
        now[0] += delays[-1]
    assert delays == [1, 2, 4, 5, 5]
    st.desire(**HEAD, order=(1, 3, 1), desired=_started())  # a new state is tried at once
    (row,) = st.claim()
    assert row.attempts == 0 and row.lookup
    now[0] += 4 * 24 * 3600  # refused for longer than the expiry: left alone
    st.failed(row, "GithubException: 404")
    now[0] += 10
    assert st.claim() == []


def test_two_masters_on_one_postgres_claim_each_run_once(postgres_url):
    now = [100.0]
    stores = [_store(postgres_url, now) for _ in range(2)]
    for i in range(30):
        stores[0].desire(**{**HEAD, "head_sha": f"{i:040x}"}, order=(i, 0, 0), desired=_queued())
    won: list[list[int]] = [[], [], [], []]

    def take(k):
        st = stores[k % 2]
        for _ in range(10):
            won[k].extend(r.id for r in st.claim(limit=5))

    workers = [threading.Thread(target=take, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    everything = sorted(i for w in won for i in w)
    assert everything == sorted({r["id"] for r in stores[0].rows()}) and len(everything) == 30


def test_a_create_whose_answer_is_lost_is_found_and_updated_not_repeated(app_sim, tmp_path):
    from easeml_buildbot.master.github_app import GitHubApp

    app = GitHubApp(APP_ID, app_sim.app_key, app_sim.url, timeout=1, seconds_between_requests=0, seconds_between_writes=0)
    app.installation_token(5)  # before GitHub turns slow
    now = [100.0]
    st = _store(f"sqlite:///{tmp_path}/l.sqlite", now, backoff=1)
    st.desire(**HEAD, order=(1, 0, 0), desired=_queued())
    app_sim.slow(2.5, delay=2)  # handled, answered after the client gave up
    (row,) = st.claim()
    with pytest.raises(Exception):
        push(app, row)
    st.failed(row, "timeout")
    assert len(app_sim.check_runs) == 1  # GitHub made it
    app_sim.wait_for(lambda: False, timeout=2.6)  # GitHub is fast again
    st.desire(**HEAD, order=(1, 9, 2), desired=_done())
    (row,) = st.claim()
    assert row.lookup and row.check_run_id is None
    run_id = push(app, row)
    assert st.synced(row, run_id)
    (run,) = app_sim.check_runs.values()
    assert run["id"] == run_id and run["status"] == "completed" and run["conclusion"] == "success"
    # known id: one PATCH, no lookup, no create
    st.desire(**HEAD, order=(2, 0, 0), desired=_queued())
    (row,) = st.claim()
    before = len(app_sim.requests)
    assert push(app, row) == run_id
    assert [r.operation for r in app_sim.requests[before:]] == ["checks/update"]
    assert app_sim.errors() == []


@pytest.mark.parametrize("held, then, grace", [
    ((0, _queued), (1, _started), {"queued_grace": 1.0}),
    ((1, _started), (2, _done), {"queued_grace": 1.0, "started_grace": 2.0}),
], ids=["queued-then-started", "started-then-completed"])
def test_a_state_superseded_within_its_grace_is_never_written(tmp_path, held, then, grace):
    """A queued state waits ``queued_grace``, an in_progress one ``started_grace``: a newer
    state meanwhile (the build started; it ended) is the run's first write, made directly in
    that state (one write fewer); a state nothing supersedes is written once its grace is
    over; a completed state is never held back."""
    (phase, state), (next_phase, next_state) = held, then
    wait = grace["started_grace" if phase else "queued_grace"]
    now = [100.0]
    st = _store(f"sqlite:///{tmp_path}/l.sqlite", now, **grace)
    assert st.desire(**HEAD, order=(7, 30, phase), desired=state())
    now[0] += 0.9 * wait
    assert st.claim() == []  # not yet: the build may start (end)
    assert st.desire(**HEAD, order=(7, 30, next_phase), desired=next_state())
    (row,) = st.claim()
    assert row.desired["status"] == next_state()["status"] and row.check_run_id is None and row.version == 2
    assert st.synced(row, 991)
    # another head whose build waits for a worker (runs long): written once the grace is over
    other = {**HEAD, "head_sha": "b" * 40}
    assert st.desire(**other, order=(8, 31, phase), desired=state())
    now[0] += 0.9 * wait
    assert st.claim() == []
    now[0] += 0.2 * wait
    (row,) = st.claim()
    assert row.head_sha == "b" * 40 and row.desired["status"] == state()["status"]
    # a completed state is never held back
    assert st.desire(**HEAD, order=(7, 32, 2), desired=_done())
    (row,) = st.claim()
    assert row.desired["status"] == "completed" and row.check_run_id == 991
