"""Adaptivity semantics: what the developer may see and when a test set retires.

ease.ml/ci's guarantee over H uses depends on how much each use tells the developer:

* ``none``: the developer learns only that the commit was evaluated (and who was told);
  verdicts go by email to the configured owners. Retires after H uses.
* ``full``: the developer sees the one-bit verdict (pass/fail) of every use. Retires after H uses.
* ``firstChange``: the developer sees failures; the first pass retires the set (the pass is
  shown too: it is the set's last use, so it cannot be exploited). Also retires after H uses.
* ``k-pass`` (e.g. ``2-pass``): the developer sees every verdict; the k-th pass retires the
  set (the estimator sizes it over the sum_{i<=k} C(H, i) transcripts that allows). Also
  retires after H uses. ``1-pass`` is ``firstChange``.

These are pure functions: the ledger calls ``retirement`` when a use is committed, the master
calls ``developer_may_see`` before writing a check run.
"""

from __future__ import annotations

import re

ADAPTIVITIES: tuple[str, ...] = ("none", "firstChange", "full")
VERDICTS: tuple[str, ...] = ("pass", "fail")

_ALIASES = {"none": "none", "full": "full", "firstchange": "firstChange", "first_change": "firstChange",
            "first-change": "firstChange"}


_K_PASS = re.compile(r"^([1-9][0-9]{0,5})-pass$")


class PolicyError(ValueError):
    """An unknown adaptivity or verdict."""


def normalize_adaptivity(adaptivity: str) -> str:
    """Canonical spelling (``none`` | ``firstChange`` | ``full`` | ``k-pass`` with k >= 2;
    ``1-pass`` is ``firstChange``); raises on anything else."""
    key = str(adaptivity).strip().lower()
    m = _K_PASS.match(key)
    if m:
        return "firstChange" if m.group(1) == "1" else key
    if key not in _ALIASES:
        raise PolicyError(f"unknown adaptivity {adaptivity!r} (use one of: {', '.join(ADAPTIVITIES)}, "
                          "or k-pass such as 2-pass)")
    return _ALIASES[key]


def passes_allowed(adaptivity: str) -> int | None:
    """How many visible passes retire the test set (1 for firstChange, k for k-pass), or None."""
    mode = normalize_adaptivity(adaptivity)
    if mode == "firstChange":
        return 1
    m = _K_PASS.match(mode)
    return int(m.group(1)) if m else None


def developer_may_see(adaptivity: str, verdict: str | None) -> bool:
    """Whether the verdict of a use may be shown to the developer (check run, PR status)."""
    mode = normalize_adaptivity(adaptivity)
    if verdict not in VERDICTS:
        return False
    if mode == "none":
        return False
    return True  # full, k-pass: every bit; firstChange: failures, and the pass that retires the set


def visible_verdict(adaptivity: str, verdict: str | None) -> str | None:
    """The verdict if the developer may see it, else None."""
    return verdict if developer_may_see(adaptivity, verdict) else None


def retirement(adaptivity: str, verdict: str | None, uses: int, budget: int,
               passes: int | None = None) -> str | None:
    """Why a test set retires after a use with ``verdict`` (``uses`` spent of ``budget``), or None.

    ``passes`` is the number of committed passes including this use (default: 1 for a pass);
    under ``k-pass`` the k-th retires the set. ``verdict`` None is a use spent without a
    verdict (the model saw the features, then failed): it counts against the budget and
    retires nothing else.
    """
    mode = normalize_adaptivity(adaptivity)
    if verdict is not None and verdict not in VERDICTS:
        raise PolicyError(f"unknown verdict {verdict!r} (use 'pass', 'fail' or None)")
    k = passes_allowed(mode)
    if k is not None and verdict == "pass" and (1 if passes is None else passes) >= k:
        return ("first pass under adaptivity firstChange" if mode == "firstChange"
                else f"pass {k} of {k} under adaptivity {mode}")
    if uses >= budget:
        return f"budget of {budget} uses spent"
    return None
