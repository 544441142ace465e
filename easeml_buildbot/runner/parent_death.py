"""``PR_SET_PDEATHSIG``: a process that must not outlive its parent asks the kernel for a
signal when the parent dies (stdlib only: the warm client imports it before anything heavy)."""

from __future__ import annotations

import os
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Ask the kernel for ``sig`` when our parent dies; ``sig`` now if it died already.

    ``easeml worker evaluate`` (SIGTERM: it unwinds) is the Buildbot worker's child, cold,
    or the warm server's (runner/warm.py); the warm client (SIGKILL) is the worker's child,
    and the warm server (SIGTERM) the worker's ProcessMonitor's. A worker killed with -9 so
    leaves no evaluation (its model, its plaintext) running. Not Linux: nothing (the
    evaluation's watchdog still sweeps)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
