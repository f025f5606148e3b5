"""Colour distortions computed on the device: KADID types 4 (colour diffusion), 5 (colour
shift), 7 (saturation in HSV) and 8 (saturation in Lab). Type 6 (colour quantization) is a
Pillow/CPU operation and lives in `compression.py`."""

from __future__ import annotations

from typing import Sequence

import torch

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._colorspace import lab2rgb, labf2rgb, rgb2gray, rgb2lab, rgb2labf
from dsmix_cli.distortions._matlab import apply_per_value, gaussian_filter, mapmm, per_sample, replicate_shift

Amount = float | Sequence[float]


def color_diffusion(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 4, MATLAB `imcolordiffuse` -> `imcolorblur(im, amount)`.

    In Lab, Gaussian-blur a* and b* (σ = 1.5*amount + 2, size 2*ceil(2σ)+1, replicate padding),
    scale them by `amount`, convert back to RGB and truncate to [0, 1]; amount = 1, 3, 6, 8, 12.
    """

    def one(xs: torch.Tensor, a: float) -> torch.Tensor:
        lab = rgb2lab(xs)
        ab = gaussian_filter(lab[:, 1:3], 1.5 * a + 2.0) * a
        return lab2rgb(torch.cat([lab[:, 0:1], ab], dim=1)).clamp(0.0, 1.0)

    return apply_per_value(x, per_sample(amount, x.shape[0]), one)


def _gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """|∇I| with MATLAB `gradient` differences: central inside, one-sided at the borders."""

    def diff(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        if n < 2:
            return torch.zeros_like(t)
        first = t.narrow(dim, 1, 1) - t.narrow(dim, 0, 1)
        last = t.narrow(dim, n - 1, 1) - t.narrow(dim, n - 2, 1)
        mid = (t.narrow(dim, 2, n - 2) - t.narrow(dim, 0, n - 2)) / 2 if n > 2 else t.narrow(dim, 0, 0)
        return torch.cat([first, mid, last], dim=dim)

    return torch.sqrt(diff(gray, -1) ** 2 + diff(gray, -2) ** 2)


def _percentile_stretch(e: torch.Tensor, low: float = 1.0, high: float = 99.0) -> torch.Tensor:
    """Stretch each map so its `low`-th and `high`-th percentiles go to 0 and 1, clipping outside.

    The percentile p is the k-th smallest value, k = round(n p / 100) clipped to [1, n] (the
    sorted-array pick), found with two partial selections (`topk`) instead of a full sort.
    """
    b = e.shape[0]
    flat = e.reshape(b, -1)
    n = flat.shape[1]

    def rank(p: float) -> int:
        return min(max(round(n * p / 100.0), 1), n)

    k_lo, k_hi = rank(low), rank(high)
    lo = flat.topk(k_lo, dim=1, largest=False).values.amax(dim=1).view(b, 1, 1, 1)
    hi = flat.topk(n - k_hi + 1, dim=1, largest=True).values.amin(dim=1).view(b, 1, 1, 1)
    span = hi - lo
    ok = span > 0
    return torch.where(ok, ((e - lo) / torch.where(ok, span, torch.ones_like(span))).clamp(0, 1), e)


def color_shift(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 5, MATLAB `imcolorshift(im, amount)`.

    Edge map e = gradient magnitude of the grey image, Gaussian-filtered (σ 4), `mapmm`,
    truncated to [0.1, 1] and percentile-stretched (1 %, 99 %). The green channel is shifted by
    round(u/|u| * amount) pixels (u uniform in [0,1)^2, rows then columns, replicate border)
    and blended with the original green with weight e; amount = 1, 3, 6, 8, 12.
    """
    b = x.shape[0]
    e = gaussian_filter(_gradient_magnitude(rgb2gray(x)), 4.0)
    e = _percentile_stretch(mapmm(e).clamp(0.1, 1.0))
    u = _random.rand(generator, b, 2, device=torch.device("cpu"), dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    amounts = torch.as_tensor(per_sample(amount, b), dtype=torch.float64).view(b, 1)
    shift = torch.round(u * amounts).to(torch.int64)
    green = x[:, 1:2]
    shifted = replicate_shift(green, shift[:, 0].tolist(), shift[:, 1].tolist())
    out = x.clone()
    out[:, 1:2] = shifted * e + green * (1 - e)
    return out


def color_saturation_hsv(x: torch.Tensor, factor: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 7, MATLAB `imcolorsaturate(im, factor)` (.m not found; mechanism from the ports).

    In HSV, S is multiplied by `factor` (0.4, 0.2, 0.1, 0, -0.4); a negative factor pushes colours
    past grey to the opposite hue and can leave [0, 1], which the dispatcher's final `mapmm`
    rescales (with mapmm off, `distort` clips).

    Computed without the HSV round trip: `hsv2rgb` gives channel n as v - v*s*k_n(h), with k_n a
    function of the hue alone, and the unchanged image has c_n = v - v*s*k_n(h). With s scaled
    by f and h, v kept, channel n becomes v - f*(v - c_n) = (1 - f)*v + f*c_n, v = max(R, G, B)
    (grey and black pixels, s = 0, included). One pass instead of two colour-space conversions.
    """
    b = x.shape[0]
    fs = per_sample(factor, b)
    v = x.amax(dim=1, keepdim=True)
    if len(set(fs)) == 1:
        return x.mul_(fs[0]).add_(v, alpha=1.0 - fs[0])
    f = torch.as_tensor(fs, dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
    return x.mul_(f).add_(v * (1 - f))


def color_saturation_lab(x: torch.Tensor, factor: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 8, MATLAB `imsaturate(im, factor)`: a* and b* multiplied by `factor` (1, 2, 3, 6, 9),
    back to RGB, truncated to [0, 1].

    Computed on the cube-root stage (fx, fy, fz) of L*a*b*: a = 500 (fx - fy) and
    b = 200 (fy - fz), so scaling a and b by s with L kept is fx <- fy + s (fx - fy),
    fz <- fy + s (fz - fy), without forming L, a and b.
    """
    b = x.shape[0]
    fs = per_sample(factor, b)
    f = rgb2labf(x, inplace=True)
    fy = f[:, 1:2]
    s = fs[0] if len(set(fs)) == 1 else torch.as_tensor(fs, dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
    for ch in (0, 2):
        c = f[:, ch:ch + 1]
        c.sub_(fy).mul_(s).add_(fy)
    return labf2rgb(f, inplace=True).clamp_(0.0, 1.0)
