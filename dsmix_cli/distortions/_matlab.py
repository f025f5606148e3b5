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
import torch.nn.functional as F

_EPS = float(np.finfo(np.float64).eps)


def mapmm(x: torch.Tensor, value_range: torch.Tensor | None = None) -> torch.Tensor:
    """MATLAB `mapmm`: rescale each image of a batch globally (all channels) to [0, 1].

    Args:
        x: (B, C, H, W) float tensor.
        value_range: optional (B, 2) tensor of each image's (min, max) to rescale by, instead
            of the image's own. A crop of a larger image passes the whole image's range here,
            so that it is rescaled exactly as the whole image would be (the MATLAB dispatcher
            works on whole images).

    Returns:
        (x - min) / (max - min) per image; an image with max == min is returned unchanged.
    """
    if value_range is None:
        flat = x.reshape(x.shape[0], -1)
        lo = flat.amin(dim=1).view(-1, 1, 1, 1)
        hi = flat.amax(dim=1).view(-1, 1, 1, 1)
    else:
        value_range = torch.as_tensor(value_range, dtype=x.dtype, device=x.device).reshape(x.shape[0], 2)
        lo, hi = value_range[:, 0].view(-1, 1, 1, 1), value_range[:, 1].view(-1, 1, 1, 1)
    span = hi - lo
    ok = span > 0
    return torch.where(ok, (x - lo) / torch.where(ok, span, torch.ones_like(span)), x)


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


def _center_pad(kernel: np.ndarray, size: int) -> np.ndarray:
    kh, kw = kernel.shape
    out = np.zeros((size, size), dtype=np.float64)
    top, left = (size - kh) // 2, (size - kw) // 2
    out[top:top + kh, left:left + kw] = kernel
    return out


def imfilter(x: torch.Tensor, kernels: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """MATLAB `imfilter(x, h, 'replicate')` (correlation, same size) on a batch.

    Args:
        x: (B, C, H, W) float tensor.
        kernels: one odd-sized 2-D kernel for the whole batch, or one per sample (they are
            zero-padded to a common odd size, which does not change the result).
    """
    b, c, h, w = x.shape
    if isinstance(kernels, np.ndarray):
        kernels = [kernels]
    size = max(max(k.shape) for k in kernels)
    size += 1 - size % 2
    stack = np.stack([_center_pad(k, size) for k in kernels])
    weight = torch.as_tensor(stack, dtype=x.dtype, device=x.device).unsqueeze(1)
    pad = size // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    if len(kernels) == 1:
        out = F.conv2d(xp.reshape(b * c, 1, *xp.shape[-2:]), weight)
        return out.view(b, c, h, w)
    if len(kernels) != b:
        raise ValueError(f"{len(kernels)} kernels for a batch of {b}")
    weight = weight.repeat_interleave(c, dim=0)  # (B*C, 1, k, k): sample i's kernel for its channels
    out = F.conv2d(xp.reshape(1, b * c, *xp.shape[-2:]), weight, groups=b * c)
    return out.view(b, c, h, w)


def gaussian_filter(x: torch.Tensor, sigma: float, size: int | None = None) -> torch.Tensor:
    """`imfilter(x, fspecial('gaussian', size, sigma), 'replicate')`, computed separably.

    Args:
        x: (B, C, H, W) float tensor.
        sigma: standard deviation in pixels.
        size: kernel size (default the 2*ceil(2σ)+1 rule).
    """
    size = gaussian_size(sigma) if size is None else size
    g = torch.as_tensor(gaussian_kernel_1d(size, float(sigma)), dtype=x.dtype, device=x.device)
    b, c, h, w = x.shape
    pad = size // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="replicate").reshape(b * c, 1, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, g.view(1, 1, size, 1))
    y = F.conv2d(y, g.view(1, 1, 1, size))
    return y.view(b, c, h, w)


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
    """The KADID `curves` tone map: `spline` through the control points, `ppval`, clip to [0, 1]."""
    return ppval(xk, spline_coefficients(xk, yk), x).clamp(0.0, 1.0)


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
