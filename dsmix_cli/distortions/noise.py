"""Noise distortions: KADID types 11 (white noise), 12 (white noise in the YCbCr components),
13 (impulse noise), 14 (multiplicative noise) and 15 (denoise). Each follows MATLAB `imnoise`
on [0, 1] data (noise added, result clipped to [0, 1]); the random fields come from the
explicit generator(s)."""

from __future__ import annotations

from typing import Sequence

import torch

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._colorspace import rgb2ycbcr, ycbcr2rgb, ycbcr_matrix, ycbcr_offset
from dsmix_cli.distortions._matlab import apply_per_value, per_sample
from dsmix_cli.distortions.denoise import denoise, substitute_radius

Amount = float | Sequence[float]


def _column(values: list[float], x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)


def _scale(values: list[float], x: torch.Tensor, fn) -> float | torch.Tensor:
    """fn(value) per image: a Python float when the batch shares one value, else a (B, 1, 1, 1)
    tensor. fn is applied in x's dtype, as a tensor expression would be."""
    col = fn(_column(values, x))
    return float(col[0]) if len(set(values)) == 1 else col


def _gaussian(x: torch.Tensor, variance: list[float], generator: _random.Gen) -> torch.Tensor:
    """`imnoise(x, 'gaussian', 0, v)`: x + sqrt(v) * N(0, 1), clipped to [0, 1] (in place)."""
    b, c, h, w = x.shape
    n = _random.randn(generator, b, c, h, w, device=x.device, dtype=x.dtype, out=torch.empty_like(x))
    s = _scale(variance, x, torch.sqrt)
    (x.add_(n, alpha=s) if isinstance(s, float) else x.addcmul_(n, s)).clamp_(0.0, 1.0)
    return x


def white_noise(x: torch.Tensor, variance: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 11, MATLAB `imnoisegauss(im, v)`; v = 0.001, 0.002, 0.003, 0.005, 0.01."""
    return _gaussian(x, per_sample(variance, x.shape[0]), generator)


def white_noise_color(x: torch.Tensor, variance: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 12, MATLAB `imnoisecolorcomp(im, v)`: `rgb2ycbcr` (BT.601 studio range), Gaussian
    `imnoise` with variance v on the three components (clipped to [0, 1]), `ycbcr2rgb`, clipped;
    v = 1e-4, 5e-4, 1e-3, 2e-3, 3e-3. For one image the noise buffer takes the colour transform
    in place (noise * sqrt(v) + offset + matrix @ RGB, one matrix product)."""
    b, c, h, w = x.shape
    values = per_sample(variance, b)
    if b != 1:
        noisy = _gaussian(rgb2ycbcr(x), values, generator)
        return ycbcr2rgb(noisy).clamp_(0.0, 1.0)
    n = _random.randn(generator, b, c, h, w, device=x.device, dtype=x.dtype, out=torch.empty_like(x))
    n.mul_(_scale(values, x, torch.sqrt)).add_(ycbcr_offset(x))
    n.view(3, -1).addmm_(ycbcr_matrix(x), x.reshape(3, -1))
    return ycbcr2rgb(n.clamp_(0.0, 1.0)).clamp_(0.0, 1.0)


def impulse_noise(x: torch.Tensor, density: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 13, MATLAB `imnoiseimpulse(im, d)` = `imnoise(im, 'salt & pepper', d)`: each element
    (per channel) becomes 0 with probability d/2 and 1 with probability d/2;
    d = 0.001, 0.005, 0.01, 0.02, 0.03. With u uniform: u < d/2 gives 0, d/2 <= u < d gives 1."""
    b, c, h, w = x.shape
    d = _scale(per_sample(density, b), x, lambda t: t)
    u = _random.rand(generator, b, c, h, w, device=x.device, dtype=x.dtype, out=torch.empty_like(x))
    x.masked_fill_(u < d, 1.0)
    return x.masked_fill_(u < d / 2, 0.0)


def multiplicative_noise(x: torch.Tensor, variance: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 14, MATLAB `imnoisemultiplicative(im, v)` = `imnoise(im, 'speckle', v)`:
    x + x * n with n uniform, zero mean, variance v (sqrt(12 v) * (U - 0.5)), clipped;
    v = 0.001, 0.005, 0.01, 0.02, 0.05."""
    b, c, h, w = x.shape
    u = _random.rand(generator, b, c, h, w, device=x.device, dtype=x.dtype, out=torch.empty_like(x))
    s = _scale(per_sample(variance, b), x, lambda t: (12 * t).sqrt())
    n = u.sub_(0.5).mul_(s)
    return x.add_(n.mul_(x)).clamp_(0.0, 1.0)


def denoise_distortion(x: torch.Tensor, variance: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 15, MATLAB `imdenoise(im, v)`: Gaussian `imnoise` with variance v, then a denoiser on
    each channel; v = 0.01, 0.03, 0.05, 0.1, 0.15.

    MATLAB's denoiser is its pretrained DnCNN; here it is the plugged DnCNN
    (`set_denoiser`) or the documented `wiener2` substitute (see `denoise.py`).
    """
    values = per_sample(variance, x.shape[0])
    noisy = _gaussian(x, values, generator)

    def one(xs: torch.Tensor, v: float) -> torch.Tensor:
        nv = torch.full((xs.shape[0],), v, device=xs.device)
        return denoise(xs, nv, substitute_radius(v))

    return apply_per_value(noisy, values, one).clamp(0.0, 1.0)
