"""The Pillow charts: what is drawn where (pixels), not how it looks."""

import math

import numpy as np
import pytest

from dsmix_cli.plots import (PALETTE, bar_chart, colormap, colour_bar, heatmap, line_chart, scatter_chart, _fmt_tick,
                             _nice_ticks)


def _has_colour(img, colour, box=None):
    a = np.asarray(img.crop(box) if box else img)
    return bool((a == np.array(colour, dtype=np.uint8)).all(axis=-1).any())


def test_colormap_ends_and_monotone_brightness():
    c = colormap(np.linspace(0, 1, 11))
    assert tuple(c[0]) == (0, 0, 4) and tuple(c[-1]) == (252, 255, 164)
    lum = c @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(lum) > 0)
    assert tuple(colormap(np.array([np.nan]))[0]) == (0, 0, 4)


@pytest.mark.parametrize("lo,hi", [(0, 1), (0.013, 0.87), (-3, 250), (1e-5, 3e-5)])
def test_nice_ticks_cover_the_range_with_round_steps(lo, hi):
    t = _nice_ticks(lo, hi)
    assert 2 <= len(t) <= 11
    assert lo - 1e-12 <= t[0] and t[-1] <= hi + 1e-12
    steps = np.diff(t)
    assert np.allclose(steps, steps[0])
    mant = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(abs(mant - m) < 1e-6 for m in (1, 2, 2.5, 5))


@pytest.mark.parametrize("value,label", [(0, "0"), (0.25, "0.25"), (5000, "5000"), (15000, "15,000"),
                                         (1e7, "1e+07"), (2.5e-4, "0.00025"), (12345.5, "1.23e+04")])
def test_tick_labels_name_the_value(value, label):
    assert _fmt_tick(value) == label
    assert float(label.replace(",", "")) == pytest.approx(value, rel=5e-3 if "e" in label else 1e-9)  # 3 significant digits


def test_line_chart_draws_each_series_in_its_colour_and_rising_curve_goes_up():
    img = line_chart({"a": ([0, 1, 2], [0.0, 0.5, 1.0]), "b": ([0, 2], [1.0, 1.0])}, title="t", x_label="step",
                     y_label="acc", hlines={"chance": 0.2})
    assert img.size == (640, 360)
    assert _has_colour(img, PALETTE[0]) and _has_colour(img, PALETTE[1])
    a = np.asarray(img)
    ys, xs = np.nonzero((a == np.array(PALETTE[0], dtype=np.uint8)).all(axis=-1))
    plot = xs < 500  # leave the legend out
    left_y = ys[plot][xs[plot] < xs[plot].min() + 10].mean()
    right_y = ys[plot][xs[plot] > xs[plot].max() - 10].mean()
    assert right_y < left_y  # higher values are drawn higher up


def test_line_chart_skips_non_finite_points_and_single_points():
    img = line_chart({"a": ([0, 1, 2], [float("nan"), 1.0, float("inf")])})
    assert _has_colour(img, PALETTE[0])


def test_scatter_chart_puts_each_point_where_its_values_say():
    img = scatter_chart({"low": (0.1, 0.2), "high": (0.3, 0.6), "gone": (float("nan"), 0.5)},
                        x_label="type acc", y_label="SRCC", x_range=(0.0, 0.4), y_range=(0.0, 0.8))
    a = np.asarray(img)
    centres = []
    for colour in PALETTE[:2]:
        ys, xs = np.nonzero((a == np.array(colour, dtype=np.uint8)).all(axis=-1))
        dot = xs < xs.min() + 9  # the dot is left of its label
        centres.append((xs[dot].mean(), ys[dot].mean()))
    (x_low, y_low), (x_high, y_high) = centres
    # axes: 58 px left margin, 12 right, 10 top, 40 bottom on 640 x 360
    assert x_low == pytest.approx(58 + 0.25 * 570, abs=2) and x_high == pytest.approx(58 + 0.75 * 570, abs=2)
    assert y_low == pytest.approx(10 + 0.75 * 310, abs=2) and y_high == pytest.approx(10 + 0.25 * 310, abs=2)
    assert not _has_colour(img, PALETTE[2])  # the non-finite point is left out


def test_bar_chart_heights_follow_the_values():
    img = bar_chart(["x", "y", "z"], [0.2, 0.8, float("nan")], errors=[0.05, 0.1, 0.0], title="srcc")
    a = np.asarray(img)
    heights = []
    for colour in PALETTE[:2]:
        mask = (a == np.array(colour, dtype=np.uint8)).all(axis=-1)
        rows = np.nonzero(mask.any(axis=1))[0]
        heights.append(rows.max() - rows.min())
    assert heights[1] > 3 * heights[0]
    assert not _has_colour(img, PALETTE[2])  # the NaN bar is only text


def test_heatmap_cells_carry_the_colormap_of_their_value():
    m = np.array([[0.0, 1.0], [0.5, np.nan]])
    img = heatmap(m, row_labels=["r0", "r1"], col_labels=["c0", "c1"], cell=20, title="confusion",
                  x_label="predicted", y_label="true")
    for value in (0.0, 1.0, 0.5):
        assert _has_colour(img, tuple(int(c) for c in colormap(np.array([value]))[0]))
    assert _has_colour(img, (200, 200, 200))  # the NaN cell


def test_colour_bar_runs_from_bright_top_to_dark_bottom():
    bar = np.asarray(colour_bar(0, 1, 100))
    assert bar[2, 5].sum() > bar[97, 5].sum()
