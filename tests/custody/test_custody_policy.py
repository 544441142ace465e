"""Adaptivity semantics as pure functions: who sees what, and when a test set retires."""

from __future__ import annotations

import pytest

from easeml_buildbot.custody.policy import (
    PolicyError, developer_may_see, normalize_adaptivity, retirement, visible_verdict,
)


@pytest.mark.parametrize("adaptivity,verdict,sees", [
    ("none", "pass", False), ("none", "fail", False),
    ("full", "pass", True), ("full", "fail", True),
    ("firstChange", "fail", True), ("firstChange", "pass", True),
    ("full", None, False), ("full", "unknown", False), ("firstChange", None, False),
])
def test_developer_may_see(adaptivity, verdict, sees):
    assert developer_may_see(adaptivity, verdict) is sees
    assert visible_verdict(adaptivity, verdict) == (verdict if sees else None)


@pytest.mark.parametrize("spelling,canonical", [
    ("none", "none"), ("full", "full"), ("firstChange", "firstChange"), ("firstchange", "firstChange"),
    ("first_change", "firstChange"), (" FULL ", "full"), ("2-pass", "2-pass"), ("1-pass", "firstChange"),
])
def test_normalize(spelling, canonical):
    assert normalize_adaptivity(spelling) == canonical


def test_unknown_adaptivity_and_verdict():
    with pytest.raises(PolicyError, match="unknown adaptivity 'adaptive'.*none, firstChange, full"):
        developer_may_see("adaptive", "pass")
    with pytest.raises(PolicyError, match="unknown verdict"):
        retirement("full", "unknown", 1, 3)


@pytest.mark.parametrize("adaptivity", ["none", "full", "firstChange"])
def test_retirement_after_budget(adaptivity):
    assert retirement(adaptivity, "fail", 2, 3) is None
    assert retirement(adaptivity, "fail", 3, 3) == "budget of 3 uses spent"


def test_retirement_first_change_pass():
    assert retirement("firstChange", "pass", 1, 10) == "first pass under adaptivity firstChange"
    assert retirement("full", "pass", 1, 10) is None
    assert retirement("none", "pass", 1, 10) is None


def test_retirement_k_pass():
    assert developer_may_see("3-pass", "pass") and developer_may_see("3-pass", "fail")
    assert retirement("3-pass", "pass", 4, 10, passes=2) is None
    assert retirement("3-pass", "pass", 5, 10, passes=3) == "pass 3 of 3 under adaptivity 3-pass"
    assert retirement("3-pass", "fail", 6, 10, passes=3) is None
    assert retirement("3-pass", "fail", 10, 10, passes=1) == "budget of 10 uses spent"
    with pytest.raises(PolicyError, match="k-pass"):
        normalize_adaptivity("0-pass")
