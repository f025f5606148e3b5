"""Tone distortions: KADID types 16 (brighten), 17 (darken), 18 (mean shift), 22 (quantization)
and 25 (contrast change), as batched tensor functions on any device."""

from __future__ import annotations

from typing import Sequence

import torch

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._colorspace import lab2rgb, rgb2lab
from dsmix_cli.distortions._matlab import apply_per_value, curves, per_sample

Amount = float | Sequence[float]


def brighten(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 16, MATLAB `imbrighten(im, a)`.

    The curve `spline([0 .5 1], [0 .5+a/2 1])` (a parabola), clipped, is applied to the Lab
    lightness (L/100) and, separately, to the RGB channels; the result is
    (2 * curve(RGB) + clip(lab2rgb(curve(L), a*, b*))) / 3; a = 0.1, 0.2, 0.4, 0.7, 1.1.
    """

    def one(xs: torch.Tensor, a: float) -> torch.Tensor:
        knots, values = (0.0, 0.5, 1.0), (0.0, 0.5 + a / 2, 1.0)
        lab = rgb2lab(xs)
        light = curves(lab[:, 0:1] / 100.0, knots, values) * 100.0
        via_lab = lab2rgb(torch.cat([light, lab[:, 1:]], dim=1)).clamp(0.0, 1.0)
        return (2 * curves(xs, knots, values) + via_lab) / 3

    return apply_per_value(x, per_sample(amount, x.shape[0]), one)


def darken(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 17, MATLAB `imdarken(im, a)` (.m not found; mechanism from the ports): the RGB curve
    `spline([0 .5 1], [0 .5-a/2 1])`, clipped; a = 0.05, 0.1, 0.2, 0.4, 0.8."""
    return apply_per_value(x, per_sample(amount, x.shape[0]),
                           lambda xs, a: curves(xs, (0.0, 0.5, 1.0), (0.0, 0.5 - a / 2, 1.0)))


def mean_shift(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 18, MATLAB `immeanshift(im, a)`: truncate(im + a, 0, 1);
    a = 0.15, 0.08, 0, -0.08, -0.15 (level 3 is the identity)."""
    b = x.shape[0]
    shift = torch.as_tensor(per_sample(amount, b), dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
    return (x + shift).clamp(0.0, 1.0)


def contrast_change(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 25, MATLAB `imcontrastc(im, a)` = `curves(im, [0.25 - a/4, 0.75 + a/4])`: the
    not-a-knot `spline` through (0,0), (0.3, 0.25-a/4), (0.5,0.5), (0.7, 0.75+a/4), (1,1),
    clipped; a = 0.3, 0.15, 0, -0.4, -0.6."""
    knots = (0.0, 0.3, 0.5, 0.7, 1.0)
    return apply_per_value(x, per_sample(amount, x.shape[0]),
                           lambda xs, a: curves(xs, knots, (0.0, 0.25 - a / 4, 0.5, 0.75 + a / 4, 1.0)))


def value_histogram(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """The `bins`-bin histogram of all the values (every channel) of each image, binned as
    `multithresh` bins them: bin = round(value * (bins - 1)).

    Args:
        x: (B, C, H, W) in [0, 1].

    Returns:
        (B, bins) float64 counts (float32 on MPS).
    """
    b = x.shape[0]
    dt = torch.float64 if x.device.type != "mps" else torch.float32
    idx = (x.reshape(b, -1) * (bins - 1)).round().clamp(0, bins - 1).long()
    return torch.zeros(b, bins, dtype=dt, device=x.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=dt))


def multithresh(x: torch.Tensor, n: int, bins: int = 256, histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Otsu's `n`-threshold partition of each image's histogram (MATLAB `multithresh`).

    The exact optimum of the between-class variance over a `bins`-bin histogram of all the
    image's values, by dynamic programming (MATLAB approximates it by a search for n > 1).

    Args:
        x: (B, C, H, W) in [0, 1].
        n: number of thresholds.
        histogram: optional (B, bins) counts to partition instead of x's own (`value_histogram`
            of the whole image a crop comes from: MATLAB thresholds the whole image).

    Returns:
        (B, n) int64 bin indices: class k holds bins (t[k-1], t[k]].
    """
    b = x.shape[0]
    dev = x.device
    dt = torch.float64 if dev.type != "mps" else torch.float32
    if histogram is None:
        hist = value_histogram(x, bins)
    else:
        hist = torch.as_tensor(histogram, device=dev).to(dt).reshape(b, bins)
    levels = torch.arange(bins, dtype=dt, device=dev)
    zero = torch.zeros(b, 1, dtype=dt, device=dev)
    pm = torch.cat([zero, hist.cumsum(1)], dim=1)  # pm[j] = count of bins < j
    sm = torch.cat([zero, (hist * levels).cumsum(1)], dim=1)
    # score[i, j] = S^2 / W of a class spanning bins i..j (0 for an empty class)
    w = pm[:, None, 1:] - pm[:, :-1, None]
    s = sm[:, None, 1:] - sm[:, :-1, None]
    score = torch.where(w > 0, s * s / w.clamp_min(1e-12), torch.zeros_like(w))
    ii = torch.arange(bins, device=dev)
    valid = ii[:, None] <= ii[None, :]
    neg = torch.tensor(float("-inf"), dtype=dt, device=dev)
    score = torch.where(valid, score, neg)
    best = score[:, 0, :]  # best[j]: first classes end at bin j, one class so far
    back = []
    # next class spans bins i+1..j after a partition ending at i (i < j)
    step = torch.cat([score[:, 1:, :], torch.full((b, 1, bins), float("-inf"), dtype=dt, device=dev)], dim=1)
    for _ in range(n):
        cand = best[:, :, None] + step  # (B, i, j)
        best, arg = cand.max(dim=1)
        back.append(arg)
    # backtrack from the last bin
    thresholds = []
    j = torch.full((b,), bins - 1, dtype=torch.long, device=dev)
    for arg in reversed(back):
        j = arg.gather(1, j[:, None]).squeeze(1)
        thresholds.append(j)
    return torch.stack(thresholds[::-1], dim=1)


def quantization(x: torch.Tensor, levels: Amount, generator: _random.Gen = None,
                 histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Type 22, MATLAB `imnoisequantize(im, n)`: thr = `multithresh(im, n)` over all channels,
    then `imquantize(im, thr, [0, thr(2:end), 1])`; n = 20, 16, 13, 10, 7.

    `histogram` (B, 256), optional: the thresholds come from these counts (the whole image's,
    for a crop) instead of from x's own values."""
    ns = [int(v) for v in per_sample(levels, x.shape[0])]
    out = torch.empty_like(x)
    for n in sorted(set(ns)):
        idx = [i for i, v in enumerate(ns) if v == n]
        rows = torch.as_tensor(idx, device=x.device)
        xs = x[rows]
        b = xs.shape[0]
        thr_bins = multithresh(xs, n, histogram=None if histogram is None else torch.as_tensor(histogram)[idx])
        thr = thr_bins.to(xs.dtype) / 255.0
        values = torch.cat([torch.zeros_like(thr[:, :1]), thr[:, 1:], torch.ones_like(thr[:, :1])], dim=1)
        bins = (xs * 255).round().clamp(0, 255).long().reshape(b, -1)
        cls = torch.searchsorted(thr_bins.contiguous(), bins.contiguous())  # thresholds below each bin
        out[rows] = values.gather(1, cls).view_as(xs)
    return out
