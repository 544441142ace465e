"""The ledger cannot be reset or double-spent (issue 11), end to end: one real master with two
real workers (local forge, ProcessRunner, a gpg-encrypted test set, aiosmtpd for the
operator's mail), a real SQLite ledger and Buildbot's own SQLite database. The stages run in
file order on the same master and build on each other:

1. a model that reads the features, prints them and exits non-zero: the use counts;
2. two builds of one head against one base at the same moment: one use, both report it;
3. the master is SIGKILLed inside "record result" (right after the first of: ledger commit,
   retry-marker cleared), restarted, and Buildbot retries the build: still one use;
4. the ledger is replaced by an older copy of itself while the master is down: refused;
5. the ledger is deleted while the master runs, then the master restarts: refused, and the
   operator is told each time.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from easeml_buildbot.custody.ledger import Ledger
from support.buildbot_harness import VENV_BIN, BuildbotHarness, _clean_env
from support.github_sim_world import require_worker_cli
from support.models import PREDICT_PY, make_model_repo
from support.smtp import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")]

PROJECT = "acme/ledger"
OPERATOR = "ops@example.com"

# master.cfg extra: SIGKILL the master right after the first of (a) the ledger commit of a
# use, (b) Buildbot's state clearing a build request's open-use marker, while KILL_MARK exists
KILL_HOOK = '''
import os as _os, signal as _signal
from buildbot.db import state as _state
from easeml_buildbot.custody import ledger as _ledger
_MARK = {mark!r}
def _die_if_marked():
    if _os.path.exists(_MARK):
        _os.unlink(_MARK)
        _os.kill(_os.getpid(), _signal.SIGKILL)
_commit = _ledger.Ledger.commit
def _commit_then_die(self, *a, **k):
    out = _commit(self, *a, **k)
    _die_if_marked()
    return out
_ledger.Ledger.commit = _commit_then_die
_set_state = _state.StateConnectorComponent.setState
def _set_state_then_die(self, objectid, name, value):
    d = _set_state(self, objectid, name, value)
    if str(name).startswith("buildrequest-") and value is None:
        d.addCallback(lambda r: (_die_if_marked(), r)[1])
    return d
_state.StateConnectorComponent.setState = _set_state_then_die
'''


def crashing_model() -> str:
    """Reads the features, prints them (stderr) and exits 1 before writing predictions."""
    return PREDICT_PY.replace(
        "    preds = predict(w, load_features(feats))\n",
        "    x = load_features(feats)\n    print(x[:5], file=sys.stderr)\n    sys.exit(1)\n"
        "    preds = predict(w, x)\n", 1)


def slow_model(seconds: float) -> str:
    return PREDICT_PY.replace("def main():\n", f"def main():\n    import time\n    time.sleep({seconds})\n", 1)


class World:
    def __init__(self, tmp, service_keys, smtp):
        require_worker_cli()
        self.repo = make_model_repo(tmp / "repo", public_key=service_keys.public, quality=0.8,
                                    condition="n > 0.6 +/- 0.1", reliability=0.95, adaptivity="full",
                                    steps=8, email=("owner@example.com",))
        self.ledger_path = tmp / "ledger.sqlite"
        self.kill_mark = tmp / "kill-in-record-result"
        self.smtp = smtp
        settings = {
            "ledger_url": f"sqlite:///{self.ledger_path}",
            "local": {"repo": str(self.repo.path), "branch": "main", "poll_interval": 1, "project": PROJECT},
            "email_enabled": True, "operator_email": OPERATOR, "allowed_email_domains": ["example.com"],
            "smtp": {"host": smtp.host, "port": smtp.port, "from_addr": "easeml-ci@example.com"},
        }
        env = {"EASEML_WORKER_KEY": str(service_keys.private), "EASEML_WORKER_RUNNER": "process"}
        if service_keys.passphrase_file:
            env["EASEML_WORKER_PASSPHRASE_FILE"] = str(service_keys.passphrase_file)
        self.bb = BuildbotHarness(tmp / "bb", settings=settings, workers=2, worker_env=env,
                                  master_cfg_extra=KILL_HOOK.format(mark=str(self.kill_mark)),
                                  env={"EASEML_SMTP_ATTEMPTS": "2", "EASEML_SMTP_BACKOFF": "0.2"})
        self.bb.start()
        self.done = 0
        self.bb.wait_first_poll()

    def next_builds(self, n=1, timeout=180):
        builds = self.bb.wait_for_builds(self.done + n, timeout=timeout)
        new, self.done = builds[self.done:self.done + n], self.done + n
        return [(b, self.bb.build_properties(b["buildid"])) for b in new]

    def uses(self, head=None):
        with Ledger(self.ledger_path) as led:
            uses = led.uses(PROJECT, self.repo.dataset_id)
        return [u for u in uses if head is None or u.commit == head]

    def restart_master(self, *, kill=False, before_start=None):
        bb = self.bb
        if bb.master_proc.poll() is None:
            os.kill(bb.master_proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        bb.master_proc.wait(timeout=60)
        if before_start:
            before_start()
        bb.master_proc = bb._spawn([str(VENV_BIN / "buildbot"), "start", "--nodaemon", str(bb.master_dir)],
                                   bb.master_dir, _clean_env(bb.env))
        bb._wait(bb._www_up, "the restarted master", bb.master_proc)
        for i in range(len(bb.worker_dirs)):
            bb._wait(lambda: bb._worker_connected(f"worker{i + 1}"), f"worker{i + 1} to reconnect",
                     bb.worker_procs[i])

    def operator_mails(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            ops = [m for m in self.smtp.messages if m.rcpt_tos == [OPERATOR]]
            if len(ops) >= count or time.monotonic() > deadline:
                return ops
            time.sleep(0.3)


@pytest.fixture(scope="module")
def world(tmp_path_factory, service_keys):
    tmp = tmp_path_factory.mktemp("ledger-e2e")
    with SmtpServer() as smtp:
        w = World(tmp, service_keys, smtp)
        try:
            yield w
        finally:
            w.bb.stop()


def test_a_model_that_saw_the_features_and_crashed_spends_its_use(world):
    head = world.repo.commit_model(quality=0.9, branch="main", predict_py=crashing_model(),
                                   message="prints its input, exits 1")
    ((b, p),) = world.next_builds()
    import sqlite3  # an operator's online backup (the live ledger is in WAL mode)

    world.backup = world.ledger_path.with_suffix(".backup")
    src, dst = sqlite3.connect(world.ledger_path), sqlite3.connect(world.backup)
    src.backup(dst)  # for stage 4: an old copy of the ledger
    src.close(), dst.close()
    assert p["easeml_status"] == "model_error", (p, world.bb.master_log()[-4000:])
    (use,) = world.uses(head.sha)
    assert (use.state, use.verdict) == ("committed", None)  # counted: the model saw the features
    assert not p.get("easeml_released")
    with Ledger(world.ledger_path) as led:
        assert p["easeml_uses_left"] == led.state(PROJECT, world.repo.dataset_id).remaining == 7


def test_concurrent_builds_of_one_head_and_base_spend_one_use(world):
    head = world.repo.commit_model(quality=0.3, branch="side", predict_py=slow_model(6),
                                   message="slow model, delivered twice")
    for _ in range(2):  # two workers: both builds run at once, both reach "reserve" together
        world.bb.force_build(revision=head.sha, branch="side", repository=str(world.repo.path),
                             project=PROJECT, easeml_repo=PROJECT)
    builds = world.next_builds(2)
    props = [p for _, p in builds]
    assert [p["easeml_status"] for p in props] == ["evaluated", "evaluated"], props
    assert {p["easeml_verdict"] for p in props} == {"fail"}
    uses = world.uses(head.sha)
    assert [u.state for u in uses] == ["committed"], uses
    assert {p["easeml_use_id"] for p in props} == {uses[0].id}
    assert sorted(bool(p.get("easeml_reused")) for p in props) == [False, True]
    assert {p["easeml_uses_left"] for p in props} == {6}
    twin = next(b for b, p in builds if p.get("easeml_reused"))
    assert "waiting for its result instead of spending a second use" in world.bb.step_logs_text(twin["buildid"])


def test_master_killed_inside_record_result_leaves_one_use(world):
    world.kill_mark.write_text("1")
    head = world.repo.commit_model(quality=0.9, branch="main", message="recorded, then the master dies", predict_py=PREDICT_PY)
    deadline = time.monotonic() + 180
    while world.bb.master_proc.poll() is None:
        assert time.monotonic() < deadline, "the master was never killed inside record result"
        time.sleep(0.2)
    assert not world.kill_mark.exists()
    world.restart_master()
    bb = world.bb
    # Buildbot marks the dead master's build RETRY and runs the request again
    deadline = time.monotonic() + 180
    while True:
        builds = [b for b in bb.api("builds", order="buildid") if b.get("complete")]
        retried = [b for b in builds[world.done:] if bb.build_properties(b["buildid"]).get("easeml_status")]
        if retried:
            break
        assert time.monotonic() < deadline, bb.master_log()[-6000:]
        time.sleep(0.5)
    world.done = len(builds)
    p = bb.build_properties(retried[-1]["buildid"])
    uses = world.uses(head.sha)
    assert [u.state for u in uses] == ["committed"], uses  # one use, nothing reserved forever
    info = [(b["buildid"], b["results"], {k: v for k, v in bb.build_properties(b["buildid"]).items()
                                          if k.startswith("easeml_") and k != "easeml_email"})
            for b in builds[-3:]]
    assert p["easeml_status"] == "evaluated" and p["easeml_use_id"] == uses[0].id, info
    with Ledger(world.ledger_path) as led:
        st = led.state(PROJECT, world.repo.dataset_id)
    assert (st.pending, st.uses) == (0, 3) and p["easeml_uses_left"] == st.remaining == 5


def test_an_old_copy_of_the_ledger_is_refused(world):
    def restore():
        for f in world.ledger_path.parent.glob("ledger.sqlite*"):
            f.unlink()
        shutil.copy(world.backup, world.ledger_path)  # same instance id, fewer reservations

    world.restart_master(before_start=restore)
    head = world.repo.commit_model(quality=0.95, branch="main", message="after the restore", predict_py=PREDICT_PY)
    ((b, p),) = world.next_builds()
    assert p["easeml_status"] == "infra_error", p
    assert "ledger is behind" in p["easeml_cause"] and "no use was handed out" in p["easeml_cause"]
    assert world.uses(head.sha) == []
    assert "refusing to evaluate" in world.bb.master_log()
    ops = world.operator_mails(1)
    assert ops and "service-side failure" in ops[-1].message["Subject"]


def test_a_deleted_ledger_is_refused_while_running_and_after_a_restart(world):
    before = len(world.operator_mails(1))
    for f in world.ledger_path.parent.glob("ledger.sqlite*"):
        f.unlink()
    head = world.repo.commit_model(quality=0.96, branch="main", message="after the deletion", predict_py=PREDICT_PY)
    ((b, p),) = world.next_builds()
    assert p["easeml_status"] == "infra_error", p
    assert "deleted or replaced" in p["easeml_cause"] and "no use was handed out" in p["easeml_cause"]
    world.restart_master()  # a new, empty ledger file is created at start
    head2 = world.repo.commit_model(quality=0.97, branch="main", message="after the restart", predict_py=PREDICT_PY)
    ((b, p),) = world.next_builds()
    assert p["easeml_status"] == "infra_error", p
    assert "not the one this service has been using" in p["easeml_cause"]
    assert world.uses(head.sha) == [] and world.uses(head2.sha) == [] and world.uses() == []
    ops = world.operator_mails(before + 2)
    assert len(ops) >= before + 2, [m.message["Subject"] for m in ops]
