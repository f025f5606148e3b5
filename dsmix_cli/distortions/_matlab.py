"""MATLAB building blocks used by the KADID/KADIS distortions, as batched torch functions.

`fspecial` kernels are built in float64 NumPy (they are tiny) and moved to the batch's device;
filtering is `imfilter(..., 'replicate')` semantics: correlation (not convolution) with the
border pixels repeated. `mapmm` is the dispatcher's global min-max rescale. The curve helpers
reproduce MATLAB `spline` (not-a-knot cubic; a parabola for three points) and `ppval`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from dsmix_cli.distortions import _filters

_EPS = float(np.finfo(np.float64).eps)


def _value_range(x: torch.Tensor, value_range: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's (min, max) as two (B,) tensors of x's dtype: its own, or the one given."""
    b = x.shape[0]
    if value_range is None:
        if b == 1:  # a full reduction: about 15x faster than the same along dim 1 on the CPU
            lo, hi = torch.aminmax(x.reshape(-1))
            return lo.view(1), hi.view(1)
        return torch.aminmax(x.reshape(b, -1), dim=1)
    value_range = torch.as_tensor(value_range, dtype=x.dtype, device=x.device).reshape(b, 2)
    return value_range[:, 0], value_range[:, 1]


def mapmm(x: torch.Tensor, value_range: torch.Tensor | None = None) -> torch.Tensor:
    """MATLAB `mapmm`: rescale each image of a batch globally (all channels) to [0, 1].

    Args:
        x: (B, C, H, W) float tensor.
        value_range: optional (B, 2) tensor of each image's (min, max) to rescale by, instead
            of the image's own. A crop of a larger image passes the whole image's range here,
            so that it is rescaled exactly as the whole image would be (the MATLAB dispatcher
            works on whole images).

    Returns:
        (x - min) / (max - min) per image, a new tensor; an image with max == min is returned
        unchanged.
    """
    return mapmm_(x.clone(), value_range)


def mapmm_(x: torch.Tensor, value_range: torch.Tensor | None = None, out: torch.Tensor | None = None,
           clip: bool = False, copy: bool = True) -> torch.Tensor:
    """`mapmm` computed in place (or into `out`, a tensor of x's shape): two passes over the
    pixels after the range. The same float operations as `mapmm`, so the same bits.

    A single image on the CPU is rescaled with Python scalars, and not touched at all when its
    range is already exactly [0, 1] (the common case of an 8-bit image that uses the full range).
    `clip` also clips the result to [0, 1]; with the image's own range that is needed only for a
    constant image ((x - min) / (max - min) lies in [0, 1] exactly), so it is skipped otherwise.
    With `out=None, copy=False` the result is a new tensor, or x itself when the rescale is the
    identity (for a reader that does not write into it).
    """
    if out is None and not copy and x.shape[0] == 1 and x.device.type == "cpu":
        lo_t, hi_t = _value_range(x, value_range)
        lo, span = float(lo_t[0]), float((hi_t - lo_t)[0])
        if span > 0 and not (lo == 0.0 and span == 1.0):
            return torch.sub(x, lo).div_(span)
        return x.clamp(0.0, 1.0) if clip and (value_range is not None or span <= 0) else x
    if out is None and not copy:
        out = torch.empty_like(x)
    dst = x if out is None else out
    if x.shape[0] == 1 and x.device.type == "cpu":
        lo_t, hi_t = _value_range(x, value_range)
        lo, span = float(lo_t[0]), float((hi_t - lo_t)[0])
        if span > 0 and not (lo == 0.0 and span == 1.0):
            torch.sub(x, lo, out=dst)
            dst.div_(span)
        elif out is not None:
            out.copy_(x)
        return dst.clamp_(0.0, 1.0) if clip and (value_range is not None or span <= 0) else dst
    lo, hi = _value_range(x, value_range)
    span = hi - lo
    ok = span > 0
    lo = torch.where(ok, lo, torch.zeros_like(lo)).view(-1, *([1] * (x.dim() - 1)))
    span = torch.where(ok, span, torch.ones_like(span)).view(-1, *([1] * (x.dim() - 1)))
    torch.sub(x, lo, out=dst)
    dst.div_(span)
    return dst.clamp_(0.0, 1.0) if clip else dst


