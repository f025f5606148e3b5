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


def _bins8(x: torch.Tensor) -> torch.Tensor:
    """Each value's 256-bin histogram index, round(255 x) clipped to 0..255, as (B, N) int64."""
    return x.reshape(x.shape[0], -1).mul(255).round_().clamp_(0, 255).long()


def _histograms(idx: torch.Tensor, dt: torch.dtype, bins: int = 256) -> torch.Tensor:
    b = idx.shape[0]
    if b == 1:
        return torch.bincount(idx.view(-1), minlength=bins).view(1, bins).to(dt)
    offset = torch.arange(b, device=idx.device).view(b, 1) * bins
    return torch.bincount((idx + offset).flatten(), minlength=b * bins).view(b, bins).to(dt)


def value_histogram(x: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """The `bins`-bin histogram of all the values (every channel) of each image, binned as
    `multithresh` bins them: bin = round(value * (bins - 1)).

    Args:
        x: (B, C, H, W) in [0, 1].

    Returns:
        (B, bins) float64 counts (float32 on MPS).
    """
    dt = torch.float64 if x.device.type != "mps" else torch.float32
    idx = x.reshape(x.shape[0], -1).mul(bins - 1).round().clamp_(0, bins - 1).long()
    return _histograms(idx, dt, bins)


def multithresh(x: torch.Tensor, n: int, bins: int = 256, histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Otsu's `n`-threshold partition of each image's histogram (MATLAB `multithresh`).

    The exact optimum of the between-class variance over a `bins`-bin histogram of all the
    image's values, by dynamic programming (MATLAB approximates it by a search for n > 1).

    Args:
        x: (B, C, H, W) in [0, 1].
        n: number of thresholds.
        histogram: optional (B, bins) counts to threshold instead of x's own (the whole
            image's, for a crop).

    Returns:
        (B, n) int64 bin indices: class k holds bins (t[k-1], t[k]].
    """
    dt = torch.float64 if x.device.type != "mps" else torch.float32
    if histogram is not None:
        return _multithresh_hist(torch.as_tensor(histogram, device=x.device).to(dt).reshape(x.shape[0], bins), n)
    return _multithresh_hist(value_histogram(x, bins), n)


def _multithresh_hist(hist: torch.Tensor, n: int) -> torch.Tensor:
    """`multithresh` from (B, bins) histograms.

    score[j, i] = S^2 / W of a class spanning bins i..j (W its count, S the sum of its bin
    indices; 0 when empty, -inf when i > j). best_k[j] is the largest sum of scores of k + 1
    classes covering bins 0..j; each step maximises over the last class's first bin along the
    contiguous axis (the first maximum wins a tie).
    """
    b, bins = hist.shape
    dev, dt = hist.device, hist.dtype
    levels = torch.arange(bins, dtype=dt, device=dev)
    zero = torch.zeros(b, 1, dtype=dt, device=dev)
    pm = torch.cat([zero, hist.cumsum(1)], dim=1)  # pm[j] = count of bins < j
    sm = torch.cat([zero, (hist * levels).cumsum(1)], dim=1)
    w = pm[:, 1:, None] - pm[:, None, :-1]  # [j, i]: bins i..j
    s = sm[:, 1:, None] - sm[:, None, :-1]
    score = torch.where(w > 0, s * s / w.clamp_min(1e-12), torch.zeros_like(w))
    ii = torch.arange(bins, device=dev)
    score.masked_fill_(ii[None, :] > ii[:, None], float("-inf"))
    best = score[:, :, 0]  # best[j]: first classes end at bin j, one class so far
    # next class spans bins i+1..j after a partition ending at i (i < j): step[j, i] = score[j, i + 1]
    step = torch.cat([score[:, :, 1:], torch.full((b, bins, 1), float("-inf"), dtype=dt, device=dev)], dim=2)
    bests = [best]
    buf = torch.empty_like(step)
    for _ in range(n):
        best = torch.add(bests[-1][:, None, :], step, out=buf).amax(dim=2)
        bests.append(best)
    # backtrack from the last bin: the partition before each class end j is the first maximiser
    thresholds = []
    rows = torch.arange(b, device=dev)
    j = torch.full((b,), bins - 1, dtype=torch.long, device=dev)
    for k in range(n, 0, -1):
        j = (bests[k - 1] + step[rows, j]).argmax(dim=1)
        thresholds.append(j)
    return torch.stack(thresholds[::-1], dim=1)


def quantization(x: torch.Tensor, levels: Amount, generator: _random.Gen = None,
                 histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Type 22, MATLAB `imnoisequantize(im, n)`: thr = `multithresh(im, n)` over all channels,
    then `imquantize(im, thr, [0, thr(2:end), 1])`; n = 20, 16, 13, 10, 7.

    Both steps work on the values' 256-bin indices: one histogram for the thresholds, then a
    256-entry table (each bin's output value) looked up once per value. `histogram` (B, 256),
    optional: the thresholds come from these counts (the whole image's, for a crop) instead of
    from x's own values.
    """
    ns = per_sample(levels, x.shape[0])

    def one(xs: torch.Tensor, n: float, hist: torch.Tensor | None = None) -> torch.Tensor:
        n = int(n)
        b = xs.shape[0]
        dt = torch.float64 if xs.device.type != "mps" else torch.float32
        idx = _bins8(xs)
        counts = _histograms(idx, dt) if hist is None else torch.as_tensor(hist, device=xs.device).to(dt).reshape(b, 256)
        thr_bins = _multithresh_hist(counts, n)  # (B, n)
        thr = thr_bins.to(xs.dtype) / 255.0
        values = torch.cat([torch.zeros_like(thr[:, :1]), thr[:, 1:], torch.ones_like(thr[:, :1])], dim=1)
        every = torch.arange(256, device=xs.device).expand(b, 256).contiguous()
        table = values.gather(1, torch.searchsorted(thr_bins.contiguous(), every))  # (B, 256)
        return table.gather(1, idx).view_as(xs)

    if histogram is None:
        return apply_per_value(x, ns, one)
    out = torch.empty_like(x)
    for i, n in enumerate(ns):  # each crop with its own whole image's histogram
        out[i:i + 1] = one(x[i:i + 1], n, torch.as_tensor(histogram)[i:i + 1])
    return out
