"""Colour-space conversions with MATLAB's conventions, batched on (B, 3, H, W) tensors in RGB order.

* `rgb2lab` / `lab2rgb`: sRGB (IEC 61966-2-1 transfer curve), D65 white, CIE L*a*b*
  (MATLAB `rgb2lab`/`lab2rgb` defaults). `lab2rgb` does not clip, as MATLAB's does not.
* `rgb2hsv` / `hsv2rgb`: MATLAB's hexcone model with h, s, v in [0, 1]; `hsv2rgb` accepts
  any saturation (a negative one extrapolates away from grey), without clipping.
* `rgb2ycbcr` / `ycbcr2rgb`: ITU-R BT.601 studio range on [0, 1] data (Y in [16, 235]/255).
* `rgb2gray`: MATLAB's luma weights.
"""

from __future__ import annotations

import torch

_RGB2XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0

# BT.601 studio-range matrix and offsets (MATLAB rgb2ycbcr, scaled to [0, 1] data)
_YCBCR = (
    (65.481, 128.553, 24.966),
    (-37.797, -74.203, 112.0),
    (112.0, -93.786, -18.214),
)
_YCBCR_OFFSET = (16.0, 128.0, 128.0)
_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def _mix(x: torch.Tensor, matrix, bias=None) -> torch.Tensor:
    """out[:, i] = sum_j matrix[i][j] * x[:, j] (+ bias[i]): a 3x3 colour matrix on a (B, 3, H, W)
    batch, one matrix product (`addmm` with the bias) for a single image."""
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    if x.shape[0] == 1:
        if bias is None:
            return torch.mm(m, x.reshape(3, -1)).view_as(x)
        b = torch.as_tensor(bias, dtype=x.dtype, device=x.device).view(3, 1)
        return torch.addmm(b, m, x.reshape(3, -1)).view_as(x)
    out = torch.einsum("ij,bjhw->bihw", m, x)
    if bias is not None:
        out.add_(torch.as_tensor(bias, dtype=x.dtype, device=x.device).view(1, 3, 1, 1))
    return out


def rgb2gray(x: torch.Tensor) -> torch.Tensor:
    """MATLAB `rgb2gray` on (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = _GRAY
    return torch.mul(x[:, 0:1], r).add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b)


def _pow_(t: torch.Tensor, p: float) -> torch.Tensor:
    """t ** p in place for t > 0, as exp2(p * log2(t)): 40 % faster than `pow` on the CPU, within
    about 1e-6 of it (relative) in float32."""
    return t.log2_().mul_(p).exp2_()


_JOINTS: dict = {}  # high(cut) of each branch pair, computed once


def _piecewise(x: torch.Tensor, cut: float, low, high, exact: bool, inplace: bool = False) -> torch.Tensor:
    """low(x) where x <= cut, else high(x), for two branches that meet at `cut`.

    Computed as high(max(x, cut)) + low(min(x, cut)) - high(cut): cheap passes instead of a
    boolean mask and `torch.where` (which cost more than a power on the CPU). Where the two
    branches meet exactly (the L*a*b* cube root and its inverse) the result is the same up to
    rounding. The sRGB transfer curve's branches miss each other by 1.4e-7 at its cut, which the
    blend would move the low branch by; for that curve float64 (`exact`) uses `torch.where`.
    `low` and `high` may work in place on their argument; `inplace` lets the result overwrite x.
    """
    if exact and x.dtype == torch.float64:
        return torch.where(x <= cut, low(x.clone()), high(x.clamp_min(cut)))
    key = (high.__code__, cut)
    joint = _JOINTS.get(key)
    if joint is None:
        joint = _JOINTS[key] = float(high(torch.tensor([cut], dtype=torch.float64))[0])
    below = low(x.clamp_max(cut))
    out = high(x.clamp_min_(cut) if inplace else x.clamp_min(cut))
    return out.add_(below).sub_(joint)


def _srgb_to_linear(v: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _piecewise(v, 0.04045, lambda t: t.div_(12.92), lambda t: _pow_(t.add_(0.055).div_(1.055), 2.4), True,
                      inplace)


def _linear_to_srgb(v: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _piecewise(v, 0.0031308, lambda t: t.mul_(12.92), lambda t: _pow_(t, 1 / 2.4).mul_(1.055).sub_(0.055),
                      True, inplace)


def _white() -> list[list[float]]:
    """The sRGB -> XYZ matrix with each row divided by the D65 white point (XYZ / white)."""
    return [[c / w for c in row] for row, w in zip(_RGB2XYZ, _WHITE_D65)]


def _white_inv() -> list[list[float]]:
    """(XYZ * white) -> linear sRGB: the inverse matrix with column j multiplied by white j."""
    inv = torch.linalg.inv(torch.as_tensor(_RGB2XYZ, dtype=torch.float64))
    return (inv * torch.as_tensor(_WHITE_D65, dtype=torch.float64).view(1, 3)).tolist()


def rgb2labf(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """sRGB -> (f(X/Xn), f(Y/Yn), f(Z/Zn)), the cube-root stage of L*a*b*, from which
    L = 116 fy - 16, a = 500 (fx - fy), b = 200 (fy - fz). `inplace` may overwrite x."""
    t = _mix(_srgb_to_linear(x, inplace), _white())
    return _piecewise(t, _DELTA ** 3, lambda u: u.div_(3 * _DELTA ** 2).add_(4 / 29), lambda u: _pow_(u, 1 / 3),
                      False, True)


def labf2rgb(f: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Inverse of `rgb2labf` (not clipped). `inplace` may overwrite f."""
    t = _piecewise(f, _DELTA, lambda u: u.sub_(4 / 29).mul_(3 * _DELTA ** 2), lambda u: u.pow_(3), False, inplace)
    return _linear_to_srgb(_mix(t, _white_inv()), True)


