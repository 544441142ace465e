"""The chart: a valid PNG per use history, one panel per variable and multi-term clause."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from easeml_buildbot.master.chart import Threshold, render_chart, thresholds_from_condition, use_points

from mail_helpers import ledger_uses


def png_image(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_thresholds_from_the_real_condition_parser():
    th = thresholds_from_condition("n - o > 0.02 +/- 0.01 /\\ d < 0.1 +/- 0.01")
    assert th == (Threshold(((1.0, "n"), (-1.0, "o")), ">", 0.02, 0.01), Threshold(((1.0, "d"),), "<", 0.1, 0.01))
    assert th[0].label == "n - o" and th[0].on_variable() is None
    assert th[1].on_variable() == ("d", 0.1, "<")
    # a negative coefficient flips the comparison on the variable
    assert Threshold(((-2.0, "n"),), ">", -1.6).on_variable() == ("n", 0.8, "<")


def test_points_skip_unscored_uses_and_read_clause_intervals():
    uses = ledger_uses(3)
    uses.insert(1, {"id": 99, "use_number": 9, "result": {"status": "model_error", "verdict": None}})
    pts = use_points(uses)
    assert [p.number for p in pts] == [1, 2, 3]
    assert np.allclose(pts[0].intervals["n"], (0.79, 0.83))
    est, ivl = pts[0].clause_estimates[0]
    assert np.isclose(est, 0.01) and np.allclose(ivl, (-0.01, 0.03))


def test_one_panel_per_variable_and_clause_and_deterministic():
    uses = ledger_uses(5)
    th = thresholds_from_condition("n - o > 0.02 +/- 0.01")
    a = render_chart(uses, th)
    assert a == render_chart(uses, th)  # same input, same bytes (no timestamps)
    three = png_image(a)  # n, o (the variables the condition uses) + the clause n - o
    one = png_image(render_chart(uses, thresholds_from_condition("n > 0.5 +/- 0.05")))  # n only
    four = png_image(render_chart(uses, thresholds_from_condition("n - o > 0.02 +/- 0.01 /\\ d < 0.1 +/- 0.01")))
    assert three.size[0] == one.size[0] == four.size[0]
    assert one.size[1] < three.size[1] < four.size[1]
    # the highlighted (current) use changes the picture
    assert render_chart(uses, th, highlight=2) != a


def test_threshold_line_is_drawn_where_the_threshold_is():
    """Render a flat history far from the threshold: the dashed threshold colour appears in the plot."""
    uses = ledger_uses(4)
    with_line = png_image(render_chart(uses, [Threshold(((1.0, "n"),), ">", 0.83, 0.0)])).convert("RGB")
    without = png_image(render_chart(uses, [])).convert("RGB")
    blue = np.array([0x09, 0x69, 0xDA])
    def blue_pixels(img):
        arr = np.asarray(img).astype(int)
        return int((np.abs(arr - blue).sum(axis=2) < 40).sum())
    assert blue_pixels(with_line) > 50 and blue_pixels(without) == 0


def test_empty_history_still_renders():
    img = png_image(render_chart([], ()))
    assert img.size[0] > 100
