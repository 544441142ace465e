"""The checkout's one worker command (master/checkout.py), run as the worker runs it: ``sh``
with argv, against real git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from easeml_buildbot.master.checkout import command, parse_output, token_env


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@example.com",
                               "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@example.com",
                               "PATH": "/usr/bin:/bin", "HOME": str(cwd)}).stdout.strip()


@pytest.fixture()
def origin(tmp_path):
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = []
    for i in range(3):
        (repo / "f").write_text(str(i))
        git(repo, "add", "f")
        git(repo, "commit", "-qm", f"c{i}")
        shas.append(git(repo, "rev-parse", "HEAD"))
    git(repo, "branch", "release/1", shas[0])
    return repo, shas


def checkout(workdir: Path, url: str, head: str, branch: str, base_rev: str = "", base_sha: str = "",
             base_ref: str | None = None, default_branch: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The step's own command (``command``), run by ``sh`` in the build directory."""
    workdir.mkdir(exist_ok=True)
    return subprocess.run(command(url, head, branch, base_rev, base_sha, base_ref, default_branch),
                          cwd=workdir, capture_output=True, text=True, env=env)


def test_head_base_and_refs_in_one_command_and_refs_of_earlier_builds_dropped(origin, tmp_path):
    repo, shas = origin
    work = tmp_path / "build"
    r = checkout(work, str(repo), shas[2], "main", f"{shas[2]}^", "", "release/1", "main")
    assert r.returncode == 0, r.stderr
    assert parse_output(r.stdout) == {"head": shas[2], "base": shas[1]}
    assert git(work, "rev-parse", "refs/remotes/origin/release/1") == shas[0]
    assert git(work, "rev-parse", "refs/remotes/origin/main") == shas[2]
    # Buildbot's "fresh": untracked and ignored files go, tracked changes are reset
    (work / "junk").write_text("x")
    (work / "f").write_text("changed")
    r = checkout(work, str(repo), shas[1], "main", "", shas[0], "main", "main")
    assert r.returncode == 0, r.stderr
    assert parse_output(r.stdout) == {"head": shas[1], "base": shas[0]}
    assert not (work / "junk").exists() and (work / "f").read_text() == "1"
    # the release branch of the earlier build is not this build's: it is gone
    assert subprocess.run(["git", "rev-parse", "-q", "--verify", "refs/remotes/origin/release/1"],
                          cwd=work, capture_output=True).returncode != 0


def test_a_server_that_refuses_sha_wants_gets_the_branch(origin, tmp_path):
    """Protocol v0 without allowReachableSHA1InWant refuses a commit that is no ref's tip;
    the branch fetch brings it."""
    repo, shas = origin
    git(repo, "config", "uploadpack.allowReachableSHA1InWant", "false")
    git(repo, "config", "uploadpack.allowAnySHA1InWant", "false")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": "protocol.version", "GIT_CONFIG_VALUE_0": "0"}
    refused = subprocess.run(["git", "fetch", "-q", f"file://{repo}", shas[1]], cwd=tmp_path,
                             capture_output=True, text=True, env=env)
    assert refused.returncode != 0  # the fallback is really exercised
    r = checkout(tmp_path / "build", f"file://{repo}", shas[1], "main", "", "", env=env)
    assert r.returncode == 0, r.stderr
    assert parse_output(r.stdout) == {"head": shas[1]}


def test_no_head_checks_out_the_branch_and_a_bad_base_fails(origin, tmp_path):
    repo, shas = origin
    r = checkout(tmp_path / "build", str(repo), "", "main")
    assert r.returncode == 0 and parse_output(r.stdout) == {"head": shas[2]}, r.stderr
    r = checkout(tmp_path / "build", str(repo), shas[2], "main", "no-such-commit")
    assert r.returncode != 0 and "the base no-such-commit is not a commit" in r.stderr
    assert "base" not in parse_output(r.stdout)


def test_branch_names_are_argv_never_shell(origin, tmp_path):
    repo, shas = origin
    pwned = tmp_path / "pwned"
    name = f"x;touch${{IFS}}{pwned}"
    git(repo, "branch", name, shas[1])
    r = checkout(tmp_path / "build", str(repo), shas[2], "main", "", "", name, "main")
    assert r.returncode == 0, r.stderr
    assert not pwned.exists()
    assert git(tmp_path / "build", "rev-parse", f"refs/remotes/origin/{name}") == shas[1]


def test_the_token_helper_answers_only_get(tmp_path):
    """The credential helper git runs on an authentication challenge reads the token from
    the environment (nothing on disk, nothing in the URL)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **token_env("tok-123")}
    fill = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=example.com\n\n",
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert fill.returncode == 0, fill.stderr
    assert "username=x-access-token" in fill.stdout and "password=tok-123" in fill.stdout
    assert not list(tmp_path.iterdir())
    store = subprocess.run(["git", "credential", "approve"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           input="protocol=https\nhost=example.com\nusername=x\npassword=y\n\n")
    assert store.returncode == 0 and not list(tmp_path.iterdir())


def test_parse_output_reads_only_shas():
    assert parse_output("head " + "a" * 40 + "\nbase nope\nnoise\n") == {"head": "a" * 40}


def test_the_inspection_runs_in_the_same_command_on_the_commits_it_resolved(tmp_path, service_keys):
    """The evaluation build's checkout also runs ``easeml worker inspect`` (one worker
    command, not two): on the head it checked out, the base it resolved and the default
    branch's configuration; a lost build's leftovers in the output directory are gone first;
    the developer's branch name reaches it as argv."""
    import json
    import os
    import sys

    from support.models import make_model_repo

    repo = make_model_repo(tmp_path / "origin", public_key=service_keys.public, quality=0.8)
    pr = repo.commit_model(quality=0.9, branch="x;touch${IFS}pwned")
    work, out = tmp_path / "build", tmp_path / "easeml-out"
    out.mkdir()
    (out / "result.json").write_text("a lost build's")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    work.mkdir()
    r = subprocess.run(command(str(repo.path), pr.sha, "x;touch${IFS}pwned", "", repo.base.sha, "main", "main",
                               inspect_out=str(out), config_rev="refs/remotes/origin/main"),
                       cwd=work, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert parse_output(r.stdout) == {"head": pr.sha, "base": repo.base.sha}
    assert "inspected configuration" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["inspect.json"]
    data = json.loads((out / "inspect.json").read_text())
    assert data["ok"] and data["config_rev"] == repo.base.sha and data["dataset_id"] == repo.dataset_id
    assert data["samples_needed"] is None  # --no-plan: the master plans
    assert not (work / "pwned").exists() and not (tmp_path / "pwned").exists()
    # without an output directory it is the plain checkout, nothing inspected
    r = subprocess.run(command(str(repo.path), pr.sha, "main", "", repo.base.sha), cwd=work,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "inspected" not in r.stdout, r.stderr
