"""End to end, GitHub App flavour: real master + 2 workers, GitHub replaced by the local
stand-in that validates every request against GitHub's OpenAPI description, webhook bodies
from GitHub's own examples. The ProcessRunner runs the models (Docker has its own module).

All scenarios are started together on one master (two workers drain them), then each test
asserts its scenario's exact check-run sequence.
"""

from __future__ import annotations

import re
import uuid

import pytest


from support.github_sim_world import INSTALLATION, running_world

pytestmark = pytest.mark.e2e

QUEUED = ("create", "queued", None)
STARTED = ("update", "in_progress", None)
CREATED_STARTED = ("create", "in_progress", None)


def done(conclusion):
    return ("update", "completed", conclusion)


def one_run(end):
    """A head's check-run writes up to ``end``: queued first when its build waited for a
    worker longer than the reconciler's queued grace, else created in_progress directly, or
    created completed when the build ended within the started grace; a queued run whose build
    then finished within the grace or GitHub's pacing (1 s between writes) goes to completed
    directly (the reconciler writes the desired state, not every state passed)."""
    return ([QUEUED, STARTED, end], [CREATED_STARTED, end], [QUEUED, end], [("create", *end[1:])])


def first_run(seq):
    """The writes of ``seq`` up to and with the first completed one."""
    ends = [i for i, (_v, status, _c) in enumerate(seq) if status == "completed"]
    return seq[:ends[0] + 1] if ends else seq


@pytest.fixture(scope="module")
def world(tmp_path_factory, service_keys):
    with running_world(tmp_path_factory.mktemp("gh"), service_keys, workers=2) as w:
        yield w


def spend_earlier_use(world, name, repo, *, steps, verdict):
    """One committed use of ``repo``'s test set under ``steps``, as an earlier build would leave."""
    from easeml_buildbot.custody.ledger import Ledger

    led = Ledger(world.ledger_url)
    try:
        r = led.reserve(repo=f"acme/{name}", dataset_id=repo.dataset_id, steps=steps, adaptivity="full",
                        commit=repo.base.sha, build="earlier", condition="n > 0.8 +/- 0.1")
        led.commit(r.use_id, verdict=verdict, result={"note": "spent by the test"}, notified=[])
    finally:
        led.close()


@pytest.fixture(scope="module")
def private_host(world):
    """The repositories over HTTP that only an unexpired installation token of ours opens."""
    import time

    from support.git_http import GitHttpServer

    def allowed(token):  # unexpired, ours, and read-only: the master's own token is refused
        inst, exp = world.sim.tokens.get(token, (None, 0))
        return (inst == INSTALLATION and exp > time.time()
                and world.sim.token_permissions.get(token) == {"contents": "read"})

    with GitHttpServer(world.base / "repos", allowed=allowed) as host:
        yield host


