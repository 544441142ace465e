"""Operator limits from the environment, lowered (never raised) by the repository."""

from __future__ import annotations

import pytest

from easeml_buildbot.runner.base import BoundedLog, Limits, ModelError, parse_bytes


def test_parse_bytes():
    assert parse_bytes("512m") == 512 << 20
    assert parse_bytes("2g") == 2 << 30
    assert parse_bytes("1.5GiB") == 3 << 29
    assert parse_bytes(64) == 64 << 20
    assert parse_bytes("100k") == 100 << 10
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_from_env_and_settings():
    lim = Limits.from_env({"EASEML_MEMORY": "1g", "EASEML_TIMEOUT": "30", "EASEML_PIDS": "50"},
                          settings={"cpus": 2, "timeout": 60})
    assert (lim.memory, lim.timeout, lim.pids, lim.cpus) == (1 << 30, 30.0, 50, 2.0)
    assert Limits.from_env({}) == Limits()
    with pytest.raises(ValueError, match="EASEML_TIMEOUT"):
        Limits.from_env({"EASEML_TIMEOUT": "-1"})
    with pytest.raises(ValueError, match="unknown key"):
        Limits.from_env({}, settings={"gpus": 1})


def test_repo_can_only_lower():
    op = Limits(memory=1 << 30, timeout=60, cpus=1.0, pids=100)
    asked = op.lowered_by({"memory": "4g", "timeout": 10, "cpus": 8, "pids": 10, "dockerfile": "x"})
    assert asked.memory == 1 << 30          # more than allowed: the operator's limit stays
    assert asked.timeout == 10              # less: taken
    assert asked.cpus == 1.0
    assert asked.pids == 10
    assert op.lowered_by({}) == op
    with pytest.raises(ModelError) as err:
        op.lowered_by({"timeout": "soon"})
    assert err.value.cause == "bad_model_config" and "model.timeout" in err.value.message


def test_bounded_log_keeps_head_and_tail():
    log = BoundedLog(300)
    for i in range(10_000):
        log.write(f"line {i}\n")
    text = log.getvalue()
    assert text.startswith("line 0\n")
    assert text.endswith("line 9999\n")
    assert "characters cut" in text
    assert len(text) < 400
    small = BoundedLog(1000)
    small.write("abc")
    small.write("def")
    assert small.getvalue() == "abcdef"
    assert "suppressed" in BoundedLog(0).getvalue() or BoundedLog(0).getvalue() == ""
    one = BoundedLog(10)
    one.write("x" * 50)
    assert one.getvalue().count("x") == 10