def per_sample(value: float | Sequence[float] | torch.Tensor, batch: int) -> list[float]:
    """A distortion parameter as one Python float per sample of a batch."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().flatten().tolist()
    if isinstance(value, (int, float)):
        return [float(value)] * batch
    values = [float(v) for v in value]
    if len(values) != batch:
        raise ValueError(f"expected {batch} per-sample parameters, got {len(values)}")
    return values


# --------------------------------------------------------------------------- fspecial


def gaussian_size(sigma: float) -> int:
    """The KADID filter-size rule: 2*ceil(2*sigma)+1 (also MATLAB `imgaussfilt`'s default)."""
    return 2 * math.ceil(2 * sigma) + 1


@lru_cache(maxsize=64)
def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """The 1-D factor of `fspecial('gaussian', size, sigma)` (float64, sums to 1).

    `fspecial` zeroes entries below eps*max of the 2-D kernel; for sizes 2*ceil(2σ)+1 every
    product of two 1-D entries is >= e^-4 of the peak, so the separable form is exact except
    where a 1-D entry itself is below eps (then its whole row/column is zero in 2-D too).
    """
    r = (size - 1) / 2.0
    t = np.arange(-r, r + 1.0)
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    g[g < _EPS * g.max()] = 0.0
    return g / g.sum()


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB `fspecial('gaussian', [size size], sigma)` (2-D, float64)."""
    r = (size - 1) / 2.0
    t = np.arange(-r, r + 1.0)
    h = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * sigma * sigma))
    h[h < _EPS * h.max()] = 0.0
    return h / h.sum()


def _disk_corner_area(a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Area of the disk of radius r inside [0, a] x [0, b] for a, b >= 0 (closed form)."""
    a = np.minimum(a, r)
    u_star = np.sqrt(np.maximum(r * r - b * b, 0.0))  # the arc lies above y = b for u < u_star
    u1 = np.minimum(a, u_star)

    def prim(u):  # integral of sqrt(r^2 - u^2) du
        return 0.5 * (u * np.sqrt(np.maximum(r * r - u * u, 0.0)) + r * r * np.arcsin(np.clip(u / r, -1, 1)))

    return np.minimum(b, r) * u1 + np.maximum(prim(a) - prim(u1), 0.0)


@lru_cache(maxsize=32)
def fspecial_disk(radius: float) -> np.ndarray:
    """MATLAB `fspecial('disk', radius)`: the exact area of the disk inside each pixel, normalised.

    MATLAB computes the same pixel areas with a case analysis; here the area of each pixel
    square is obtained by inclusion-exclusion over a closed-form "disk inside a corner
    rectangle" area (the disk is symmetric in each quadrant). Size (2*ceil(r-0.5)+1)^2.
    """
    crad = math.ceil(radius - 0.5)
    c = np.arange(-crad, crad + 1, dtype=np.float64)
    x0, x1 = c - 0.5, c + 0.5

    def signed(a, b):
        return np.sign(a) * np.sign(b) * _disk_corner_area(np.abs(a), np.abs(b), radius)

    X0, Y0 = np.meshgrid(x0, x0, indexing="xy")
    X1, Y1 = np.meshgrid(x1, x1, indexing="xy")
    area = signed(X1, Y1) - signed(X0, Y1) - signed(X1, Y0) + signed(X0, Y0)
    area = np.maximum(area, 0.0)
    return area / area.sum()


def fspecial_motion(length: float, theta: float) -> np.ndarray:
    """MATLAB `fspecial('motion', len, theta)`: a line of `len` pixels at `theta` degrees.

    Follows the MATLAB construction: anti-aliased distances to the line on one quadrant grid,
    mirrored by a 180° rotation, normalised, flipped upside down when cos(theta) > 0.
    """
    length = max(1.0, float(length))
    half = (length - 1) / 2.0
    phi = (theta % 180) / 180.0 * math.pi
    cosphi, sinphi = math.cos(phi), math.sin(phi)
    xsign = float(np.sign(cosphi))
    linewdt = 1.0
    sx = math.trunc(half * cosphi + linewdt * xsign - length * _EPS)
    sy = math.trunc(half * sinphi + linewdt - length * _EPS)
    # MATLAB 0:xsign:sx (sx has the sign of xsign; cos(phi) is never exactly 0 in floating point)
    xs = np.arange(0, sx + xsign, xsign) if xsign != 0 else np.zeros(1)
    ys = np.arange(0, sy + 1, dtype=np.float64)
    x, y = np.meshgrid(xs.astype(np.float64), ys)
    dist2line = y * cosphi - x * sinphi
    rad = np.sqrt(x * x + y * y)
    last = (rad >= half) & (np.abs(dist2line) <= linewdt)
    x2last = half - np.abs((x[last] + dist2line[last] * sinphi) / cosphi)
    dist2line[last] = np.sqrt(dist2line[last] ** 2 + x2last ** 2)
    dist2line = linewdt + _EPS - np.abs(dist2line)
    dist2line[dist2line < 0] = 0.0
    rows, cols = dist2line.shape
    h = np.zeros((2 * rows - 1, 2 * cols - 1))
    h[:rows, :cols] = np.rot90(dist2line, 2)
    h[rows - 1:, cols - 1:] = dist2line
    h = h / (h.sum() + _EPS * length * length)
    if cosphi > 0:
        h = np.flipud(h)
    return np.ascontiguousarray(h)


# --------------------------------------------------------------------------- imfilter


def imfilter(x: torch.Tensor, kernels: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """MATLAB `imfilter(x, h, 'replicate')` (correlation, same size) on a batch.

    Args:
        x: (B, C, H, W) float tensor.
        kernels: one 2-D kernel for the whole batch, or a sequence with one per sample.

    See `_filters.correlate` for how it is computed on each device.
    """
    return _filters.correlate(x, kernels if isinstance(kernels, np.ndarray) else list(kernels))


def gaussian_filter(x: torch.Tensor, sigma: float, size: int | None = None) -> torch.Tensor:
    """`imfilter(x, fspecial('gaussian', size, sigma), 'replicate')`, computed separably.

    Args:
        x: (B, C, H, W) float tensor.
        sigma: standard deviation in pixels.
        size: kernel size (default the 2*ceil(2σ)+1 rule).
    """
    size = gaussian_size(sigma) if size is None else size
    return _filters.correlate_separable(x, gaussian_kernel_1d(size, float(sigma)))


def replicate_shift(x: torch.Tensor, dy: Sequence[int], dx: Sequence[int]) -> torch.Tensor:
    """Translate each image of a batch by integer (dy, dx) pixels, repeating the border.

    out[i, j] = x[clamp(i - dy), clamp(j - dx)], i.e. content moves down/right for positive
    shifts (MATLAB's [rows, cols] order).
    """
    b, _, h, w = x.shape
    dev = x.device
    dy_t = torch.as_tensor(list(dy), device=dev).view(b, 1)
    dx_t = torch.as_tensor(list(dx), device=dev).view(b, 1)
    rows = (torch.arange(h, device=dev).view(1, h) - dy_t).clamp(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=dev).view(1, w) - dx_t).clamp(0, w - 1)  # (B, W)
    bi = torch.arange(b, device=dev).view(b, 1, 1)
    # advanced indices (bi, rows, cols) broadcast to (B, H, W); the channel slice goes last
    out = x.permute(0, 2, 3, 1)[bi, rows.view(b, h, 1), cols.view(b, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- spline / curves


def spline_coefficients(xk: Sequence[float], yk: Sequence[float]) -> np.ndarray:
    """Piecewise-cubic coefficients of MATLAB `spline(xk, yk)` (not-a-knot end conditions).

    Returns an (n-1, 4) float64 array: on [xk[i], xk[i+1]] the curve is
    c0 (x - xk[i])^3 + c1 (x - xk[i])^2 + c2 (x - xk[i]) + c3. With three points MATLAB's
    not-a-knot spline is the interpolating parabola, returned in the same form.
    """
    x = np.asarray(xk, dtype=np.float64)
    y = np.asarray(yk, dtype=np.float64)
    n = len(x)
    if n < 3:
        raise ValueError("spline needs at least three points")
    if n == 3:
        a, b, c = np.polyfit(x, y, 2)
        coefs = []
        for i in range(2):
            x0 = x[i]  # re-centre the parabola at the left knot
            coefs.append([0.0, a, 2 * a * x0 + b, a * x0 * x0 + b * x0 + c])
        return np.array(coefs)
    h = np.diff(x)
    # Unknowns: second derivatives M_0..M_{n-1}; interior rows are the C2 conditions, the two
    # end rows the not-a-knot conditions (third derivative continuous at x_1 and x_{n-2}).
    A = np.zeros((n, n))
    rhs = np.zeros(n)
    for i in range(1, n - 1):
        A[i, i - 1] = h[i - 1]
        A[i, i] = 2 * (h[i - 1] + h[i])
        A[i, i + 1] = h[i]
        rhs[i] = 6 * ((y[i + 1] - y[i]) / h[i] - (y[i] - y[i - 1]) / h[i - 1])
    A[0, 0], A[0, 1], A[0, 2] = h[1], -(h[0] + h[1]), h[0]
    A[-1, -3], A[-1, -2], A[-1, -1] = h[-1], -(h[-2] + h[-1]), h[-2]
    M = np.linalg.solve(A, rhs)
    coefs = np.empty((n - 1, 4))
    for i in range(n - 1):
        coefs[i, 0] = (M[i + 1] - M[i]) / (6 * h[i])
        coefs[i, 1] = M[i] / 2
        coefs[i, 2] = (y[i + 1] - y[i]) / h[i] - h[i] * (2 * M[i] + M[i + 1]) / 6
        coefs[i, 3] = y[i]
    return coefs


def ppval(xk: Sequence[float], coefs: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """MATLAB `ppval` of a piecewise cubic at every element of `x` (extrapolates at the ends)."""
    knots = torch.as_tensor(np.asarray(xk, dtype=np.float64), dtype=x.dtype, device=x.device)
    c = torch.as_tensor(coefs, dtype=x.dtype, device=x.device)
    idx = torch.bucketize(x.contiguous(), knots[1:-1], right=True)  # interval index 0..n-2
    t = x - knots[idx]
    cc = c[idx]  # (..., 4)
    return ((cc[..., 0] * t + cc[..., 1]) * t + cc[..., 2]) * t + cc[..., 3]


def curves(x: torch.Tensor, xk: Sequence[float], yk: Sequence[float]) -> torch.Tensor:
    """The KADID `curves` tone map: `spline` through the control points, `ppval`, clip to [0, 1].

    Evaluated in the truncated-power form of the same piecewise cubic: the first piece's cubic
    everywhere, plus d_i * max(x - xk[i], 0)^3 at each interior knot, d_i the jump of the cubic
    coefficient there (a C2 cubic spline changes only that coefficient at a knot). MATLAB's
    not-a-knot conditions make the jumps at the second and next-to-last knots zero, so a
    five-point curve is one cubic and one truncated term, and a three-point one a parabola:
    a few in-place passes instead of a search for each value's interval. Returns a new tensor.
    """
    coefs = spline_coefficients(xk, yk)
    x0 = float(xk[0])
    t = x - x0 if x0 != 0.0 else x
    c0, c1, c2, c3 = (float(v) for v in coefs[0])
    y = torch.mul(t, c0).add_(c1).mul_(t).add_(c2).mul_(t).add_(c3)
    scale = float(np.abs(coefs[:, 0]).max()) + 1.0
    for i in range(1, len(coefs)):
        d = float(coefs[i, 0] - coefs[i - 1, 0])
        if abs(d) > 1e-12 * scale:
            y.add_(torch.sub(t, float(xk[i]) - x0).clamp_min_(0.0).pow_(3), alpha=d)
    return y.clamp_(0.0, 1.0)


def apply_per_value(x: torch.Tensor, values: Sequence[float], fn) -> torch.Tensor:
    """Run `fn(x_subset, value)` once per distinct parameter value of a batch and reassemble.

    For filters whose kernel size depends on the parameter (one call per level, not per image).
    """
    values = list(values)
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return fn(x, distinct[0])
    out = torch.empty_like(x)
    for v in distinct:
        idx = torch.as_tensor([i for i, u in enumerate(values) if u == v], device=x.device)
        out[idx] = fn(x[idx], v)
    return out
