from __future__ import annotations

import shutil
import subprocess

import pytest

from support.gpgkeys import service_keys  # noqa: F401 (session fixture)


@pytest.fixture
def git_repo(tmp_path):
    """A git repository with one commit on main (for the local forge's poller)."""
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
