"""Small charts drawn with Pillow alone: line curves, labelled scatter points, bar charts, heatmaps
with a colour bar.

The project's pictures (training curves, confusion matrices, comparison bars, DSM previews)
all come from here, so they share one look and need no plotting library. Each function
returns a `PIL.Image`; `dsmix_cli.imageio.save_image_atomic` writes it.

Example:
    >>> img = line_chart({"loss": ([1, 2, 3], [2.0, 1.5, 1.2])}, title="training loss", x_label="step")
    >>> img.size
    (640, 360)
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A dark-to-bright colormap (black, indigo, red, orange, pale yellow), linear between anchors.
_ANCHORS = np.array([
    [0, 0, 4], [60, 15, 110], [180, 50, 80], [245, 130, 20], [252, 255, 164],
], dtype=np.float64)

# Distinct line / bar colours (colour-blind friendly order).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (120, 120, 120), (240, 228, 66), (0, 0, 0), (150, 30, 30), (110, 60, 170), (120, 130, 20))

_WHITE, _BLACK, _GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped, NaN as 0) to uint8 RGB, shape (..., 3)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (v - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t
    return np.round(rgb).astype(np.uint8)


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's default font at `size` (a fixed-size bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_w(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.ImageFont) -> int:
    box = draw.textbbox((0, 0), text, font=f)
    return box[2] - box[0]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 and abs(v) < 1e7 and float(v).is_integer():
        return f"{v:,.0f}"  # steps and counts: 15,000 (not 2e+04)
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:g}"


class _Frame:
    """Axes with grid, ticks, title and labels for points in data coordinates; `px`/`py` map them
    to pixels. Shared by `line_chart` and `scatter_chart`."""

    def __init__(self, img: Image.Image, pts: list[tuple[float, float]], *, title: str, x_label: str,
                 y_label: str, y_range: tuple[float, float] | None, x_range: tuple[float, float] | None,
                 extra_y: Sequence[float] = (), pad_x: bool = False):
        w, h = img.size
        self.d = d = ImageDraw.Draw(img)
        f, self.fs = font(12), font(11)
        left, right, top, bottom = 58, 12, 24 if title else 10, 40
        self.x0, self.x1 = self._span([p[0] for p in pts], x_range, pad=pad_x)
        self.y0, self.y1 = self._span([p[1] for p in pts] + list(extra_y), y_range, pad=True)
        self.left, self.top = left, top
        self.pw, self.ph = pw, ph = w - left - right, h - top - bottom
        fs = self.fs
        for t in _nice_ticks(self.y0, self.y1):
            yy = self.py(t)
            d.line([(left, yy), (left + pw, yy)], fill=_GRID)
            label = _fmt_tick(t)
            d.text((left - 6 - _text_w(d, label, fs), yy - 6), label, fill=_BLACK, font=fs)
        for t in _nice_ticks(self.x0, self.x1):
            xx = self.px(t)
            d.line([(xx, top + ph), (xx, top + ph + 4)], fill=_BLACK)
            label = _fmt_tick(t)
            d.text((xx - _text_w(d, label, fs) / 2, top + ph + 6), label, fill=_BLACK, font=fs)
        d.rectangle([left, top, left + pw, top + ph], outline=_BLACK)
        if title:
            d.text((left, 5), title, fill=_BLACK, font=f)
        if x_label:
            d.text((left + pw / 2 - _text_w(d, x_label, f) / 2, h - 16), x_label, fill=_BLACK, font=f)
        if y_label:
            label = Image.new("RGB", (_text_w(d, y_label, f) + 4, 16), _WHITE)
            ImageDraw.Draw(label).text((2, 1), y_label, fill=_BLACK, font=f)
            label = label.rotate(90, expand=True)
            img.paste(label, (2, int(top + ph / 2 - label.size[1] / 2)))

    @staticmethod
    def _span(values: list[float], fixed: tuple[float, float] | None, pad: bool) -> tuple[float, float]:
        if fixed is not None:
            return fixed
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        if pad:
            lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
        return lo, hi

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def py(self, y: float) -> float:
        return self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.ph


def _finite(pairs) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in pairs if math.isfinite(float(x)) and math.isfinite(float(y))]


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
               x_label: str = "", y_label: str = "", size: tuple[int, int] = (640, 360),
               y_range: tuple[float, float] | None = None,
               hlines: Mapping[str, float] | None = None) -> Image.Image:
    """Curves on one pair of axes, with a legend.

    Args:
        series: name -> (xs, ys); non-finite points are skipped.
        title, x_label, y_label: text around the axes.
        size: (width, height) in pixels.
        y_range: fixed (min, max) of the y axis (default: the data's).
        hlines: name -> y of dashed reference lines (e.g. chance level), drawn in grey.
    """
    img = Image.new("RGB", size, _WHITE)
    pts = [p for xs, ys in series.values() for p in _finite(zip(xs, ys))]
    fr = _Frame(img, pts, title=title, x_label=x_label, y_label=y_label, y_range=y_range, x_range=None,
                extra_y=list((hlines or {}).values()))
    d, fs, left, pw = fr.d, fr.fs, fr.left, fr.pw
    for name, yv in (hlines or {}).items():
        yy = fr.py(yv)
        for xs in range(left, left + pw, 10):
            d.line([(xs, yy), (min(xs + 5, left + pw), yy)], fill=(130, 130, 130))
        d.text((left + 4, yy - 13), name, fill=(110, 110, 110), font=fs)
    legend_y = fr.top + 4
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        line = [(fr.px(x), fr.py(y)) for x, y in _finite(zip(xs, ys))]
        if len(line) >= 2:
            d.line(line, fill=colour, width=2)
        elif line:
            x, y = line[0]
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        tw = _text_w(d, name, fs)
        lx = left + pw - tw - 28
        d.line([(lx, legend_y + 6), (lx + 18, legend_y + 6)], fill=colour, width=2)
        d.text((lx + 22, legend_y), name, fill=_BLACK, font=fs)
        legend_y += 14
    return img


def scatter_chart(points: Mapping[str, tuple[float, float]], *, title: str = "", x_label: str = "",
                  y_label: str = "", size: tuple[int, int] = (640, 360),
                  x_range: tuple[float, float] | None = None,
                  y_range: tuple[float, float] | None = None) -> Image.Image:
    """Named points on one pair of axes, each a dot in its own colour labelled with its name
    (e.g. one configuration's pretext accuracy against its probe SRCC); non-finite points are skipped.

    Args:
        points: name -> (x, y).
        title, x_label, y_label, size: as in `line_chart`.
        x_range, y_range: fixed (min, max) of the axes (default: the data's, padded).
    """
    img = Image.new("RGB", size, _WHITE)
    shown = {name: p for name, p in points.items() if _finite([p])}
    fr = _Frame(img, list(shown.values()), title=title, x_label=x_label, y_label=y_label, y_range=y_range,
                x_range=x_range, pad_x=True)  # x padded as y is, so that no dot sits on the frame
    d, fs = fr.d, fr.fs
    taken: list[tuple[float, float, float, float]] = []  # label boxes drawn so far
    for i, (name, (x, y)) in enumerate(points.items()):
        if name not in shown:
            continue
        colour = PALETTE[i % len(PALETTE)]
        cx, cy = fr.px(float(x)), fr.py(float(y))
        d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=colour)
        tw = _text_w(d, name, fs)
        tx = cx + 7 if cx + 7 + tw < fr.left + fr.pw else cx - 7 - tw
        ty = cy - 7
        while any(tx < b[2] and b[0] < tx + tw and ty < b[3] and b[1] < ty + 13 for b in taken):
            ty += 13  # below a label already there
        taken.append((tx, ty, tx + tw, ty + 13))
        d.text((tx, ty), name, fill=colour, font=fs)
    return img


def bar_chart(labels: Sequence[str], values: Sequence[float], *, errors: Sequence[float] | None = None,
              title: str = "", y_label: str = "", size: tuple[int, int] | None = None,
              y_range: tuple[float, float] | None = None) -> Image.Image:
    """Vertical bars, one per label, with optional error bars (e.g. the std over splits).

    Args:
        labels: one name per bar (drawn under it, cut to fit).
        values: the bar heights; NaN bars are drawn as "n/a".
        errors: half-lengths of the error bars (same order), or None.
        title, y_label: text around the axes.
        size: (width, height); default grows with the number of bars.
        y_range: fixed (min, max) (default: 0, or the lowest value if negative, to the highest).
    """
    n = len(labels)
    w, h = size or (max(320, 70 * n + 90), 340)
    img = Image.new("RGB", (w, h), _WHITE)
    d = ImageDraw.Draw(img)
    f, fs = font(12), font(11)
    left, right, top, bottom = 58, 12, 24 if title else 10, 46
    vals = [float(v) for v in values]
    errs = [float(e) for e in errors] if errors is not None else [0.0] * n
    finite = [(v, e) for v, e in zip(vals, errs) if math.isfinite(v)]
    if y_range is not None:
        y0, y1 = y_range
    else:
        y0 = min([0.0] + [v - (e if math.isfinite(e) else 0) for v, e in finite])
        y1 = max([1e-9] + [v + (e if math.isfinite(e) else 0) for v, e in finite])
        y1 += 0.05 * (y1 - y0)
    pw, ph = w - left - right, h - top - bottom

    def py(y: float) -> float:
        return top + (1 - (min(max(y, y0), y1) - y0) / (y1 - y0)) * ph

    for t in _nice_ticks(y0, y1):
        yy = py(t)
        d.line([(left, yy), (left + pw, yy)], fill=_GRID)
        label = _fmt_tick(t)
        d.text((left - 6 - _text_w(d, label, fs), yy - 6), label, fill=_BLACK, font=fs)
    slot = pw / max(n, 1)
    for i, (name, v, e) in enumerate(zip(labels, vals, errs)):
        cx = left + (i + 0.5) * slot
        bw = slot * 0.6
        if math.isfinite(v):
            d.rectangle([cx - bw / 2, py(max(v, 0) if y0 <= 0 else v), cx + bw / 2, py(min(v, 0) if y0 <= 0 else y0)],
                        fill=PALETTE[i % len(PALETTE)])
            if e and math.isfinite(e):
                d.line([(cx, py(v - e)), (cx, py(v + e))], fill=_BLACK, width=1)
                for yy in (py(v - e), py(v + e)):
                    d.line([(cx - 5, yy), (cx + 5, yy)], fill=_BLACK)
            text = f"{v:.3f}"
            d.text((cx - _text_w(d, text, fs) / 2, py(v + (e if math.isfinite(e) else 0)) - 14), text,
                   fill=_BLACK, font=fs)
        else:
            d.text((cx - _text_w(d, "n/a", fs) / 2, py(y0) - 14), "n/a", fill=_BLACK, font=fs)
        short = name
        while len(short) > 3 and _text_w(d, short, fs) > slot - 4:
            short = short[:-2] + "…"
        d.text((cx - _text_w(d, short, fs) / 2, top + ph + 6), short, fill=_BLACK, font=fs)
    d.rectangle([left, top, left + pw, top + ph], outline=_BLACK)
    if title:
        d.text((left, 5), title, fill=_BLACK, font=f)
    if y_label:
        label = Image.new("RGB", (_text_w(d, y_label, f) + 4, 16), _WHITE)
        ImageDraw.Draw(label).text((2, 1), y_label, fill=_BLACK, font=f)
        label = label.rotate(90, expand=True)
        img.paste(label, (2, int(top + ph / 2 - label.size[1] / 2)))
    return img


def colour_bar(lo: float, hi: float, height: int, width: int = 14, label: str = "") -> Image.Image:
    """A vertical colour bar for `colormap`, lo at the bottom, hi at the top, with end labels."""
    f = font(11)
    ramp = colormap(np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1))
    texts = [f"{hi:.3g}", f"{lo:.3g}"] + ([label] if label else [])
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tw = max(_text_w(probe, t, f) for t in texts)
    img = Image.new("RGB", (width + 6 + tw, height), _WHITE)
    img.paste(Image.fromarray(ramp), (0, 0))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, width - 1, height - 1], outline=_BLACK)
    d.text((width + 4, 0), texts[0], fill=_BLACK, font=f)
    d.text((width + 4, height - 12), texts[1], fill=_BLACK, font=f)
    if label:
        d.text((width + 4, height // 2 - 6), label, fill=_BLACK, font=f)
    return img


def heatmap(matrix: np.ndarray, *, row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
            title: str = "", cell: int = 18, vmin: float | None = None, vmax: float | None = None,
            annotate: bool = False, x_label: str = "", y_label: str = "") -> Image.Image:
    """A matrix as coloured cells (e.g. a confusion matrix), with labels and a colour bar.

    Args:
        matrix: (rows, cols) values; NaN cells are drawn grey.
        row_labels, col_labels: names of the rows (left) and columns (top).
        title: text above.
        cell: cell size in pixels.
        vmin, vmax: the colour scale (default: the finite data's range).
        annotate: write each value in its cell (two decimals).
        x_label, y_label: what the columns and rows are (e.g. "predicted", "true").
    """
    m = np.asarray(matrix, dtype=np.float64)
    rows, cols = m.shape
    finite = m[np.isfinite(m)]
    lo = float(finite.min()) if vmin is None and finite.size else (vmin if vmin is not None else 0.0)
    hi = float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    span = hi - lo if hi > lo else 1.0
    f, fs = font(12), font(10)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rl = [str(s) for s in (row_labels or [])]
    cl = [str(s) for s in (col_labels or [])]
    left = 8 + (max((_text_w(probe, s, fs) for s in rl), default=0) + 6) + (16 if y_label else 0)
    top = (20 if title else 4) + (14 if x_label else 0) + (14 if cl else 0)
    bar = colour_bar(lo, hi, rows * cell)
    w = left + cols * cell + 10 + bar.size[0] + 6
    h = top + rows * cell + 8
    img = Image.new("RGB", (w, h), _WHITE)
    d = ImageDraw.Draw(img)
    rgb = colormap((np.nan_to_num(m, nan=lo) - lo) / span)
    for i in range(rows):
        for j in range(cols):
            x, y = left + j * cell, top + i * cell
            fill = (200, 200, 200) if not np.isfinite(m[i, j]) else tuple(int(c) for c in rgb[i, j])
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill)
            if annotate and np.isfinite(m[i, j]):
                text = f"{m[i, j]:.2f}".lstrip("0") if abs(m[i, j]) < 1 else f"{m[i, j]:.1f}"
                light = (m[i, j] - lo) / span < 0.6
                d.text((x + 1, y + cell / 2 - 6), text, fill=_WHITE if light else _BLACK, font=fs)
    for i, s in enumerate(rl):
        d.text((left - 4 - _text_w(d, s, fs), top + i * cell + cell / 2 - 6), s, fill=_BLACK, font=fs)
    for j, s in enumerate(cl):
        d.text((left + j * cell + cell / 2 - _text_w(d, s, fs) / 2, top - 13), s, fill=_BLACK, font=fs)
    if title:
        d.text((8, 3), title, fill=_BLACK, font=f)
    if x_label:
        d.text((left + cols * cell / 2 - _text_w(d, x_label, f) / 2, top - (28 if cl else 14)), x_label,
               fill=_BLACK, font=f)
    if y_label:
        label = Image.new("RGB", (_text_w(d, y_label, f) + 4, 16), _WHITE)
        ImageDraw.Draw(label).text((2, 1), y_label, fill=_BLACK, font=f)
        label = label.rotate(90, expand=True)
        img.paste(label, (1, int(top + rows * cell / 2 - label.size[1] / 2)))
    img.paste(bar, (left + cols * cell + 10, top))
    return img
