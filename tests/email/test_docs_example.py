"""docs/email-example.html is the owners' mail of a real run, as the code renders it today;
the rotation text in the docs is the one the mail and the check run use.

One run (``mail.example``: a test set of the size ``easeml samples`` names, seeded predictions
of four commits decided by the real estimator, a real SQLite ledger) serves every test here.
"""

from __future__ import annotations

import html as htmllib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from easeml_buildbot.master.mail import example
from easeml_buildbot.master.rotation import rotation_text

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("example")
    uses, state, use_id = example.run(f"sqlite:///{tmp}/ledger.sqlite")
    mails = example.mails_for(uses, state, use_id)
    html_path, png_path = example.write_example(str(tmp / "docs"), mails)
    return uses, Path(html_path), Path(png_path)


def test_docs_example_regenerates(run):
    _, html_path, png_path = run
    committed = (DOCS / example.EXAMPLE_HTML).read_text()
    assert html_path.read_text() == committed, (
        "docs/email-example.html is stale: run `python -m easeml_buildbot.master.mail.example docs/`")
    assert f'src="{example.EXAMPLE_CHART}"' in committed
    # pixels may differ across matplotlib/freetype versions; the size and format may not
    new, old = Image.open(png_path), Image.open(DOCS / example.EXAMPLE_CHART)
    old.verify()
    assert old.format == "PNG" and old.size == new.size


def test_example_numbers_are_the_runs_and_easeml_samples(run):
    uses, html_path, _ = run
    html = htmllib.unescape(html_path.read_text())
    out = subprocess.run([sys.executable, "-m", "easeml_buildbot.cli", "samples", "-c", example.CONDITION,
                          "-r", str(example.RELIABILITY), "-a", example.ADAPTIVITY, "-H", str(example.STEPS),
                          "--json"], capture_output=True, text=True, check=True, timeout=300)
    need = json.loads(out.stdout)["labels"]
    assert f"<td>Samples used</td><td>{need} (the condition needs {need})</td>" in html
    verdict = uses[-1]["result"]["verdict"]
    assert verdict["samples_used"] == verdict["samples_needed"] == need
    clause = verdict["clauses"][0]
    lo, hi = clause["interval"]
    row = html.split("<code>n - o</code>", 1)[1].split("</tr>", 1)[0]
    for cell in (f"{clause['estimate']:.4f}", f"[{lo:.4f}, {hi:.4f}]", "> 0.02 ± 0.01",
                 f"{clause['estimate'] - 0.02:+.4f}", clause["outcome"]):
        assert cell in row, (cell, row)
    assert f"use {len(uses)} of {example.STEPS}, {example.STEPS - len(uses)} left" in html
    assert "predictions that differ" not in html  # d is not in the condition


def test_the_guides_quote_the_one_rotation_text():
    """docs/user-guide.md and docs/datasets.md say what the mail and the check run say."""
    text = rotation_text()
    for doc in ("user-guide.md", "datasets.md"):
        assert text in (DOCS / doc).read_text(), (
            f"docs/{doc} does not quote rotation.rotation_text(); paste its output (Markdown)")
