from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def git_repo(tmp_path):
    """An empty-ish git repository with one commit on main (for the local forge's poller)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    run("config", "user.email", "t@example.com")
    run("config", "user.name", "t")
    (repo / "README").write_text("x\n")
    run("add", "README")
    run("commit", "-q", "-m", "init")
    return repo