@pytest.fixture(scope="module")
def scenarios(world, private_host):
    """Create every repository and send every webhook, then let the workers drain them."""
    s = {}
    # pass / fail under full adaptivity: the developer sees the bit.
    for name, quality in (("pass", 0.97), ("fail", 0.5)):
        repo = world.repo(name, quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
        head = repo.commit_model(quality=quality, branch="pr-1")
        s[name] = (repo, head)
        assert world.send("pull_request", world.pr_payload(name, repo, 1, head.sha))[0] == 200
    # none: evaluated, the owners get the verdict, the PR gets "neutral".
    repo = world.repo("none", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="none", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["none"] = (repo, head)
    world.send("pull_request", world.pr_payload("none", repo, 1, head.sha))
    # exhausted: the only use of the test set was spent earlier.
    repo = world.repo("exhausted", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=1)
    spend_earlier_use(world, "exhausted", repo, steps=1, verdict="fail")
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["exhausted"] = (repo, head)
    world.send("pull_request", world.pr_payload("exhausted", repo, 1, head.sha))
    # policy: the test set was first used under steps=4; the base config now says steps=8.
    repo = world.repo("policy", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    spend_earlier_use(world, "policy", repo, steps=4, verdict="pass")
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["policy"] = (repo, head)
    world.send("pull_request", world.pr_payload("policy", repo, 1, head.sha))
    # the PR edits .easeml.yml: protected, takes effect after merge.
    repo = world.repo("protected", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    cfg = (repo.path / ".easeml.yml").read_text().replace("steps: 8", "steps: 1000")
    head = repo.commit_model(quality=0.97, branch="pr-1", files={".easeml.yml": cfg})
    s["protected"] = (repo, head)
    world.send("pull_request", world.pr_payload("protected", repo, 1, head.sha))
    # duplicate delivery: the same X-GitHub-Delivery twice, and check_suite.requested for the
    # same head (GitHub sends both for one push): one build.
    repo = world.repo("dup", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["dup"] = (repo, head)
    delivery = str(uuid.uuid4())
    payload = world.pr_payload("dup", repo, 1, head.sha, action="synchronize")
    s["dup_replies"] = [world.send("pull_request", payload, delivery=delivery) for _ in range(2)]
    world.send("check_suite", world.check_payload("check_suite", "requested", "dup", repo, 1, head.sha))
    # forged and unsigned deliveries: rejected, nothing scheduled.
    repo = world.repo("forged", quality=0.9)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    payload = world.pr_payload("forged", repo, 1, head.sha)
    s["forged_replies"] = [world.send("pull_request", payload, secret="not-the-secret"),
                           world.send("pull_request", payload, secret=None),
                           world.send("pull_request", payload, signature="sha256=" + "0" * 64)]
    # [skip ci] in the head commit message: ignored.
    repo = world.repo("skip", quality=0.9)
    head = repo.commit_model(quality=0.97, branch="pr-1", message="tweak [skip ci]")
    world.send("pull_request", world.pr_payload("skip", repo, 1, head.sha))
    # the base branch lost its test set / has a broken .easeml.yml: nothing to evaluate against.
    for name, files in (("missing", {"data/test.csv.gpg": None}),
                        ("badconfig", {".easeml.yml": "condition: n > 0.8 +/- 0.1\nstepz: 8\n"})):
        repo = world.repo(name, quality=0.9)
        base = repo.commit_files(files, branch="main", message="break the base")
        head = repo.commit_model(quality=0.97, branch="pr-1", start=base)
        s[name] = (repo, head)
        world.send("pull_request", world.pr_payload(name, repo, 1, head.sha, base_sha=base))
    # a base branch whose name is a shell command: argv everywhere, nothing runs it.
    pwned = world.base / "pwned"
    branch = f"main;touch${{IFS}}{pwned}"
    repo = world.repo("weird", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8, branch=branch)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["weird"] = (repo, head, pwned)
    payload = world.pr_payload("weird", repo, 1, head.sha)
    payload["pull_request"]["base"]["ref"] = branch
    payload["repository"]["default_branch"] = branch  # only the default branch is evaluated
    world.send("pull_request", payload)
    # check_suite.requested alone (GitHub's own suite for a push to a PR branch) schedules it.
    repo = world.repo("suite", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["suite"] = (repo, head)
    world.send("check_suite", world.check_payload("check_suite", "requested", "suite", repo, 1, head.sha))
    # a private repository: clone and base fetch authenticate with the installation token.
    repo = world.repo("private", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1")
    s["private"] = (repo, head)
    payload = world.pr_payload("private", repo, 1, head.sha)
    payload["repository"]["clone_url"] = private_host.url("private")
    world.send("pull_request", payload)
    # the developer picks the base branch: a branch of their own with a lax .easeml.yml (and
    # their address as owner), and a listed release branch with the same lax config; then the
    # same head into main. main requires n > 0.9, the model is about 0.75.
    s["side"] = _side_branches(world)
    # a YAML alias bomb on the default branch: refused when read, nothing expands.
    repo = world.repo("bomb", quality=0.9)
    base = repo.commit_files({".easeml.yml": ALIAS_BOMB}, branch="main", message="billion laughs")
    head = repo.commit_model(quality=0.97, branch="pr-1", start=base)
    s["bomb"] = (repo, head)
    world.send("pull_request", world.pr_payload("bomb", repo, 1, head.sha, base_sha=base))
    # ping and installation are acknowledged; unknown events ignored.
    from support.github_sim import webhook_example

    s["ping"] = world.send("ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    inst = webhook_example("installation", "created", full_name="acme/suite", clone_url="x", installation_id=1)
    s["installation"] = world.send("installation", inst)
    s["unknown"] = world.send("star", {"action": "created"})
    for name in ("pass", "fail", "none", "exhausted", "policy", "private", "protected", "dup", "missing", "badconfig", "weird",
                 "suite"):
        world.wait_completed(name)
    return s


ALIAS_BOMB = "condition: n > 0.8 +/- 0.1\nmodel:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8))
LAX = "condition: n > 0.5 +/- 0.1\nreliability: 0.9\nsteps: 1000\nemail: [mallory@example.com]\n"


def _side_branches(world):
    import yaml

    repo = world.repo("side", quality=0.9, condition="n > 0.9 +/- 0.1", adaptivity="full", steps=8,
                      extra_config={"branches": ["release/*"]})
    lax = yaml.safe_load((repo.path / ".easeml.yml").read_text())
    lax.update(yaml.safe_load(LAX))
    lax_text = yaml.safe_dump(lax)
    bases = {b: repo.commit_files({".easeml.yml": lax_text}, branch=b, start=repo.base.sha,
                                  message="a laxer test") for b in ("dev", "release/1")}
    head = repo.commit_model(quality=0.75, branch="pr-side", start=repo.base.sha)
    replies = {}
    for number, (ref, sha) in enumerate([*bases.items(), ("main", repo.base.sha)], start=1):
        payload = world.pr_payload("side", repo, number, head.sha, base_sha=sha)
        payload["pull_request"]["base"]["ref"] = ref
        replies[ref] = world.send("pull_request", payload)
    return repo, head, replies


def _summary(world, name):
    return [b for _, b in world.calls(name) if b.get("conclusion")][-1]["output"]


def test_every_request_matched_githubs_openapi(world, scenarios):
    assert world.sim.errors() == []
    kinds = {r.auth for r in world.sim.requests}
    assert kinds <= {"jwt", "installation"}


def test_no_secret_reaches_a_log(world, scenarios):
    from support.github_sim_world import SECRET

    texts = [world.bb.master_log()] + [(d / "twistd.log").read_text() for d in world.bb.worker_dirs]
    texts += [world.bb.step_logs_text(b["buildid"]) for b in world.bb.api("builds")[:3]]
    key_lines = [ln for ln in (world.base / "app.pem").read_text().splitlines() if "-----" not in ln]
    for text in texts:
        assert SECRET not in text
        assert not any(tok in text for tok in world.sim.tokens)
        assert not any(ln in text for ln in key_lines[:5])


def test_pass(world, scenarios):
    assert world.statuses("pass") in one_run(done("success"))
    out = _summary(world, "pass")
    assert out["title"] == "Condition satisfied"
    assert "n > 0.8 +/- 0.1" in out["summary"] and "Uses of the test set left:** 7" in out["summary"]
    # the author's address for mail comes from the head commit (the webhook names a login only)
    repo, head = scenarios["pass"]
    (build,) = [b for b in world.bb.api("builds")
                if world.bb.build_properties(b["buildid"]).get("got_revision") == head.sha]
    assert world.bb.build_properties(build["buildid"])["easeml_author_email"] == "dev@example.com"
    build = _build_for(world, scenarios["pass"][1].sha)
    logs = world.bb.step_logs_text(build["buildid"])
    acc = scenarios["pass"][1].accuracy
    assert f"{acc:.3f}" not in logs and f"{acc:.2f}" not in logs  # one bit under full, never accuracies
    first = world.calls("pass")[0][1]
    assert first["name"] == "easeml/ci" and first["head_sha"] == scenarios["pass"][1].sha


def test_fail(world, scenarios):
    assert world.statuses("fail") in one_run(done("failure"))
    out = _summary(world, "fail")
    assert out["title"] == "Condition not satisfied"
    # output.text from the CheckRunFormatter (issue 13): guarantee, what was decided, step log
    assert "every verdict is correct with probability at least" in out["text"], out["text"]
    assert "`n > 0.8 ± 0.1`: **fail** (use 1 of 8; 7 left)" in out["text"], out["text"]
    assert re.search(r"\(http://[^)]+#/builders/\d+/builds/\d+/steps/\d+/logs/stdio\)", out["text"]), out["text"]


def test_none_adaptivity_is_neutral_and_leaks_nothing(world, scenarios):
    assert world.statuses("none") in one_run(done("neutral"))
    out = _summary(world, "none")
    assert out["title"] == "Evaluated; results were sent to the owners"
    assert "went to the repository's owners only" in out["text"] and "**fail**" not in out["text"]
    text = re.sub(r"\(http[^)]*\)", "", out["summary"] + out["text"])
    text = text.replace("0.8", "").replace("0.1", "").replace("0.999", "").replace("δ = 0.001", "")
    assert not re.search(r"\d\.\d", text), text
    # the Buildbot UI is visible to developers too: no verdict, no accuracy in properties or logs
    build = _build_for(world, scenarios["none"][1].sha)
    props = world.bb.build_properties(build["buildid"])
    assert "easeml_verdict" not in props and props["easeml_status"] == "evaluated"
    # (Buildbot's own "elapsedTime=0.957959" footers are digits too: not the model's)
    logs = re.sub(r"elapsedTime=[0-9.]+", "", world.bb.step_logs_text(build["buildid"]))
    acc = scenarios["none"][1].accuracy
    assert f"{acc:.3f}" not in logs and f"{acc:.2f}" not in logs
    assert "pass" not in props.get("easeml_cause", "")


def test_exhausted_test_set_requires_action(world, scenarios):
    assert world.statuses("exhausted") in one_run(done("action_required"))
    assert "exhausted" in _summary(world, "exhausted")["title"].lower()


def test_changed_policy_of_a_used_test_set_is_a_config_error(world, scenarios):
    from easeml_buildbot.custody.ledger import Ledger

    assert world.statuses("policy") in one_run(done("failure"))
    out = _summary(world, "policy")
    assert out["title"] == "Configuration error" and "steps" in out["summary"]
    repo, _ = scenarios["policy"]
    led = Ledger(world.ledger_url)
    try:  # only the earlier use: the refused build spent nothing
        assert len(led.uses("acme/policy", repo.dataset_id, include_released=True)) == 1
    finally:
        led.close()


def test_private_repository_clones_with_the_installation_token(world, scenarios, private_host):
    assert world.statuses("private") in one_run(done("success"))
    refused = [p for p, ok in private_host.requests if not ok]
    served = [p for p, ok in private_host.requests if ok]
    assert refused and any(p.endswith("/git-upload-pack") for p in served)
    (build,) = [b for b in world.bb.api("builds")
                if world.bb.build_properties(b["buildid"]).get("easeml_repo") == "acme/private"]
    logs = world.bb.step_logs_text(build["buildid"])
    assert "fetch" in logs  # the checkout and base-fetch logs are there, and hold no token
    assert not any(tok in logs for tok in world.sim.tokens)
    on_disk = _small_files_text(world.bb.worker_dirs[0].parent)
    assert on_disk and not any(tok in text for text in on_disk for tok in world.sim.tokens)


def _small_files_text(root, limit=1 << 20):
    """Every small file under root, read as text; the master's live SQLite files
    (-shm, -wal, -journal) may vanish between listing and reading, so a file gone
    by then is skipped, not an error."""
    texts = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and p.stat().st_size < limit:
                texts.append(p.read_text(errors="replace"))
        except (FileNotFoundError, IsADirectoryError):
            continue
    return texts


def test_branch_names_never_reach_a_shell(world, scenarios):
    repo, head, pwned = scenarios["weird"]
    assert world.statuses("weird") in one_run(done("success"))
    assert not pwned.exists()


def test_missing_test_set_requires_action(world, scenarios):
    assert world.statuses("missing") in one_run(done("action_required"))
    out = _summary(world, "missing")
    assert out["title"] == "Test set missing" and "data/test.csv.gpg" in out["summary"]


def test_broken_base_config_fails_naming_the_key(world, scenarios):
    assert world.statuses("badconfig") in one_run(done("failure"))
    out = _summary(world, "badconfig")
    assert out["title"] == "Configuration error" and "stepz" in out["summary"]


def test_config_changed_in_pr_is_protected(world, scenarios):
    assert world.statuses("protected") in one_run(done("neutral"))
    out = _summary(world, "protected")
    assert "takes effect after merge" in out["title"] and "`.easeml.yml`" in out["summary"]


def test_duplicate_delivery_builds_once(world, scenarios):
    assert [c for c, _ in scenarios["dup_replies"]] == [200, 200]
    assert "no change found" in scenarios["dup_replies"][1][1]
    assert world.statuses("dup") in one_run(done("success"))


def test_forged_signature_is_rejected(world, scenarios):
    assert [c for c, _ in scenarios["forged_replies"]] == [400, 400, 400]
    assert world.calls("forged") == []
    assert not [b for b in world.bb.api("changes") if b.get("project") == "acme/forged"]


def test_skip_ci_and_ping(world, scenarios):
    assert world.calls("skip") == []
    for key in ("ping", "installation", "unknown"):
        assert scenarios[key][0] == 200 and "no change found" in scenarios[key][1]


def test_check_suite_requested_alone_evaluates(world, scenarios):
    assert world.statuses("suite") in one_run(done("success"))


def test_rerequested_check_run_evaluates_again(world, scenarios):
    repo, head = scenarios["pass"]
    world.send("check_run", world.check_payload("check_run", "rerequested", "pass", repo, 1, head.sha))
    world.wait_completed("pass", count=2)
    seq = world.statuses("pass")
    # the head's check run is reused (issue 14: re-runs made a new run each time)
    assert first_run(seq) in one_run(done("success")) and seq[-1] == done("success"), seq
    assert [verb for verb, _s, _c in seq].count("create") == 1, seq
    assert len(world.sim.check_runs_for(scenarios["pass"][1].sha)) == 1
    # same commit, same base, same test set: the recorded result is reported, no use spent
    from easeml_buildbot.custody.ledger import Ledger

    led = Ledger(world.ledger_url)
    uses = [u for u in led.uses("acme/pass", repo.dataset_id) if u.commit == head.sha]
    led.close()
    assert [u.state for u in uses] == ["committed"]
    build = _build_for(world, head.sha)
    assert world.bb.build_properties(build["buildid"]).get("easeml_reused") is True
    assert "Uses of the test set left:** 7" in _summary(world, "pass")["summary"]


def test_push_to_default_branch_records_the_accepted_model(world, scenarios):
    repo, head = scenarios["fail"]
    # merge a good model into main and announce it with a push event: later PRs compare to it
    good = repo.commit_model(quality=0.97, branch="main", message="merge good model")
    from support.github_sim import webhook_example

    p = webhook_example("push", None, full_name="acme/fail", clone_url=str(repo.path),
                        installation_id=31337, repo_id=abs(hash("fail")) % 10**8)
    p.update(ref="refs/heads/main", after=good.sha, deleted=False)
    assert world.send("push", p)[0] == 200
    nxt = repo.commit_model(quality=0.96, branch="pr-2", start=good.sha)
    world.send("pull_request", world.pr_payload("fail", repo, 2, nxt.sha))
    world.wait_completed("fail", count=2)
    build = _build_for(world, nxt.sha)
    assert world.bb.build_properties(build["buildid"])["easeml_base_sha"] == good.sha


def _build_for(world, sha):
    for b in world.bb.api("builds", order="-buildid"):
        props = world.bb.build_properties(b["buildid"])
        if props.get("easeml_head_sha") == sha and b.get("complete"):
            return b
    raise AssertionError(f"no build for {sha}")


def test_step_numbers_have_no_gaps(world, scenarios):
    """Issue 13: the UI numbers steps as the master adds them; a skipped helper step would be
    a hidden step between visible ones and leave a gap. Issue 14: the base branch, the
    default branch (a pull request into another branch) and the base commit come with the
    checkout, one worker command: no git step of their own; so does the inspection, and the
    base is chosen in the same step. Hidden helpers come last."""
    repo, head, _ = scenarios["side"]
    world.wait_completed("side", count=3)
    for sha, base in ((scenarios["pass"][1].sha, "main"), (head.sha, "release/1")):
        (build, *_) = [b for b in world.bb.api("builds", order="buildid") if b.get("complete")
                       and world.bb.build_properties(b["buildid"]).get("easeml_head_sha") == sha
                       and world.bb.build_properties(b["buildid"]).get("easeml_base_ref") == base]
        steps = world.bb.steps(build["buildid"])
        rows = [(s["number"], s["name"], s["hidden"], s["results"]) for s in steps]
        shown = [s for s in steps if not s["hidden"]]
        assert [s["number"] for s in shown] == list(range(len(shown))), rows
        # one step chooses the base, checks out and inspects (a step and a worker command each
        # before); read config reads the inspection itself (no upload step)
        assert [s["name"] for s in shown][1:3] == ["checkout", "read config"], rows
        assert not [s for s in steps if s["name"].startswith(("fetch", "git", "resolve", "inspect"))], rows
        assert all(s["results"] == 0 for s in shown[:3]), rows
        assert f"(base {world.bb.build_properties(build['buildid'])['easeml_base_sha'][:10]})" in \
            shown[1]["state_string"], shown[1]


def test_worker_crash_mid_evaluation_releases_the_use_and_retries(world, scenarios, tmp_path):
    """SIGKILL the worker while the model runs: the reserved use is released (nothing was
    scored or shown), the check run goes back to queued, and the retried build completes."""
    import time

    from easeml_buildbot.custody.ledger import Ledger
    from support.models import PREDICT_PY

    slow = tmp_path / "slow-marker"
    slow.write_text("1")
    predict = PREDICT_PY.replace("def main():\n", f"def main():\n    import time\n    while os.path.exists({str(slow)!r}):\n        time.sleep(0.2)\n", 1)
    repo = world.repo("crash", quality=0.9, condition="n > 0.8 +/- 0.1", adaptivity="full", steps=8)
    head = repo.commit_model(quality=0.97, branch="pr-1", predict_py=predict)
    world.send("pull_request", world.pr_payload("crash", repo, 1, head.sha))
    build = None
    deadline = time.monotonic() + 120
    while build is None and time.monotonic() < deadline:
        for b in world.bb.api("builds", order="-buildid"):
            if b.get("complete"):
                continue
            if world.bb.build_properties(b["buildid"]).get("easeml_head_sha") != head.sha:
                continue
            running = [s for s in world.bb.steps(b["buildid"]) if s["name"] == "evaluate" and s["started_at"]]
            if running:
                build = b
        time.sleep(0.3)
    assert build is not None, "the evaluate step never started"
    time.sleep(1.5)  # the model is now waiting on the marker
    names = {w["workerid"]: w["name"] for w in world.bb.api("workers")}
    index = int(names[build["workerid"]].removeprefix("worker")) - 1
    world.bb.kill_worker(index)
    slow.unlink()
    world.wait_completed("crash", timeout=180)
    world.bb.start_worker(index)
    led = Ledger(world.ledger_url)
    uses = led.uses("acme/crash", repo.dataset_id)
    led.close()
    statuses = [u.state for u in uses]
    assert statuses.count("released") == 1 and statuses.count("committed") == 1, statuses
    seq = world.statuses("crash")
    assert seq[0] in (QUEUED, CREATED_STARTED) and seq[-1] == done("success")
    # the retry shows: back to queued while it waits, or (it started within the reconciler's
    # queued grace) straight to in_progress again, with the new build's start; or, when it
    # ended within the started grace, straight to its end
    assert ("update", "queued", None) in seq or sum(1 for _v, st, _c in seq if st == "in_progress") >= 2 or \
        seq == [CREATED_STARTED, done("success")], seq


# -- where the test comes from ---------------------------------------------------------------

def _runs_by_name(world, sha):
    with world.sim._lock:
        runs = sorted(world.sim.check_runs.values(), key=lambda r: r["id"])
    return {r["name"]: r for r in runs if r["head_sha"] == sha}


def _builds_for(world, sha):
    out = {}
    for b in world.bb.api("builds", order="buildid"):
        props = world.bb.build_properties(b["buildid"])
        if props.get("easeml_head_sha") == sha and b.get("complete"):
            out[props["easeml_base_ref"]] = props
    return out


def test_the_test_is_always_the_default_branchs(world, scenarios):
    """The developer's own base branch with a lax .easeml.yml: not evaluated, nothing spent,
    no mail to the address they wrote in; a listed branch and main: main's configuration and
    test set; the same head into main is evaluated after the PRs into the other branches,
    on the check run main's protection requires."""
    from easeml_buildbot.custody.ledger import Ledger

    repo, head, replies = scenarios["side"]
    assert all(code == 200 and "no change found" not in text for code, text in replies.values()), replies
    world.wait_completed("side", count=3)
    runs = _runs_by_name(world, head.sha)
    assert {n: r["conclusion"] for n, r in runs.items()} == {
        "easeml/ci (into dev)": "skipped", "easeml/ci (into release/1)": "failure", "easeml/ci": "failure"}
    dev = runs["easeml/ci (into dev)"]["output"]
    assert dev["title"] == "Not evaluated: the base branch is not tested"
    assert "'dev'" in dev["summary"] and "No use of the test set was spent" in dev["summary"]
    for name in ("easeml/ci", "easeml/ci (into release/1)"):
        assert "n > 0.9 +/- 0.1" in runs[name]["output"]["summary"]  # main's condition, not the lax one
    builds = _builds_for(world, head.sha)
    assert builds["dev"]["easeml_status"] == "not_evaluated" and "easeml_use_id" not in builds["dev"]
    assert "easeml_email" not in builds["dev"]  # nobody to mail: nothing was evaluated
    for ref in ("release/1", "main"):  # owners' mail goes to main's owners only
        assert builds[ref]["easeml_email"] == ["owner@example.com"], ref
    for ref in ("dev", "release/1", "main"):
        assert builds[ref]["easeml_config_sha"] == repo.base.sha
    led = Ledger(world.ledger_url)
    try:
        uses = led.uses("acme/side", repo.dataset_id, include_released=True)
        state = led.state("acme/side", repo.dataset_id)
    finally:
        led.close()
    assert sorted(u.commit for u in uses) == [head.sha, head.sha]  # release/1 and main, not dev
    assert all(u.state == "committed" and u.verdict == "fail" for u in uses)
    assert state.remaining == 6  # main's steps (8), not the lax branch's 1000


def test_rerequesting_a_side_branch_check_rebuilds_only_that_pull_request(world, scenarios):
    repo, head, _ = scenarios["side"]
    world.wait_completed("side", count=3)
    payload = world.check_payload("check_run", "rerequested", "side", repo, 1, head.sha)
    payload["check_run"]["name"] = "easeml/ci (into dev)"
    payload["check_run"]["pull_requests"] = [
        {**pr, "number": n, "base": {**pr["base"], "ref": ref}}
        for pr in payload["check_run"]["pull_requests"][:1] for n, ref in ((1, "dev"), (3, "main"))]
    code, text = world.send("check_run", payload)
    assert code == 200 and "no change found" not in text, text
    world.wait_completed("side", count=4)
    assert [b.get("conclusion") for _, b in world.calls("side") if b.get("conclusion")].count("skipped") == 2
    assert len([r for r in world.sim.check_runs.values() if r["head_sha"] == head.sha]) == 3  # dev's reused


# -- bad input costs nothing -----------------------------------------------------------------

def test_yaml_alias_bomb_on_the_default_branch_is_refused(world, scenarios):
    world.wait_completed("bomb", timeout=120)
    assert world.statuses("bomb") in one_run(done("failure"))
    out = _summary(world, "bomb")
    assert out["title"] == "Configuration error"
    assert ".easeml.yml:3: YAML anchors (&name) are not allowed" in out["summary"]


MALFORMED = {  # correctly signed, wrong shape: (event, payload)
    "not an object": ("pull_request", ["opened"]),
    "no repository": ("pull_request", {"action": "opened", "pull_request": {}}),
    "repository name not a string": ("push", {"ref": "refs/heads/main", "after": "a" * 40,
                                              "repository": {"full_name": 7, "clone_url": "x"}}),
    "no head": ("pull_request", {"action": "opened", "repository": {"full_name": "acme/m", "clone_url": "x"},
                                 "pull_request": {"number": 1, "base": {"ref": "main", "sha": "b" * 40}}}),
    "head sha a number": ("pull_request", {"action": "synchronize",
                                           "repository": {"full_name": "acme/m", "clone_url": "x"},
                                           "pull_request": {"number": 1, "head": {"sha": 12},
                                                            "base": {"ref": "main", "sha": "b" * 40}}}),
    "number a string": ("pull_request", {"action": "opened", "repository": {"full_name": "acme/m", "clone_url": "x"},
                                         "pull_request": {"number": "1", "head": {"sha": "a" * 40},
                                                          "base": {"ref": "main", "sha": "b" * 40}}}),
    "pull_requests not a list": ("check_suite", {"action": "requested",
                                                 "repository": {"full_name": "acme/m", "clone_url": "x"},
                                                 "check_suite": {"head_sha": "a" * 40, "pull_requests": "#1"}}),
    "pull request entry null": ("check_suite", {"action": "requested",
                                                "repository": {"full_name": "acme/m", "clone_url": "x"},
                                                "check_suite": {"head_sha": "a" * 40, "pull_requests": [None]}}),
    "check_run missing": ("check_run", {"action": "rerequested",
                                        "repository": {"full_name": "acme/m", "clone_url": "x"}}),
    "repository a list": ("check_suite", {"action": "requested", "repository": ["acme/m"]}),
    "installation a string": ("pull_request", {"action": "opened", "installation": "5",
                                               "repository": {"full_name": "acme/m", "clone_url": "x"},
                                               "pull_request": {"number": 1, "head": {"sha": "a" * 40},
                                                                "base": {"ref": "main", "sha": "b" * 40}}}),
    "base ref with a colon": ("pull_request", {"action": "opened",
                                               "repository": {"full_name": "acme/m", "clone_url": "x"},
                                               "pull_request": {"number": 1, "head": {"sha": "a" * 40},
                                                                "base": {"ref": "a:b", "sha": "b" * 40}}}),
}


def test_malformed_signed_payloads_answer_400_without_a_traceback(world, scenarios):
    before = world.bb.master_log().count("Traceback")
    replies = {kind: world.send(event, payload) for kind, (event, payload) in MALFORMED.items()}
    assert {k: c for k, (c, _) in replies.items() if c != 400} == {}, replies
    assert all("malformed" in text for _, text in replies.values()), replies
    assert world.bb.master_log().count("Traceback") == before
    assert not [c for c in world.bb.api("changes") if c.get("project") == "acme/m"]


def _master_memory(world):
    status = open(f"/proc/{world.bb.master_proc.pid}/status").read()
    return {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in status.splitlines())
            if k in ("VmRSS", "VmHWM")}


def _raw_post(world, headers, body_chunks, wait_first=2.0):
    """POST to the change hook over a raw socket; the first reply comes back as (status line, text)."""
    import select
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(world.bb.www_url)
    sock = socket.create_connection((u.hostname, u.port), timeout=120)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /change_hook/github HTTP/1.1\r\nHost: {u.hostname}\r\n{head}\r\n".encode())
        if not select.select([sock], [], [], wait_first)[0]:  # no early answer: send the body
            try:
                for chunk in body_chunks:
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        data = b""
        try:
            while b"\r\n" not in data:
                got = sock.recv(65536)
                if not got:
                    break
                data += got
        except ConnectionResetError:
            pass
        return data.decode(errors="replace")
    finally:
        sock.close()


def test_a_400_mb_body_is_refused_before_it_is_read(world, scenarios):
    mib = b"\0" * (1 << 20)
    before = _master_memory(world)
    reply = _raw_post(world, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                              "Content-Length": str(400 << 20)}, (mib for _ in range(400)))
    after = _master_memory(world)
    grew = after["VmHWM"] - before["VmHWM"]
    print(f"master memory with a 400 MiB unsigned body: VmHWM {before['VmHWM'] >> 20} -> "
          f"{after['VmHWM'] >> 20} MiB, VmRSS {before['VmRSS'] >> 20} -> {after['VmRSS'] >> 20} MiB")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert grew < 32 << 20, f"the master grew by {grew >> 20} MiB"
    # a chunked body (no Content-Length) is cut off at the limit as well
    chunk = b"%x\r\n" % len(mib) + mib + b"\r\n"
    _raw_post(world, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                      "Transfer-Encoding": "chunked"}, (chunk for _ in range(40)), wait_first=0)
    assert "refused a request body" in world.bb.master_log() and "chunked" in world.bb.master_log()
    assert _master_memory(world)["VmHWM"] - before["VmHWM"] < 32 << 20
    assert world.send("ping", {"zen": "still here", "hook_id": 1})[0] == 200
