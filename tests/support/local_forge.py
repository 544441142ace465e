"""A real master on the local forge (the demo's: a GitPoller on a local repository's ``main``,
console lines instead of check runs) with one process-runner worker holding the service key.

    repo = make_model_repo(tmp_path / "repo", public_key=service_keys.public, ...)
    with local_forge_master(tmp_path / "bb", repo, service_keys) as bb:
        bb.wait_first_poll()       # the poller's first poll records the current head
        repo.commit_model(quality=0.97, branch="main")
        (b1,) = bb.wait_for_builds(1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.buildbot_harness import BuildbotHarness
from support.github_sim_world import require_worker_cli

PROJECT = "demo/models"


def local_forge_master(base: Path, repo: Any, keys: Any, *, ledger_url: str | None = None,
                       **harness: Any) -> BuildbotHarness:
    """The harness (a context manager) for ``repo``; the ledger is SQLite under ``base``
    unless ``ledger_url`` is given. Skips when the worker CLI is not installed."""
    require_worker_cli()
    settings = {"forge": "local", "ledger_url": ledger_url or f"sqlite:///{Path(base)}-ledger.sqlite",
                "local": {"repo": str(repo.path), "branch": "main", "poll_interval": 1, "project": PROJECT}}
    env = {"EASEML_WORKER_KEY": str(keys.private), "EASEML_WORKER_RUNNER": "process"}
    return BuildbotHarness(base, settings=settings, worker_env=env, **harness)
