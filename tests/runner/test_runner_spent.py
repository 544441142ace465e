"""What a model run costs and shows: a model started with the features spends the use
whatever happens next; its stdout never reaches the build log, its stderr only as a short
tail where the adaptivity shows a verdict; an evaluation killed in any way leaves no
plaintext and no model behind."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from easeml_buildbot.runner.evaluate import evaluate_pr
from support.models import make_model_repo
from support.procs import alive

# Prints every feature row to stdout and to stderr, then fails.
LEAKER = '''\
import os, sys
data = open(os.environ["EASEML_FEATURES"]).read()
sys.stdout.write(data)
sys.stdout.flush()
sys.stderr.write(data)
sys.stderr.write("the model failed on purpose\\n")
sys.exit(1)
'''


def easeml(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "easeml_buildbot", *args], capture_output=True,
                          text=True, timeout=300, **kw)


def branch() -> str:
    return f"pr-{secrets.token_hex(4)}"


def feature_rows(repo) -> list[str]:
    """The test set's feature rows as the model sees them (csv, label column dropped), and
    values distinctive enough that finding one in a log means it leaked."""
    return [",".join(f"{v:g}" for v in row) for row in repo.split.x_test]


def distinctive_values(repo) -> set[str]:
    vals = {f"{v:g}" for v in repo.split.x_test.ravel()}
    return {v for v in vals if "." in v and len(v) >= 5 and len(v.replace(".", "").lstrip("0")) >= 4}


def leaked(text: str, repo) -> list[str]:
    rows = [r for r in feature_rows(repo) if r in text]
    numbers = set(re.findall(r"(?<![\d.])\d+\.\d+(?:e[-+]\d+)?(?![\d.])", text))
    return rows + sorted(distinctive_values(repo) & numbers)


@pytest.fixture(scope="module")
def cancer_repos(tmp_path_factory, service_keys):
    """Breast-cancer test sets (features with many distinctive decimals) under adaptivity
    none and full."""
    base = tmp_path_factory.mktemp("cancer")
    return {a: make_model_repo(base / a, public_key=service_keys.public, dataset="breast_cancer",
                               train_rows=200, quality=None, condition="n > 0.6 +/- 0.2",
                               adaptivity=a, steps=8)
            for a in ("none", "full")}


def run_cli(repo, head, keys, tmp_path, runner="process"):
    out = tmp_path / f"result-{secrets.token_hex(3)}.json"
    res = easeml("worker", "evaluate", "--repo", str(repo.path), "--head", head, "--base", repo.base.sha,
                 "--key", str(keys.private), "--runner", runner, "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out))
    r = json.loads(out.read_text())
    # the exit code says whether it scored (not the verdict): a failed model's step is red
    from easeml_buildbot.runner.cli import EXIT_CODES

    assert res.returncode == EXIT_CODES[r["status"]], res.stderr
    return res, r


def test_a_crash_after_reading_the_features_spends_the_use_and_shows_nothing(cancer_repos, service_keys,
                                                                            tmp_path):
    repo = cancer_repos["none"]
    assert len(distinctive_values(repo)) > 1000  # the check below has teeth
    head = repo.commit_model(quality=None, branch=branch(), predict_py=LEAKER).sha
    res, r = run_cli(repo, head, service_keys, tmp_path)
    assert (r["status"], r["cause"], r["scored"], r["spent"]) == ("model_error", "crash", False, True)
    assert leaked(res.stdout + res.stderr, repo) == []
    assert leaked(r["message"], repo) == []
    assert "the test-set use is counted" in res.stdout
    # the owners' copy (result.json: master-private dir, then the ledger) has the full log
    assert sum(row in r["logs"]["head"] for row in feature_rows(repo)) >= 50  # head + tail kept


def test_under_full_adaptivity_only_a_bounded_stderr_tail_is_shown(cancer_repos, service_keys, tmp_path):
    repo = cancer_repos["full"]
    head = repo.commit_model(quality=None, branch=branch(), predict_py=LEAKER).sha
    res, r = run_cli(repo, head, service_keys, tmp_path)
    assert r["spent"] is True
    rows = feature_rows(repo)
    assert "the model failed on purpose" in res.stdout
    tail = res.stdout.split("bytes):\n", 1)[1].split("\nstatus:", 1)[0]
    assert len(tail.encode()) <= 2048 and len(tail.splitlines()) <= 20
    shown = [row for row in rows if row in res.stdout]
    assert shown and all(row in tail for row in shown)  # stdout's copy never appears
    assert len(shown) < 20  # of the >= 126 rows the model printed twice


def test_spent_only_once_a_model_saw_the_features(digits_repo, service_keys, tmp_path):
    def run(head, base=digits_repo.base.sha):
        return evaluate_pr(digits_repo.path, head=head, base=base, key=service_keys.private,
                           passphrase=None, runner="process", cache_dir=tmp_path / secrets.token_hex(3))

    no_output = "print('nothing written')\n"
    wrong_count = ("import os\nopen(os.environ['EASEML_OUTPUT'] + '/predictions.csv', 'w')"
                   ".write('prediction\\n1\\n')\n")
    for script, cause in ((no_output, "no_predictions"), (wrong_count, "wrong_count")):
        r = run(digits_repo.commit_model(quality=0.9, branch=branch(), predict_py=script).sha)
        assert (r["cause"], r["scored"], r["spent"]) == (cause, False, True), r
    # nothing ran: an image without a command, a broken config, a missing test set
    r = run(digits_repo.commit_model(quality=0.9, branch=branch(), dockerfile="FROM scratch\n").sha)
    assert (r["cause"], r["spent"]) == ("build_failed", False), r
    bad = digits_repo.commit_files({".easeml.yml": "condition: [1]\n"}, branch=branch())
    assert run(digits_repo.base.sha, base=bad)["spent"] is False
    gone = digits_repo.commit_files({"data/test.csv.gpg": None}, branch=branch())
    assert run(digits_repo.base.sha, base=gone)["spent"] is False
    ok = run(digits_repo.commit_model(quality=0.9, branch=branch()).sha)
    assert (ok["status"], ok["spent"]) == ("scored", True)


# ------------------------------------------------------------------ killed evaluations

SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(10**6)\n"


def _private_dirs(pid: int) -> list[Path]:
    from easeml_buildbot.custody.gpghome import secure_tmp_base

    found = []
    for base in {Path(tempfile.gettempdir()), secure_tmp_base() or Path(tempfile.gettempdir())}:
        found += [p for p in base.glob(f"easeml-*-{pid}-*")]
    return found


def _model_pids(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _sleeper_repo(digits_repo):
    marker = f"sleeper-{secrets.token_hex(4)}"
    script = SLEEPER.replace("'sleeping'", f"'{marker}'")
    # the marker in argv lets the test find the model process (and only it)
    head = digits_repo.commit_model(quality=0.9, branch=branch(), predict_py=script,
                                    files={"Dockerfile": f'FROM x\nCMD ["python3", "predict.py", "{marker}"]\n'}).sha
    return head, marker


def _evaluate_argv(digits_repo, head, keys, tmp_path):
    return [sys.executable, "-m", "easeml_buildbot", "worker", "evaluate", "--repo", str(digits_repo.path),
            "--head", head, "--base", digits_repo.base.sha, "--key", str(keys.private),
            "--runner", "process", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "r.json")]


def test_sigkill_of_evaluate_leaves_no_plaintext_and_no_model(digits_repo, service_keys, tmp_path):
    head, marker = _sleeper_repo(digits_repo)
    proc = subprocess.Popen(_evaluate_argv(digits_repo, head, service_keys, tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait(lambda: _model_pids(marker), 120), "the model never started"
    dirs = _private_dirs(proc.pid)
    kinds = {p.name.split("-")[1] for p in dirs}
    assert {"ds", "proc"} <= kinds, dirs  # decrypted test set and the features copy exist
    proc.kill()
    proc.wait()
    assert _wait(lambda: not _private_dirs(proc.pid), 20), _private_dirs(proc.pid)
    assert _wait(lambda: not _model_pids(marker), 10), "the model outlived its evaluation"


def test_evaluate_dies_with_its_parent(digits_repo, service_keys, tmp_path):
    """``exec easeml worker evaluate`` under a parent (the Buildbot worker) killed with -9:
    the evaluation gets SIGTERM (PR_SET_PDEATHSIG), removes the plaintext and the model,
    and writes a result that counts the use."""
    head, marker = _sleeper_repo(digits_repo)
    argv = " ".join(f"'{a}'" for a in _evaluate_argv(digits_repo, head, service_keys, tmp_path))
    # a parent that stays alive (like the worker) while its child runs: python -c 'spawn; sleep'
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time\n"
                               f"p = subprocess.Popen(['sh', '-c', {('exec ' + argv)!r}])\n"
                               "print(p.pid, flush=True)\ntime.sleep(10**6)\n"],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(parent.stdout.readline())
    assert _wait(lambda: _model_pids(marker), 120), "the model never started"
    assert _private_dirs(child)
    parent.kill()
    parent.wait()
    assert _wait(lambda: not alive(child), 30), "evaluate outlived its parent"
    assert _wait(lambda: not _private_dirs(child), 10), _private_dirs(child)
    assert _wait(lambda: not _model_pids(marker), 10)
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["cause"], r["spent"]) == ("interrupted", True)


def test_stderr_tail_is_bounded_in_lines_and_bytes():
    from easeml_buildbot.runner.base import stderr_tail

    text = "".join(f"line {i} " + "x" * 50 + "\n" for i in range(100))
    tail = stderr_tail(text, 20, 2048)
    assert len(tail.splitlines()) <= 20 and len(tail.encode()) <= 2048
    assert tail.endswith("line 99 " + "x" * 50) and tail.splitlines()[0].startswith("line ")
    assert stderr_tail(text, 5, 10**6).splitlines()[0].startswith("line 95 ")
    assert stderr_tail(text, 0, 2048) == "" and stderr_tail(text, 20, 0) == ""
    assert len(stderr_tail("é" * 5000, 20, 2048).encode()) <= 2048
