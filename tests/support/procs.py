"""Processes as /proc shows them, for tests that check what outlived what."""

from __future__ import annotations

from pathlib import Path


def stat_fields(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses):
    ``[0]`` the state, ``[1]`` the parent's pid, ``[2]`` the process group. OSError if gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (one no parent has reaped yet is dead for us)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False