def rgb2lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> L*a*b* (L in [0, 100]), D65."""
    f = rgb2labf(x)
    out = torch.empty_like(f)
    torch.mul(f[:, 1:2], 116.0, out=out[:, 0:1]).sub_(16.0)
    torch.sub(f[:, 0:1], f[:, 1:2], out=out[:, 1:2]).mul_(500.0)
    torch.sub(f[:, 1:2], f[:, 2:3], out=out[:, 2:3]).mul_(200.0)
    return out


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """L*a*b* (D65) -> sRGB, not clipped."""
    f = torch.empty_like(lab)
    fy = torch.add(lab[:, 0:1], 16.0, out=f[:, 1:2]).div_(116.0)
    torch.add(fy, lab[:, 1:2], alpha=1 / 500, out=f[:, 0:1])
    torch.sub(fy, lab[:, 2:3], alpha=1 / 200, out=f[:, 2:3])
    return labf2rgb(f, True)


def rgb2hsv(x: torch.Tensor) -> torch.Tensor:
    """MATLAB `rgb2hsv`: h, s, v in [0, 1]."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.amax(dim=1)
    mn = x.amin(dim=1)
    delta = v - mn
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.stack([h, s, v], dim=1)


def hsv2rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb2hsv`; channel n of (R, G, B) is v - v*s*clip(min(k, 4-k), 0, 1),
    k = (n + 6h) mod 6 with n = 5, 3, 1."""
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.as_tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = (n + 6 * h) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return v - v * s * ramp


def ycbcr_matrix(like: torch.Tensor) -> torch.Tensor:
    """`rgb2ycbcr`'s matrix for [0, 1] data (rows Y, Cb, Cr), in like's dtype and device."""
    return torch.as_tensor([[v / 255.0 for v in row] for row in _YCBCR], dtype=like.dtype, device=like.device)


def ycbcr_offset(like: torch.Tensor) -> torch.Tensor:
    """`rgb2ycbcr`'s offsets (16, 128, 128)/255 as a (1, 3, 1, 1) tensor."""
    return torch.as_tensor([v / 255.0 for v in _YCBCR_OFFSET], dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def rgb2ycbcr(x: torch.Tensor) -> torch.Tensor:
    """MATLAB `rgb2ycbcr` on [0, 1] data (BT.601 studio range, result in [0, 1] units)."""
    return _mix(x, [[v / 255.0 for v in row] for row in _YCBCR], [v / 255.0 for v in _YCBCR_OFFSET])


def ycbcr2rgb(y: torch.Tensor) -> torch.Tensor:
    """MATLAB `ycbcr2rgb` on [0, 1] data (inverse of `rgb2ycbcr`; not clipped here)."""
    inv = torch.linalg.inv(torch.as_tensor(_YCBCR, dtype=torch.float64)) * 255.0
    off = torch.as_tensor(_YCBCR_OFFSET, dtype=torch.float64) / 255.0
    return _mix(y, inv.tolist(), (-(inv @ off)).tolist())
