"""What the owners' mail states: the decision per clause, only the condition's variables,
what the intervals guarantee, and a chart over the whole budget labelled by commit.

Verdicts come from the real estimator (``decide`` on seeded predictions), recorded in a
real SQLite ledger the way the master records them; the mail is planned from that ledger.
"""

from __future__ import annotations

import html as htmllib

import numpy as np
import pytest
from buildbot.process.results import FAILURE, SUCCESS

from easeml_buildbot.custody.ledger import Ledger
from easeml_buildbot.estimator.condition import parse_condition
from easeml_buildbot.estimator.decision import decide
from easeml_buildbot.master import mail as em
from easeml_buildbot.master.chart import chart_figure, thresholds_from_condition
from easeml_buildbot.master.mail.facts import snapshot

from mail_helpers import decoded_text

REPO, DATASET = "acme/m", "cd" * 32
POLICY = em.MailPolicy(sender="ci@example.com", operator="ops@example.com", allowed_domains=("example.com",))


def recorded(tmp_path, condition, qualities, *, old=0.80, reliability=0.99, steps=6, rows=3000, seed=7):
    """``(uses, state, verdicts)`` of ``len(qualities)`` uses decided by the estimator, in a real ledger."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    hard = rng.random(rows)
    base = np.where(hard < old, labels, 1 - labels)
    verdicts = []
    # as the worker does: the base commit's model is only run when the condition uses o or d
    old_needed = bool(parse_condition(condition).variables & {"o", "d"})
    with Ledger(f"sqlite:///{tmp_path}/ledger.sqlite") as led:
        for i, q in enumerate(qualities, start=1):
            new = np.where(hard < q, labels, 1 - labels)
            v = decide(condition, labels, new, base if old_needed else None, reliability=reliability, adaptivity="full", steps=steps,
                       mode="fp-free")
            r = led.reserve(REPO, DATASET, steps, "full", commit=f"{i:02d}" + "ab" * 19, base=f"base{i}",
                            condition=condition, reliability=reliability, mode="fp-free")
            led.commit(r.use_id, v.outcome, result={"status": "scored", "verdict": v.to_dict(),
                                                    "samples_used": v.samples_used})
            verdicts.append((r.use_id, v))
        uses, state = snapshot(led, REPO, DATASET)
    return uses, state, verdicts


def facts(use_id, **kw):
    base = dict(repo=REPO, sha="ff" * 20, status="evaluated", results=SUCCESS, pr_number=7, dataset_id=DATASET,
                use_id=use_id, owners=("owner@example.com",), author="dev@example.com")
    base.update(kw)
    return em.BuildFacts(**base)


def bodies(msg):
    return msg.get_body(("plain",)).get_content(), htmllib.unescape(msg.get_body(("html",)).get_content())


def test_the_decided_quantity_is_a_row_with_its_interval_against_the_threshold(tmp_path):
    cond = "n - o > 0.02 +/- 0.05"
    uses, state, verdicts = recorded(tmp_path, cond, [0.90, 0.83])
    use_id, v = verdicts[0]
    (owners, _author) = em.plan_mails(facts(use_id), POLICY, ledger=(uses, state))
    clause = v.clauses[0]
    text, html = bodies(owners.message)
    for body in (text, html):
        row = next(line for line in body.splitlines() if "n - o" in line and f"{clause.estimate:.4f}" in line
                   or "<code>n - o</code>" in line)
        if "<code>" in row:  # the HTML row: cells in order
            row = row + html.split(row, 1)[1].split("</tr>", 1)[0]
        for cell in (f"{clause.estimate:.4f}", f"[{clause.lower:.4f}, {clause.upper:.4f}]", "> 0.02",
                     "0.05", f"{clause.estimate - 0.02:+.4f}", clause.outcome):
            assert cell in row, (cell, row)
    assert clause.outcome == "pass" and v.outcome == "pass"
    # the per-variable table has n and o (the condition's), never d
    assert "d = " not in text and "predictions that differ" not in text + html
    assert f"n = {v.estimates['n']:.4f}" in text and f"o = {v.estimates['o']:.4f}" in text


def test_a_condition_on_n_alone_shows_no_rows_for_o_and_d(tmp_path):
    cond = "n > 0.85 +/- 0.05"
    uses, state, verdicts = recorded(tmp_path, cond, [0.95])
    assert verdicts[0][1].estimates["o"] is None  # the estimator estimated no o (no old model needed)
    (owners, _author) = em.plan_mails(facts(verdicts[0][0]), POLICY, ledger=(uses, state))
    for body in bodies(owners.message):
        assert "n/a" not in body and "old model accuracy" not in body and "predictions that differ" not in body
        assert "new model accuracy" in body


def test_the_mail_says_what_the_interval_guarantees(tmp_path):
    uses, state, verdicts = recorded(tmp_path, "n > 0.85 +/- 0.05", [0.95], reliability=0.99, steps=6)
    (owners, _author) = em.plan_mails(facts(verdicts[0][0]), POLICY, ledger=(uses, state))
    for body in bodies(owners.message):
        flat = " ".join(body.split())
        assert "With probability at least 0.99 (δ = 0.01)" in flat
        assert "all 6 uses of this test set" in flat and "saw every earlier verdict" in flat
        assert "fp-free counts as a fail" in flat


def test_chart_spans_the_budget_and_is_labelled_by_commit(tmp_path):
    cond = "n - o > 0.02 +/- 0.05"
    uses, _state, _ = recorded(tmp_path, cond, [0.90, 0.83, 0.88], steps=6)
    fig = chart_figure(uses, thresholds_from_condition(cond), budget=6)
    axis = fig.axes[-1]
    assert axis.get_xlim() == (0.5, 6.5)
    labels = [t.get_text() for t in axis.get_xticklabels()]
    assert labels == [u["commit"][:7] for u in uses] + ["unused"] * 3
    assert "6 uses" in axis.get_xlabel()
    # panels: n and o (the condition's variables) and the clause n - o; no d
    assert [ax.get_title(loc="left") for ax in fig.axes] == [
        "n: new model accuracy", "o: old model accuracy", "n - o (clause 1)"]


def test_a_too_small_test_set_is_not_a_key_problem():
    """The worker's ``dataset: ... needs 1369 samples`` cause: the owners are asked for a bigger
    test set (no mail to the operator, nobody is told it was encrypted to the wrong key)."""
    f = facts(None, status="missing_dataset", results=FAILURE, cause_kind="dataset_too_small",
              cause="dataset: 0123456789ab:data/test.csv.gpg: needs 1369 samples, the test set has 200",
              config={"condition": "n > 0.8 +/- 0.05", "reliability": 0.999, "adaptivity": "full",
                      "steps": 4, "samples_needed": 1369})
    mails = em.plan_mails(f, POLICY)
    assert [(m.kind, m.recipients) for m in mails] == [("exhaustion", ("owner@example.com",)),
                                                       ("note", ("dev@example.com",))]
    req = decoded_text(mails[0].message)
    assert "too small" in mails[0].message["Subject"] and "1369 samples" in mails[0].message["Subject"]
    assert "needs 1369 samples, the test set has 200" in req and "service's public key" in req
    assert "not encrypted to the service" not in req + decoded_text(mails[1].message)


def test_a_recorded_key_cause_still_tells_the_operator():
    f = facts(None, status="missing_dataset", results=FAILURE, cause_kind="key",
              cause="dataset: /srv/keys/easeml_priv.asc: no secret key for data/test.csv.gpg")
    assert [m.kind for m in em.plan_mails(f, POLICY)] == ["operator", "note"]
