"""Blur and sharpening distortions: KADID types 1 (Gaussian blur), 2 (lens blur), 3 (motion
blur) and 24 (high sharpen). Inputs are (B, 3, H, W) float batches in [0, 1] on any device."""

from __future__ import annotations

from typing import Sequence

import torch

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._colorspace import labf2rgb, rgb2labf
from dsmix_cli.distortions._matlab import (
    apply_per_value,
    fspecial_disk,
    fspecial_motion,
    gaussian_filter,
    gaussian_size,
    imfilter,
    per_sample,
)

Amount = float | Sequence[float]


def gaussian_blur(x: torch.Tensor, sigma: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 1, MATLAB `imblurgauss(im, sigma)`.

    `imfilter(im, fspecial('gaussian', 2*ceil(2σ)+1, σ), 'replicate')`; σ = 0.1, 0.5, 1, 2, 5.
    """
    return apply_per_value(x, per_sample(sigma, x.shape[0]), lambda xs, s: gaussian_filter(xs, s))


def lens_blur(x: torch.Tensor, radius: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 2, MATLAB `imblurlens(im, radius)`: `imfilter(im, fspecial('disk', r), 'replicate')`;
    r = 1, 2, 4, 6, 8."""
    return apply_per_value(x, per_sample(radius, x.shape[0]), lambda xs, r: imfilter(xs, fspecial_disk(r)))


def motion_blur(x: torch.Tensor, length: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 3, MATLAB `imblurmotion(im, len)`: `imfilter(im, fspecial('motion', len, θ), 'replicate')`
    with θ a random integer in 0..180 degrees per image; len = 1, 2, 4, 6, 10 (len 1 is the identity)."""
    b = x.shape[0]
    lengths = per_sample(length, b)
    angles = _random.randint(generator, b, 0, 181, device=torch.device("cpu")).tolist()
    kernels = [fspecial_motion(n, a) for n, a in zip(lengths, angles)]
    return imfilter(x, kernels)


def high_sharpen(x: torch.Tensor, amount: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 24, MATLAB `imsharpenHi` = `imsharpen(im, 'Radius', 3, 'Amount', a)`, then truncate.

    Unsharp mask on the Lab lightness: L + a * (L - G_σ=3 * L), Gaussian 13x13 with replicate
    padding; back to RGB and clipped to [0, 1]; a = 1, 2, 3, 6, 12.

    Computed on the cube-root stage (fx, fy, fz) of L*a*b* (L = 116 fy - 16, a* and b* are
    differences of fx, fy, fz): the Gaussian's weights sum to 1, so the mask adds
    d = a * (fy - G * fy) to fy, and to fx and fz to keep a* and b*.
    """
    b = x.shape[0]
    amounts = per_sample(amount, b)
    f = rgb2labf(x, inplace=True)
    fy = f[:, 1:2]
    d = torch.sub(fy, gaussian_filter(fy, 3.0, gaussian_size(3.0)))
    if len(set(amounts)) == 1:
        d.mul_(amounts[0])
    else:
        d.mul_(torch.as_tensor(amounts, dtype=x.dtype, device=x.device).view(b, 1, 1, 1))
    f.add_(d)
    return labf2rgb(f, inplace=True).clamp_(0.0, 1.0)
