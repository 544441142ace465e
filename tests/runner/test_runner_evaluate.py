"""``easeml worker inspect`` / ``easeml worker evaluate``: config and test set from the base,
models from the exact commits, predictions cached, and the scored/unscored rule."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys

import numpy as np
import pytest

from easeml_buildbot.config import parse_config
from easeml_buildbot.custody.dataset import dataset_id, decrypted_dataset
from easeml_buildbot.runner.evaluate import PredictionCache, evaluate_pr, inspect_repo
from support.models import PREDICT_PY, make_model_repo


def easeml(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "easeml_buildbot", *args], capture_output=True, text=True,
                          timeout=300)


def branch() -> str:
    return f"pr-{secrets.token_hex(4)}"


def rows_needed(repo) -> int:
    text = subprocess.run(["git", "-C", str(repo.path), "show", f"{repo.base.sha}:.easeml.yml"],
                          capture_output=True, text=True, check=True).stdout
    cfg = parse_config(text)
    return cfg.required_samples().rows


def test_inspect_reads_the_base(digits_repo, tmp_path):
    pr = digits_repo.commit_model(quality=0.9, branch=branch())
    out = tmp_path / "inspect.json"
    res = easeml("worker", "inspect", "--repo", str(digits_repo.path), "--base", digits_repo.branch,
                 "--head", pr.sha, "--out", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["error"] is None
    assert data["dataset_id"] == dataset_id(digits_repo.path / digits_repo.dataset) == digits_repo.dataset_id
    assert data["samples_needed"] == rows_needed(digits_repo)
    assert data["config"]["condition"] == "n > 0.8 +/- 0.1 /\\ d < 0.35 +/- 0.1"
    assert data["protected_changed"] == []
    assert data["base"] == digits_repo.base.sha and data["head"] == pr.sha


def test_inspect_flags_protected_changes_and_errors(digits_repo):
    sha = digits_repo.commit_files({".easeml.yml": "condition: n > 0.1 +/- 0.1\n",
                                    "data/test.csv.gpg": b"tampered"}, branch=branch())
    data = inspect_repo(digits_repo.path, digits_repo.base.sha, sha)
    assert data["protected_changed"] == [".easeml.yml", "data/test.csv.gpg"]
    # the config and test set still come from the base
    assert data["ok"] and data["dataset_id"] == digits_repo.dataset_id
    # a base without the test set: ok false, config present (the master says "missing dataset")
    no_data = digits_repo.commit_files({"data/test.csv.gpg": None}, branch=branch())
    data = inspect_repo(digits_repo.path, no_data)
    assert not data["ok"] and data["config"] and data["dataset_id"] is None
    assert "data/test.csv.gpg" in data["error"]
    # a broken config: ok false, no config, the error names file, line and key
    bad = digits_repo.commit_files({".easeml.yml": "condition: n > 0.8\nsteps: many\n"}, branch=branch())
    data = inspect_repo(digits_repo.path, bad)
    assert not data["ok"] and data["config"] == {}
    assert ".easeml.yml:2" in data["error"] and "steps" in data["error"]
    data = inspect_repo(digits_repo.path, "no-such-branch")
    assert not data["ok"] and "no-such-branch" in data["error"]


def test_evaluate_scores_head_and_base_and_caches(digits_repo, service_keys, tmp_path):
    pr = digits_repo.commit_model(quality=0.95, branch=branch())
    out, cache = tmp_path / "result.json", tmp_path / "cache"
    args = ["worker", "evaluate", "--repo", str(digits_repo.path), "--head", pr.sha,
            "--base", digits_repo.base.sha, "--key", str(service_keys.private), "--runner", "process",
            "--cache-dir", str(cache), "--out", str(out)]
    res = easeml(*args)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    r = json.loads(out.read_text())
    assert r["status"] == "scored" and r["scored"] is True and r["cause"] is None
    n = rows_needed(digits_repo)
    assert r["samples_used"] == n and r["dataset_id"] == digits_repo.dataset_id
    used = digits_repo.rows_used(n, service_keys.private)  # a random n-subset, in its order
    labels = digits_repo.labels[used]
    est = r["verdict"]["estimates"]
    assert est["n"] == pytest.approx(pr.accuracy_on(labels, used))
    assert est["o"] == pytest.approx(digits_repo.base.accuracy_on(labels, used))
    assert est["d"] == pytest.approx(np.mean(pr.predictions[used] != digits_repo.base.predictions[used]))
    assert r["verdict"]["outcome"] == "pass"
    assert r["cached"] == {"head": False, "base": False}
    # the build log shows progress, never the verdict or an estimate
    for secret in (f"{est['n']:.3f}", f"{est['n']:.2f}", '"outcome"', "pass\n"):
        assert secret not in res.stdout
    # a second pull request on the same base: the base model's predictions come from the cache
    pr2 = digits_repo.commit_model(quality=0.6, branch=branch(), flip_seed=5)
    args[args.index("--head") + 1] = pr2.sha
    assert easeml(*args).returncode == 0
    r2 = json.loads(out.read_text())
    assert r2["cached"] == {"head": False, "base": True}
    assert "base model" in easeml(*args).stdout  # third run: both cached
    assert r2["verdict"]["outcome"] == "fail"
    assert r2["verdict"]["estimates"]["n"] == pytest.approx(pr2.accuracy_on(labels, used))
    cached = PredictionCache(cache).get(digits_repo.base.sha, digits_repo.dataset_id, {"dockerfile": "Dockerfile"}, n)
    assert np.array_equal(cached, digits_repo.base.predictions[used])



def test_cache_keeps_the_longer_run(tmp_path):
    """A shorter run (a racing worker) never replaces a longer cached one: its prefix serves both."""
    cache = PredictionCache(tmp_path / "cache")
    assert cache.put("c0ffee", "ds", {}, np.arange(10))
    assert cache.put("c0ffee", "ds", {}, np.arange(5))
    assert np.array_equal(cache.get("c0ffee", "ds", {}, 10), np.arange(10))
    assert cache.put("c0ffee", "ds", {}, np.arange(12))
    assert np.array_equal(cache.get("c0ffee", "ds", {}, 12), np.arange(12))

def test_unwritable_cache_does_not_fail_the_evaluation(digits_repo, service_keys, tmp_path):
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache directory should be")
    pr = digits_repo.commit_model(quality=0.9, branch=branch())
    r = evaluate_pr(digits_repo.path, head=pr.sha, base=digits_repo.base.sha, key=service_keys.private,
                    passphrase=None, runner="process", cache_dir=not_a_dir)
    assert r["status"] == "scored" and r["cached"] == {"head": False, "base": False}



def test_runners_get_the_row_count_from_custody(digits_repo, service_keys, tmp_path, monkeypatch):
    """The decrypted test set knows its rows: the runner must not parse the features again."""
    from easeml_buildbot.runner import workspace

    def recount(path):
        raise AssertionError(f"features re-counted: {path}")

    monkeypatch.setattr(workspace, "count_rows", recount)
    pr = digits_repo.commit_model(quality=0.9, branch=branch())
    r = evaluate_pr(digits_repo.path, head=pr.sha, base=digits_repo.base.sha, key=service_keys.private,
                    passphrase=None, runner="process", cache_dir=tmp_path / "cache")
    assert r["status"] == "scored", r
    used = digits_repo.rows_used(r["samples_used"], service_keys.private)
    assert r["verdict"]["estimates"]["n"] == pytest.approx(pr.accuracy_on(digits_repo.labels[used], used))

@pytest.mark.parametrize("which", ["head", "base"])
def test_model_error_is_not_scored(digits_repo, service_keys, tmp_path, which):
    broken = "import sys\nprint('boom', file=sys.stderr)\nsys.exit(5)\n"
    if which == "head":
        head, base = digits_repo.commit_model(quality=0.9, branch=branch(), predict_py=broken).sha, digits_repo.base.sha
    else:
        base = digits_repo.commit_model(quality=0.9, branch=branch(), predict_py=broken).sha
        head = digits_repo.commit_model(quality=0.9, branch=branch(), start=base, predict_py=PREDICT_PY).sha
    r = evaluate_pr(digits_repo.path, head=head, base=base, key=service_keys.private, passphrase=None,
                    runner="process", cache_dir=tmp_path / "cache")
    assert r["status"] == "model_error" and r["scored"] is False and r["verdict"] is None
    assert r["cause"] == "crash" and r["failed"] == which
    assert ("pull request's model" if which == "head" else "base commit's model") in r["message"]


def test_label_type_mismatch_is_not_scored(digits_repo, service_keys, tmp_path):
    words = ("import os\nn = int(os.environ['EASEML_ROWS'])\n"
             "open(os.environ['EASEML_OUTPUT'] + '/predictions.jsonl', 'w').write('\"seven\"\\n' * n)\n")
    head = digits_repo.commit_model(quality=0.9, branch=branch(), predict_py=words).sha
    r = evaluate_pr(digits_repo.path, head=head, base=digits_repo.base.sha, key=service_keys.private,
                    passphrase=None, runner="process", cache_dir=tmp_path / "cache")
    assert (r["status"], r["cause"], r["scored"]) == ("model_error", "label_type_mismatch", False)


def test_dataset_and_config_errors(digits_repo, service_keys_with_passphrase, service_keys, tmp_path):
    pr = digits_repo.commit_model(quality=0.9, branch=branch())
    r = evaluate_pr(digits_repo.path, head=pr.sha, base=digits_repo.base.sha,
                    key=service_keys_with_passphrase.private, passphrase=service_keys_with_passphrase.passphrase,
                    runner="process", cache_dir=tmp_path / "c")
    assert (r["status"], r["scored"]) == ("dataset_error", False)
    assert "different key" in r["message"] and f"{digits_repo.base.sha[:12]}:data/test.csv.gpg" in r["message"]
    assert r["cause"] == "key", r  # a key problem, as a field (issue 13), not the "dataset" catch-all
    assert "easeml-eval-" not in r["message"]  # not the private temporary copy
    bad = digits_repo.commit_files({".easeml.yml": "condition: [1]\n"}, branch=branch())
    r = evaluate_pr(digits_repo.path, head=pr.sha, base=bad, key=service_keys.private, passphrase=None,
                    runner="process", cache_dir=tmp_path / "c")
    assert (r["status"], r["scored"]) == ("config_error", False) and "condition" in r["message"]
    # more samples needed than the test set has
    base_cfg = subprocess.run(["git", "-C", str(digits_repo.path), "show", f"{digits_repo.base.sha}:.easeml.yml"],
                              capture_output=True, text=True, check=True).stdout
    greedy = digits_repo.commit_files({".easeml.yml": base_cfg.replace("+/- 0.1 /", "+/- 0.01 /")},
                                      branch=branch())
    r = evaluate_pr(digits_repo.path, head=pr.sha, base=greedy, key=service_keys.private, passphrase=None,
                    runner="process", cache_dir=tmp_path / "c")
    assert r["status"] == "dataset_error" and "needs" in r["message"] and not r["scored"], r
    # its own cause (issue 13: it was read as a key problem), the numbers as fields
    assert r["cause"] == "dataset_too_small" and r["spent"] is False, r
    assert r["samples_needed"] > r["samples_available"] == len(digits_repo.labels), r


def test_passphrase_file(tmp_path, service_keys_with_passphrase):
    keys = service_keys_with_passphrase
    repo = make_model_repo(tmp_path / "repo", public_key=keys.public, quality=0.9, condition="n > 0.7 +/- 0.1")
    pr = repo.commit_model(quality=None, branch="pr")
    out = tmp_path / "r.json"
    res = easeml("worker", "evaluate", "--repo", str(repo.path), "--head", pr.sha, "--base", repo.base.sha,
                 "--key", str(keys.private), "--passphrase-file", str(keys.passphrase_file),
                 "--runner", "process", "--cache-dir", str(tmp_path / "c"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["status"] == "scored", r
    used = repo.rows_used(r["samples_used"], keys.private, keys.passphrase)
    assert r["verdict"]["estimates"]["n"] == pytest.approx(pr.accuracy_on(repo.labels[used], used))
    assert keys.passphrase not in res.stdout + res.stderr
    assert "o" not in {k for k, v in r["verdict"]["estimates"].items() if v is not None}  # n only: no base run
    assert r["cached"] == {"head": False}



def test_unreadable_passphrase_file_is_a_usage_error(tmp_path):
    missing = tmp_path / "no-such-passphrase"
    res = easeml("worker", "evaluate", "--repo", str(tmp_path), "--head", "h", "--base", "b",
                 "--key", str(tmp_path / "k.asc"), "--passphrase-file", str(missing),
                 "--runner", "process", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "r.json"))
    assert res.returncode == 2
    assert f"{missing}: cannot read passphrase file" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r.json").exists()

@pytest.mark.docker
def test_evaluate_in_docker_end_to_end(docker_client, digits_repo, service_keys, tmp_path):
    pr = digits_repo.commit_model(quality=0.95, branch=branch())
    out = tmp_path / "result.json"
    res = easeml("worker", "evaluate", "--repo", str(digits_repo.path), "--head", pr.sha,
                 "--base", digits_repo.base.sha, "--key", str(service_keys.private), "--runner", "docker",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    r = json.loads(out.read_text())
    assert r["status"] == "scored" and r["runner"] == "docker"
    n = r["samples_used"]
    used = digits_repo.rows_used(n, service_keys.private)
    assert r["verdict"]["estimates"]["n"] == pytest.approx(pr.accuracy_on(digits_repo.labels[used], used))
    assert r["verdict"]["outcome"] == "pass"
    assert {"build_head", "run_head", "build_base", "run_base", "score"} <= set(r["timings"])
    assert "Successfully built" in res.stdout
    with decrypted_dataset(digits_repo.path / digits_repo.dataset, service_keys.private, rows=n) as ds:
        assert ds.n_rows == n


@pytest.mark.docker
def test_stopped_build_removes_its_container(docker_client, digits_repo, service_keys, tmp_path):
    """Buildbot stopping the step (SIGTERM) must not leave the model running."""
    import signal
    import time

    sleeper = "import time\nprint('sleeping', flush=True)\ntime.sleep(10**6)\n"
    head = digits_repo.commit_model(quality=0.9, branch=branch(), predict_py=sleeper).sha
    proc = subprocess.Popen([sys.executable, "-m", "easeml_buildbot", "worker", "evaluate", "--repo",
                             str(digits_repo.path), "--head", head, "--base", digits_repo.base.sha,
                             "--key", str(service_keys.private), "--runner", "docker",
                             "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "r.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flt = {"label": f"easeml.tag=head-{head[:12]}"}
    deadline = time.monotonic() + 120
    while not docker_client.containers.list(filters=flt) and time.monotonic() < deadline:
        assert proc.poll() is None, "evaluate ended before the model ran"
        time.sleep(0.2)
    assert docker_client.containers.list(filters=flt), "the model container never started"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert docker_client.containers.list(all=True, filters=flt) == []
    assert docker_client.images.list(filters=flt) == []


def _git_repo_with(tmp_path, links: dict[str, str]):
    repo = tmp_path / "src"
    repo.mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "model").mkdir()
    (repo / "model" / "predict.py").write_text("print('hi')\n")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    for name, target in links.items():
        (repo / name).symlink_to(target)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "m"], check=True)
    return repo


@pytest.mark.parametrize("filters", ["tarfile filters", "pre-3.11.4 fallback"])
def test_export_commit_keeps_in_tree_links_and_refuses_escapes(tmp_path, monkeypatch, filters):
    """Python 3.11.2 (Debian bookworm, the worker image) has no tarfile.data_filter: the
    fallback must accept and refuse exactly what the filter does for a git tree."""
    import tarfile

    from easeml_buildbot.runner.evaluate import ModelError, export_commit

    if filters != "tarfile filters":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    ok = _git_repo_with(tmp_path, {"latest": "model", "m.py": "model/predict.py"})
    out = export_commit(ok, "HEAD", tmp_path / "out")
    assert (out / "latest" / "predict.py").read_text() == "print('hi')\n"
    assert (out / "m.py").read_text() == "print('hi')\n"
    assert os.access(out / "run.sh", os.X_OK)
    assert not (out / ".git").exists()
    for i, target in enumerate(["/etc", "../../outside", "model/../../x"]):
        bad = _git_repo_with(tmp_path / f"bad{i}", {"escape": target})
        with pytest.raises(ModelError, match="unsafe file in the tree"):
            export_commit(bad, "HEAD", tmp_path / f"bad{i}" / "out")


def test_inspect_reads_config_and_test_set_from_config_rev_not_the_base(digits_repo, tmp_path):
    """--base is the old model o; .easeml.yml and the test set come from --config-rev (the
    default branch's accepted commit), whatever the branch the pull request targets says."""
    lax = digits_repo.commit_files({".easeml.yml": "condition: n > 0.1 +/- 0.1\nemail: dev@evil.example\n",
                                    "data/test.csv.gpg": b"another test set"}, branch=branch())
    pr = digits_repo.commit_model(quality=0.9, branch=branch(), start=lax)
    out = tmp_path / "inspect.json"
    res = easeml("worker", "inspect", "--repo", str(digits_repo.path), "--base", lax, "--head", pr.sha,
                 "--config-rev", digits_repo.base.sha, "--base-ref", "dev", "--default-branch", "main",
                 "--out", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["base"] == lax and data["config_rev"] == digits_repo.base.sha
    assert data["ok"] is False and data["dataset_id"] is None
    assert "not evaluated" in data["not_evaluated"] and "'main'" in data["not_evaluated"]
    assert data["config"] == {}  # nothing of a test applies; never the developer's owners
    # a branch the default branch's configuration lists is evaluated, with main's config and test set
    main_cfg = subprocess.run(["git", "-C", str(digits_repo.path), "show", f"{digits_repo.base.sha}:.easeml.yml"],
                              capture_output=True, text=True, check=True).stdout
    listed = digits_repo.commit_files({".easeml.yml": main_cfg + "branches: [release/*]\n"}, branch=branch(),
                                      start=digits_repo.base.sha)
    data = inspect_repo(digits_repo.path, lax, pr.sha, config_rev=listed, base_ref="release/2", default_branch="main")
    assert data["ok"] and data["not_evaluated"] is None and data["dataset_id"] == digits_repo.dataset_id
    assert data["config"]["condition"] == parse_config(main_cfg).condition_text
    # without --config-rev (local forge, run-local) the base is the source, as before
    data = inspect_repo(digits_repo.path, digits_repo.base.sha, pr.sha)
    assert data["ok"] and data["config_rev"] == digits_repo.base.sha


def test_evaluate_uses_config_rev_for_the_test(digits_repo, service_keys, tmp_path):
    lax = digits_repo.commit_files({".easeml.yml": "condition: n > 0.1 +/- 0.1\nsteps: 2\n"}, branch=branch())
    pr = digits_repo.commit_model(quality=0.9, branch=branch(), start=lax)
    r = evaluate_pr(digits_repo.path, head=pr.sha, base=lax, config_rev=digits_repo.base.sha,
                    key=service_keys.private, passphrase=None, runner="process", cache_dir=tmp_path / "c")
    assert r["status"] == "scored" and r["config_rev"] == digits_repo.base.sha and r["base"] == lax
    assert r["samples_used"] == rows_needed(digits_repo)  # main's condition, not the lax one


def test_an_oversized_config_blob_is_not_read(digits_repo, monkeypatch):
    from easeml_buildbot.config import MAX_CONFIG_BYTES
    from easeml_buildbot.runner import evaluate

    big = digits_repo.commit_files({".easeml.yml": "condition: n > 0.8 +/- 0.1\n" + "#" * (MAX_CONFIG_BYTES * 8)},
                                   branch=branch())
    calls = []
    real = evaluate._git
    monkeypatch.setattr(evaluate, "_git", lambda repo, *a: calls.append(a) or real(repo, *a))
    data = inspect_repo(digits_repo.path, big)
    assert not data["ok"] and f"at most {MAX_CONFIG_BYTES}" in data["error"] and ".easeml.yml" in data["error"]
    assert not [a for a in calls if a[:2] == ("cat-file", "blob")]  # sized with -s, never read


def test_show_reads_a_file_with_one_git_process_and_never_a_too_large_one(tmp_path, monkeypatch):
    """evaluate.show: the exact bytes of a blob, None for a missing path, a directory or a
    repository that is not one, TooLarge before a byte of a larger blob is read; one git
    process per file (it was three: -t, -s, blob)."""
    from easeml_buildbot.runner.evaluate import TooLarge, show

    repo = tmp_path / "r"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q"], check=True)
    binary = bytes(range(256)) * 3 + b"\n\0end"
    (repo / "d").mkdir()
    (repo / "d" / "data.bin").write_bytes(binary)
    (repo / "with space.txt").write_text("spaced\n")
    (repo / "cr\rinside").write_text("cr\n")
    (repo / "big").write_bytes(os.urandom(1 << 20) * 48)  # 48 MiB: more than a pipe holds
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    # count the git processes: a wrapper first on PATH logs each one
    log, bindir = tmp_path / "git.log", tmp_path / "bin"
    bindir.mkdir()
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True, check=True).stdout.strip()
    (bindir / "git").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    (bindir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    assert show(repo, sha, "d/data.bin") == binary
    assert show(repo, sha, "d/data.bin", max_bytes=len(binary)) == binary
    assert show(repo, sha, "with space.txt") == b"spaced\n"
    assert show(repo, sha, "cr\rinside") == b"cr\n"  # only a trailing CR is dropped by git
    assert len(log.read_text().splitlines()) == 4  # one per file
    # git's batch input ends a name at NUL and drops a trailing CR: never read as another file
    for missing in ("nope", "d", "d/", "with space.txt missing", "a\nb", "d/data.bin\0x", "d/data.bin\r"):
        assert show(repo, sha, missing) is None, missing
    assert show(tmp_path / "not-a-repo", sha, "d/data.bin") is None
    assert show(repo, "0" * 40, "d/data.bin") is None
    with pytest.raises(TooLarge, match=r"1 bytes are read|at most 1 are read"):
        show(repo, sha, "d/data.bin", max_bytes=1)
    with pytest.raises(TooLarge, match=str(48 << 20)):
        show(repo, sha, "big", max_bytes=1 << 20)
