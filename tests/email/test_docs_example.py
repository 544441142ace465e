"""docs/email-example.html and its chart are what the code renders today."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from easeml_buildbot.master import mail as em

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_docs_example_regenerates(tmp_path):
    html_path, png_path = em.write_example(str(tmp_path))
    committed = (DOCS / em.EXAMPLE_HTML).read_text()
    assert Path(html_path).read_text() == committed, (
        "docs/email-example.html is stale: run `python -m easeml_buildbot.master.mail.example docs/`")
    assert f'src="{em.EXAMPLE_CHART}"' in committed
    # pixels may differ across matplotlib/freetype versions; the size and format may not
    new, old = Image.open(png_path), Image.open(DOCS / em.EXAMPLE_CHART)
    old.verify()
    assert old.format == "PNG" and old.size == new.size
