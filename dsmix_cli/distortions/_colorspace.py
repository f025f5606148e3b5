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


def _mix(x: torch.Tensor, matrix) -> torch.Tensor:
    m = torch.as_tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", m, x)


def rgb2gray(x: torch.Tensor) -> torch.Tensor:
    """MATLAB `rgb2gray` on (B, 3, H, W) -> (B, 1, H, W)."""
    w = torch.as_tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v <= 0.04045, v / 12.92, ((v.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v <= 0.0031308, v * 12.92, 1.055 * v.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def rgb2lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> L*a*b* (L in [0, 100]), D65."""
    xyz = _mix(_srgb_to_linear(x), _RGB2XYZ)
    white = torch.as_tensor(_WHITE_D65, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > _DELTA ** 3, t.clamp_min(_DELTA ** 3) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)
    L = 116 * f[:, 1:2] - 16
    a = 500 * (f[:, 0:1] - f[:, 1:2])
    b = 200 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([L, a, b], dim=1)


def lab2rgb(lab: torch.Tensor) -> torch.Tensor:
    """L*a*b* (D65) -> sRGB, not clipped."""
    fy = (lab[:, 0:1] + 16) / 116
    fx = fy + lab[:, 1:2] / 500
    fz = fy - lab[:, 2:3] / 200
    f = torch.cat([fx, fy, fz], dim=1)
    t = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    white = torch.as_tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    inv = torch.linalg.inv(torch.as_tensor(_RGB2XYZ, dtype=torch.float64)).to(lab.dtype)
    return _linear_to_srgb(_mix(t * white, inv.tolist()))


def rgb2hsv(x: torch.Tensor) -> torch.Tensor:
    """MATLAB `rgb2hsv`: h, s, v in [0, 1]."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v, _ = x.max(dim=1)
    mn, _ = x.min(dim=1)
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


def rgb2ycbcr(x: torch.Tensor) -> torch.Tensor:
    """MATLAB `rgb2ycbcr` on [0, 1] data (BT.601 studio range, result in [0, 1] units)."""
    off = torch.as_tensor(_YCBCR_OFFSET, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (_mix(x, _YCBCR) + off) / 255.0


def ycbcr2rgb(y: torch.Tensor) -> torch.Tensor:
    """MATLAB `ycbcr2rgb` on [0, 1] data (inverse of `rgb2ycbcr`; not clipped here)."""
    off = torch.as_tensor(_YCBCR_OFFSET, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
    inv = torch.linalg.inv(torch.as_tensor(_YCBCR, dtype=torch.float64)).tolist()
    return _mix(y * 255.0 - off, inv)
