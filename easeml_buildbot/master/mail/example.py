"""docs/email-example.html: the owners' mail of a real run, so its numbers cannot drift.

A made-up repository (``acme/churn-model``, condition ``n - o > 0.02 +/- 0.01`` at
reliability 0.9999, adaptivity ``full``, H = 8) gets a test set of exactly the size
``easeml samples`` names for those settings (``estimator.samples.sample_size``), seeded
simulated labels and predictions of four commits, each decided by the real estimator
(``estimator.decision.decide``) against the current baseline and recorded in a real SQLite
ledger as the master records it; the mail is then planned and rendered from that ledger by
the same code as in the master. ``tests/email/test_docs_example.py`` regenerates it and
fails when the committed files differ.

    python -m easeml_buildbot.master.mail.example docs/
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from easeml_buildbot.master.mail.facts import BuildFacts, OutgoingMail, snapshot
from easeml_buildbot.master.mail.plan import plan_mails
from easeml_buildbot.master.mail.policy import MailPolicy

EXAMPLE_HTML = "email-example.html"
EXAMPLE_CHART = "email-example-chart.png"

REPO = "acme/churn-model"
CONDITION = "n - o > 0.02 +/- 0.01"
RELIABILITY, ADAPTIVITY, STEPS, MODE = 0.9999, "full", 8, "fp-free"
SEED = 20190331  # ease.ml/ci, MLSys 2019
#: accuracy of the baseline, then of the four commits' models
BASELINE = 0.858
QUALITIES = (0.874, 0.893, 0.884, 0.925)
CLASSES = 10


def commit_sha(i: int) -> str:
    return hashlib.sha1(f"{REPO} commit {i}".encode()).hexdigest()


def _model(rng: np.random.Generator, labels: np.ndarray, hardness: np.ndarray, confusion: np.ndarray,
           accuracy: float) -> np.ndarray:
    """Predictions right on the easiest ``accuracy`` share of rows (2% of them at random) and
    wrong the same way on the others, so ``d`` is small, as for successive versions of a model."""
    own = rng.random(len(labels)) < 0.02
    right = np.where(own, rng.random(len(labels)) < accuracy, hardness < accuracy)
    return np.where(right, labels, confusion)


def run(ledger_url: str) -> tuple[list[dict], dict, int]:
    """Four evaluations recorded in the ledger at ``ledger_url``; returns its snapshot and the last use id."""
    from easeml_buildbot.custody.ledger import Ledger
    from easeml_buildbot.estimator.decision import decide
    from easeml_buildbot.estimator.samples import sample_size

    plan = sample_size(CONDITION, RELIABILITY, ADAPTIVITY, STEPS)
    rng = np.random.default_rng(SEED)
    labels = rng.integers(0, CLASSES, plan.rows)
    hardness = rng.random(plan.rows)
    confusion = (labels + rng.integers(1, CLASSES, plan.rows)) % CLASSES
    baseline = _model(rng, labels, hardness, confusion, BASELINE)
    dataset_id = hashlib.sha256(labels.tobytes()).hexdigest()  # stands for the ciphertext's digest
    use_id = None
    with Ledger(ledger_url) as led:
        for i, quality in enumerate(QUALITIES, start=1):
            new = _model(rng, labels, hardness, confusion, quality)
            verdict = decide(CONDITION, labels, new, baseline, reliability=RELIABILITY, adaptivity=ADAPTIVITY,
                             steps=STEPS, mode=MODE, plan=plan)
            r = led.reserve(REPO, dataset_id, STEPS, ADAPTIVITY, commit=commit_sha(i),
                            base=commit_sha(i - 1), condition=CONDITION, samples_needed=plan.rows,
                            reliability=RELIABILITY, mode=MODE, method=plan.method)
            led.commit(r.use_id, verdict.outcome, result={"status": "scored", "scored": True,
                                                          "verdict": verdict.to_dict(),
                                                          "samples_used": verdict.samples_used})
            use_id = r.use_id
            if verdict.outcome == "pass":
                baseline = new  # the merged commit becomes the new baseline o
        uses, state = snapshot(led, REPO, dataset_id)
    return uses, state, use_id


def mails_for(uses: list[dict], state: dict, use_id: int) -> list[OutgoingMail]:
    """The mails of use ``use_id`` of the example's ledger snapshot, as the master plans them."""
    last = next(u for u in uses if u["id"] == use_id)
    facts = BuildFacts(repo=REPO, sha=last["commit"], status="evaluated", results=0, pr_number=128,
                       pr_url=f"https://github.com/{REPO}/pull/128",
                       build_url="https://ci.example.com/#/builders/1/builds/311",
                       dataset_id=last["dataset_id"], use_id=use_id,
                       owners=("ml-leads@example.com",), author="dev@example.com")
    policy = MailPolicy(sender="easeml-ci@example.com", allowed_domains=("example.com",))
    return plan_mails(facts, policy, ledger=(uses, state))


def example_mails() -> list[OutgoingMail]:
    """The mails of the last use (the owners' first), from a fresh temporary ledger."""
    with tempfile.TemporaryDirectory() as tmp:
        uses, state, use_id = run(f"sqlite:///{tmp}/ledger.sqlite")
    return mails_for(uses, state, use_id)


def write_example(directory: str, mails: list[OutgoingMail] | None = None) -> tuple[str, str]:
    """Write the owners' example mail as HTML (chart as a file next to it) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    msg = (mails or example_mails())[0].message
    html = msg.get_body(("html",)).get_content()
    png_part = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    cid = png_part["Content-ID"].strip("<>")
    html = html.replace(f"cid:{cid}", EXAMPLE_CHART)
    (out / EXAMPLE_HTML).write_text(html)
    (out / EXAMPLE_CHART).write_bytes(png_part.get_content())
    return str(out / EXAMPLE_HTML), str(out / EXAMPLE_CHART)


if __name__ == "__main__":  # python -m easeml_buildbot.master.mail.example docs/
    import sys

    for path in write_example(sys.argv[1] if len(sys.argv) > 1 else "docs"):
        print(path)
