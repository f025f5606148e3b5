"""Spatial distortions: KADID types 19 (jitter), 20 (non-eccentricity patch), 21 (pixelate) and
23 (colour block), as batched tensor functions on any device.

Random positions are drawn for a fixed number of repetitions per image (the largest level's
count), whatever the level, so an image's draws do not depend on the other images in its batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._matlab import apply_per_value, per_sample

Amount = float | Sequence[float]

PATCH_SIZE = 16  # imnoneccentricity
PATCH_RADIUS = 16  # source margin; the copy lands within ±RADIUS/2
BLOCK_SIZE = 32  # imcolorblock


def jitter(x: torch.Tensor, amount: Amount, generator: _random.Gen = None, iterations: int = 5) -> torch.Tensor:
    """Type 19, MATLAB `imjitter(im, a)` -> `imscatter(im, a, 5)`.

    Five times: every pixel is displaced by an independent N(0, a²) offset in x and y and the
    image is resampled bicubically at (x - dx, y - dy), border pixels repeated;
    a = 0.05, 0.1, 0.2, 0.5, 1 pixels.
    """
    b, c, h, w = x.shape
    a = torch.as_tensor(per_sample(amount, b), dtype=x.dtype, device=x.device).view(b, 1, 1, 1)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    y = x
    for _ in range(iterations):
        shift = _random.randn(generator, b, 2, h, w, device=x.device, dtype=x.dtype) * a
        gx = (xs - shift[:, 1]) * (2.0 / max(w - 1, 1)) - 1.0
        gy = (ys - shift[:, 0]) * (2.0 / max(h - 1, 1)) - 1.0
        grid = torch.stack([gx, gy], dim=-1)
        y = F.grid_sample(y, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return y.clamp(0.0, 1.0)


def non_eccentricity_patch(x: torch.Tensor, count: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 20, MATLAB `imnoneccentricity(im, n)`: n times, copy a random 16x16 patch (at least
    16 px from the border where the image allows) to a position offset by up to ±8 px;
    n = 20, 40, 60, 80, 100."""
    b, c, h, w = x.shape
    counts = [int(v) for v in per_sample(count, b)]
    reps = max(100, max(counts))
    u = _random.rand(generator, b, reps, 4, device=x.device, dtype=torch.float64)
    ph, pw = min(PATCH_SIZE, h), min(PATCH_SIZE, w)
    mh = min(PATCH_RADIUS, max(0, (h - ph) // 2))
    mw = min(PATCH_RADIUS, max(0, (w - pw) // 2))
    r0 = (u[..., 0] * (h - ph - 2 * mh)).round().long() + mh
    c0 = (u[..., 1] * (w - pw - 2 * mw)).round().long() + mw
    r1 = (r0 + ((u[..., 2] - 0.5) * PATCH_RADIUS).round().long()).clamp(0, h - ph)
    c1 = (c0 + ((u[..., 3] - 0.5) * PATCH_RADIUS).round().long()).clamp(0, w - pw)
    if x.device.type == "cpu":  # plain slice copies, one image at a time, in place
        pos = torch.stack([r0, c0, r1, c1], dim=-1).tolist()
        for i in range(b):
            for a, bb, cc, d in pos[i][: counts[i]]:
                x[i, :, cc:cc + ph, d:d + pw] = x[i, :, a:a + ph, bb:bb + pw].clone()
        return x
    ar_h = torch.arange(ph, device=x.device)
    ar_w = torch.arange(pw, device=x.device)
    y = x.clone()
    counts_t = torch.as_tensor(counts, device=x.device)
    for t in range(max(counts)):
        active = torch.nonzero(counts_t > t).flatten()
        bi = active.view(-1, 1, 1)
        src = y[bi, :, (r0[active, t].view(-1, 1, 1) + ar_h.view(1, -1, 1)),
                (c0[active, t].view(-1, 1, 1) + ar_w.view(1, 1, -1))]
        y[bi, :, (r1[active, t].view(-1, 1, 1) + ar_h.view(1, -1, 1)),
          (c1[active, t].view(-1, 1, 1) + ar_w.view(1, 1, -1))] = src
    return y


def _nearest_index(out_size: int, in_size: int, scale: float, device: torch.device) -> torch.Tensor:
    """0-based source indices of MATLAB `imresize(..., 'nearest')` along one axis."""
    pos = torch.arange(1, out_size + 1, dtype=torch.float64, device=device)
    u = pos / scale + 0.5 * (1 - 1 / scale)
    idx = torch.floor(u + 0.5)  # MATLAB round (u > 0: half away from zero)
    return (idx - 1).clamp(0, in_size - 1).long()


def pixelate(x: torch.Tensor, strength: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 21, MATLAB `impixelate(im, s)`: z = 0.95 - s^0.6; `imresize(im, z, 'nearest')` then
    `imresize(., [H W], 'nearest')`; s = 0.01, 0.05, 0.1, 0.2, 0.5.

    The low-resolution size is MATLAB's ceil(z*H) x ceil(z*W), but both nearest-neighbour
    resamplings use that size's exact ratio (ceil(z*H)/H) rather than z: MATLAB's mapping with z
    drifts by up to a pixel across the image against the return trip, shifting whole bands of
    the image by one pixel (which made the error non-monotone in the level) without adding
    any blockiness. The sampling grids differ from MATLAB's by a sub-pixel phase only.
    """
    h, w = x.shape[-2:]

    def one(xs: torch.Tensor, s: float) -> torch.Tensor:
        z = 0.95 - s ** 0.6
        lh, lw = max(1, math.ceil(z * h)), max(1, math.ceil(z * w))
        # down then up, composed into one source row and one source column per output pixel
        rows = _nearest_index(lh, h, lh / h, xs.device)[_nearest_index(h, lh, h / lh, xs.device)]
        cols = _nearest_index(lw, w, lw / w, xs.device)[_nearest_index(w, lw, w / lw, xs.device)]
        y = xs.index_select(2, rows)  # whole rows: a cheap copy
        return y.gather(3, cols.view(1, 1, 1, -1).expand_as(y))  # gather beats index_select on columns

    return apply_per_value(x, per_sample(strength, x.shape[0]), one)


def color_block(x: torch.Tensor, count: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 23, MATLAB `imcolorblock(im, n)`: n opaque 32x32 squares of a uniformly random colour
    at uniformly random positions inside the image; n = 2, 4, 6, 8, 10."""
    b, c, h, w = x.shape
    counts = [int(v) for v in per_sample(count, b)]
    reps = max(10, max(counts))
    u = _random.rand(generator, b, reps, 5, device=x.device, dtype=torch.float64)
    bh, bw = min(BLOCK_SIZE, h), min(BLOCK_SIZE, w)
    r0 = torch.floor(u[..., 0] * (h - bh + 1)).long().clamp(0, h - bh)
    c0 = torch.floor(u[..., 1] * (w - bw + 1)).long().clamp(0, w - bw)
    colour = u[..., 2:5].to(x.dtype)
    if x.device.type == "cpu":  # plain slice fills, one image at a time, in place
        pos = torch.stack([r0, c0], dim=-1).tolist()
        cols = colour.tolist()
        for i in range(b):
            for (a, bb), rgb in list(zip(pos[i], cols[i]))[: counts[i]]:
                for ch in range(c):
                    x[i, ch, a:a + bh, bb:bb + bw] = rgb[ch]
        return x
    ar_h = torch.arange(bh, device=x.device)
    ar_w = torch.arange(bw, device=x.device)
    y = x.clone()
    counts_t = torch.as_tensor(counts, device=x.device)
    for t in range(max(counts)):
        active = torch.nonzero(counts_t > t).flatten()
        bi = active.view(-1, 1, 1)
        y[bi, :, (r0[active, t].view(-1, 1, 1) + ar_h.view(1, -1, 1)),
          (c0[active, t].view(-1, 1, 1) + ar_w.view(1, 1, -1))] = colour[active, t].view(-1, 1, 1, c)
    return y
