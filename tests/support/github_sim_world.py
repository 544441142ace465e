"""A GitHub App master (real processes) wired to the GitHub stand-in, plus scenario helpers."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.buildbot_harness import BuildbotHarness
from support.github_sim import GitHubSim, adapt_check_suite, adapt_pull_request, webhook_example
from support.models import ModelRepo, make_model_repo

SECRET = "whsec-" + uuid.uuid4().hex
INSTALLATION = 31337


@dataclass
class GitHubWorld:
    sim: GitHubSim
    bb: BuildbotHarness
    keys: Any
    base: Path
    ledger_url: str

    def repo(self, name: str, **kwargs: Any) -> ModelRepo:
        return make_model_repo(self.base / "repos" / name, public_key=self.keys.public, **kwargs)

    def pr_payload(self, name: str, repo: ModelRepo, number: int, head_sha: str, action: str = "opened",
                   title: str = "a better model", base_sha: str | None = None) -> dict[str, Any]:
        subprocess.run(["git", "update-ref", f"refs/pull/{number}/head", head_sha], cwd=repo.path, check=True)
        self.sim.commit_messages[head_sha] = subprocess.run(
            ["git", "log", "-1", "--format=%B", head_sha], cwd=repo.path, check=True,
            capture_output=True, text=True).stdout
        p = webhook_example("pull_request", action, full_name=f"acme/{name}", clone_url=str(repo.path),
                            installation_id=INSTALLATION, repo_id=abs(hash(name)) % 10**8)
        return adapt_pull_request(p, number=number, head_sha=head_sha, base_sha=base_sha or repo.base.sha,
                                  title=title)

    def check_payload(self, kind: str, action: str, name: str, repo: ModelRepo, number: int, head_sha: str,
                      message: str = "update model") -> dict[str, Any]:
        subprocess.run(["git", "update-ref", f"refs/pull/{number}/head", head_sha], cwd=repo.path, check=True)
        p = webhook_example(kind, action, full_name=f"acme/{name}", clone_url=str(repo.path),
                            installation_id=INSTALLATION, repo_id=abs(hash(name)) % 10**8)
        return adapt_check_suite(p, kind, number=number, head_sha=head_sha, base_sha=repo.base.sha,
                                 message=message, name="easeml/ci" if kind == "check_run" else None)

    def send(self, event: str, payload: dict[str, Any], **kw: Any) -> tuple[int, str]:
        kw.setdefault("secret", SECRET)
        return self.bb.post_webhook(event, payload, **kw)

    def calls(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        return self.sim.check_run_calls(f"acme/{name}")

    def statuses(self, name: str) -> list[tuple[str, str | None, str | None]]:
        return [(v, b.get("status"), b.get("conclusion")) for v, b in self.calls(name)]

    def wait_completed(self, name: str, count: int = 1, timeout: float = 180) -> None:
        ok = self.sim.wait_for(lambda: sum(1 for _, s, _c in self.statuses(name) if s == "completed") >= count,
                               timeout=timeout)
        if not ok:
            raise AssertionError(f"{name}: check runs {self.statuses(name)}\n{self.bb.master_log()[-8000:]}")


def github_app_settings(sim: GitHubSim, app_key: str, base: Path, keys: Any, *, runner: str = "process",
                        ledger_url: str | None = None, extra_settings: dict[str, Any] | None = None,
                        worker_env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(master settings, worker env) of a GitHub App master wired to ``sim`` (also for several masters)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "app.pem").write_text(app_key)
    settings = {"forge": "github", "runner": runner, "ledger_url": ledger_url or f"sqlite:///{base}/ledger.sqlite",
                "github": {"app_id": 4242, "private_key_path": str(base / "app.pem"),
                           "webhook_secret": SECRET, "api_url": sim.url}}
    for k, v in (extra_settings or {}).items():
        settings[k] = {**settings[k], **v} if isinstance(v, dict) and isinstance(settings.get(k), dict) else v
    env = {"EASEML_WORKER_KEY": str(keys.private), "EASEML_WORKER_RUNNER": runner, **(worker_env or {})}
    return settings, env


def start_world(base: Path, keys: Any, *, workers: int = 2, runner: str = "process",
                extra_settings: dict[str, Any] | None = None,
                worker_env: dict[str, str] | None = None,
                **harness: Any) -> tuple[GitHubWorld, Any]:
    """A GitHub stand-in and a master wired to it; ``harness`` goes to BuildbotHarness
    (``master_cfg_extra``, ``env``, ``root``)."""
    sim, app_key = GitHubSim.with_new_app_key(app_id=4242)
    sim.start()
    settings, env = github_app_settings(sim, app_key, base, keys, runner=runner, extra_settings=extra_settings,
                                        worker_env=worker_env)
    ledger_url = settings["ledger_url"]
    bb = BuildbotHarness(base / "bb", settings=settings, workers=workers, worker_env=env, **harness)
    try:
        bb.start()
    except BaseException:
        bb.stop()
        sim.stop()
        raise
    world = GitHubWorld(sim=sim, bb=bb, keys=keys, base=base, ledger_url=ledger_url)

    def stop() -> None:
        bb.stop()
        sim.stop()
    return world, stop


@contextmanager
def running_world(base: Path, keys: Any, *, needs: str | None = None, **kwargs: Any) -> Iterator[GitHubWorld]:
    """A started world for a module's tests, stopped afterwards. Skips, saying why, when the
    simulator's fixtures or the worker CLI are missing or ``needs`` (a reason) is set."""
    from support.github_sim import fixtures_available

    reason = fixtures_available() or needs
    if reason:
        pytest.skip(reason)
    require_worker_cli()
    world, stop = start_world(base, keys, **kwargs)
    try:
        yield world
    finally:
        stop()


def require_worker_cli() -> None:
    """The evaluation build drives `easeml worker inspect/evaluate` (runner issue)."""
    import importlib.util

    if importlib.util.find_spec("easeml_buildbot.runner.cli") is None:
        pytest.skip("easeml_buildbot.runner.cli (easeml worker inspect/evaluate) is not installed")
