"""The deployment docs stay true to the code: the sample-size table in the user guide is
what `easeml samples` computes, every relative link resolves, and every variable the
operator guide names is one docker-compose.yml reads.

Regenerate the table: .venv/bin/python tests/deploy/test_docs.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MINE = ("index.md", "user-guide.md", "operator-guide.md", "security.md")
BEGIN, END = "<!-- samples-table:begin -->", "<!-- samples-table:end -->"
TABLE_ROWS = (
    ("n > 0.9 +/- 0.05", 0.999, 8), ("n > 0.9 +/- 0.05", 0.9999, 32),
    ("n > 0.9 +/- 0.02", 0.999, 8), ("n > 0.9 +/- 0.02", 0.9999, 32),
    ("n - o > 0.02 +/- 0.02", 0.999, 8), ("n - o > 0.02 +/- 0.02", 0.9999, 32),
    ("n - o > 0.02 +/- 0.01", 0.999, 8), ("n - o > 0.02 +/- 0.01", 0.9999, 32),
    ("d < 0.1 +/- 0.02", 0.999, 8), ("d < 0.1 +/- 0.02", 0.9999, 32),
)
ADAPTIVITIES = ("none", "firstChange", "full")


def samples_table() -> str:
    from easeml_buildbot.estimator.condition import parse_condition
    from easeml_buildbot.estimator.samples import sample_size

    def cell(s) -> str:
        return f"{s.labels:,}" + (f" + {s.unlabeled:,} unlabelled" if s.unlabeled else "")

    lines = ["| condition | reliability | steps | none | firstChange | full |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for cond, rel, steps in TABLE_ROWS:
        cells = [cell(sample_size(parse_condition(cond), reliability=rel, adaptivity=a, steps=steps,
                                  method="auto")) for a in ADAPTIVITIES]
        lines.append(f"| `{cond}` | {rel} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _embedded(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def test_sample_size_table_is_what_easeml_samples_computes():
    text = (DOCS / "user-guide.md").read_text()
    assert _embedded(text) == samples_table(), "stale: run .venv/bin/python tests/deploy/test_docs.py"


def test_the_table_agrees_with_the_cli(capsys):
    from easeml_buildbot.cli import main

    cond, rel, steps = TABLE_ROWS[2]
    assert main(["samples", "-c", cond, "-r", str(rel), "-a", "full", "-H", str(steps), "--json"]) == 0
    import json

    labels = json.loads(capsys.readouterr().out)["labels"]
    assert f"| `{cond}` | {rel} | {steps} |" in _embedded((DOCS / "user-guide.md").read_text())
    assert f"{labels:,} |" in samples_table().splitlines()[2 + 2]


def test_relative_links_resolve():
    for name in MINE:
        text = (DOCS / name).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (DOCS / target).resolve().exists(), f"{name}: broken link {target}"
        for target, anchor in re.findall(r"\]\(([^)#\s]+\.md)#([^)]+)\)", text):
            headings = re.findall(r"^#+ (.+)$", (DOCS / target).read_text(), re.MULTILINE)
            slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{name}: no heading #{anchor} in {target}"


def test_operator_guide_names_only_real_variables():
    guide = (DOCS / "operator-guide.md").read_text()
    env_example = (ROOT / ".env.example").read_text()
    compose = "".join((ROOT / f).read_text() for f in
                      ("docker-compose.yml", "worker/Dockerfile", "master/Dockerfile", "worker/buildbot.tac",
                       "scripts/build-base-image.sh"))
    named = set(re.findall(r"`((?:EASEML|POSTGRES|DIND)_[A-Z0-9_]+)=?", guide))
    assert named, "the guide names no variable"
    for var in named:
        assert var in env_example or var in compose, f"operator-guide.md names {var}, which nothing reads"
    # The permissions the GitHub App needs, exactly as the master uses them.
    for perm in ("Checks: read & write", "Contents: read-only", "Pull requests: read-only", "Metadata: read-only"):
        assert perm in guide


if __name__ == "__main__":
    path = DOCS / "user-guide.md"
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{samples_table()}\n{END}{tail}")
    print(f"updated {path}", file=sys.stderr)
