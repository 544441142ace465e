"""What a worker command imports: each ``easeml worker ...`` is a fresh Python process on
the worker, started several times per build, so what it imports is paid per build."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

from easeml_buildbot import cli


def _commands(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    importlib.import_module(module).register(sub)
    return set(sub.choices)


def test_command_table_names_every_registered_command():
    registered = {name: m for m in cli.COMMAND_MODULES for name in _commands(m)}
    assert registered == cli.COMMANDS
    assert set(cli.COMMANDS.values()) == set(cli.COMMAND_MODULES)


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import json, sys\nfrom easeml_buildbot.cli import main\n"
            "try:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(sys.modules)), file=sys.stderr)" % (argv,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(json.loads(r.stderr.strip().splitlines()[-1]))


def test_worker_command_imports_neither_the_master_nor_the_ledger():
    mods = _modules_after(["worker", "inspect", "--help"])
    for heavy in ("sqlalchemy", "scipy", "buildbot", "twisted", "easeml_buildbot.estimator.cli",
                  "easeml_buildbot.custody.ledger"):
        assert heavy not in mods, heavy


def test_top_level_help_still_lists_every_command(capsys):
    try:
        cli.main(["--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_first_word_gets_the_full_parser(capsys):
    try:
        cli.main(["no-such-command"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_inspect_no_plan_imports_no_scipy_and_the_master_plans_the_same(digits_repo, tmp_path):
    """``--no-plan`` (what the build runs): the worker validates the configuration without
    SciPy; the master's ``plan_inspection`` then gives exactly the worker's planned answer,
    also for a condition that cannot be planned (error text, ok false, no dataset id)."""
    from easeml_buildbot.master.steps import plan_inspection
    from easeml_buildbot.runner.evaluate import inspect_repo

    base = digits_repo.base.sha
    out = tmp_path / "inspect.json"
    mods = _modules_after(["worker", "inspect", "--repo", str(digits_repo.path), "--base", base,
                           "--no-plan", "--out", str(out)])
    assert not any(m == "scipy" or m.startswith("scipy.") for m in mods)
    unplanned = json.loads(out.read_text())
    assert unplanned["ok"] and unplanned["samples_needed"] is None
    assert plan_inspection(unplanned) == inspect_repo(digits_repo.path, base)
    bad = digits_repo.commit_files({".easeml.yml": "condition: n > 0.5 +/- 1e-9\n"}, branch="unplannable")
    planned = inspect_repo(digits_repo.path, bad)
    assert not planned["ok"] and "condition:" in planned["error"]
    assert plan_inspection(inspect_repo(digits_repo.path, bad, plan=False)) == planned


def test_inspect_reports_the_head_commits_author(digits_repo):
    """The outcome step's ``git log`` for the author runs only when no inspection was read:
    the inspection carries the address (what ``git log -1 --format=%ae`` says)."""
    from easeml_buildbot.runner.evaluate import inspect_repo

    pr = digits_repo.commit_model(quality=0.9, branch="author-check")
    expected = subprocess.run(["git", "-C", str(digits_repo.path), "log", "-1", "--format=%ae", pr.sha],
                              capture_output=True, text=True, check=True).stdout.strip()
    assert expected and inspect_repo(digits_repo.path, digits_repo.base.sha, pr.sha)["author_email"] == expected
    assert "author_email" not in inspect_repo(digits_repo.path, digits_repo.base.sha)


def test_evaluate_with_the_masters_plan_imports_no_scipy_stats_and_decides_the_same(
        digits_repo, service_keys, tmp_path):
    """The build passes the master's plan (``--plan``): the worker checks it against the
    configuration instead of planning, and decides without ``scipy.stats`` (a second of
    import per evaluation); the verdict is the one the worker's own plan gives, bit for bit."""
    from easeml_buildbot.config import parse_config
    from easeml_buildbot.runner.evaluate import evaluate_pr

    base = digits_repo.base.sha
    text = subprocess.run(["git", "-C", str(digits_repo.path), "show", f"{base}:.easeml.yml"],
                          capture_output=True, text=True, check=True).stdout
    plan = parse_config(text).required_samples().to_dict()
    args = ["worker", "evaluate", "--repo", str(digits_repo.path), "--head", base, "--base", base,
            "--key", str(service_keys.private), "--runner", "process",
            "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "result.json"
    mods = _modules_after([*args, "--out", str(out), "--plan", json.dumps(plan)])
    given = json.loads(out.read_text())
    assert given["status"] == "scored", given
    assert "scipy.stats" not in mods, sorted(m for m in mods if "stats" in m or "optimize" in m)
    own = evaluate_pr(digits_repo.path, head=base, base=base, key=service_keys.private, passphrase=None,
                      runner="process", cache_dir=tmp_path / "cache2")
    assert own["status"] == "scored"
    assert given["verdict"] == own["verdict"] and given["samples_used"] == own["samples_used"]

    # a plan for another configuration is refused before anything is looked at
    other = {**plan, "reliability": 0.5}
    mods = _modules_after([*args, "--out", str(out), "--plan", json.dumps(other)])
    refused = json.loads(out.read_text())
    assert (refused["status"], refused["cause"], refused["spent"]) == ("infra_error", "plan", False)
    assert "reliability" in refused["message"] and refused["verdict"] is None
    mods = _modules_after([*args, "--out", str(out), "--plan", "{not json"])
    assert json.loads(out.read_text())["cause"] == "plan"
