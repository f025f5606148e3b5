"""The 25 KADID-10k / KADIS-700k distortions x 5 levels, batched on whatever device the images are on.

Each type follows one MATLAB function of the KADIS `code_imdistort` folder, called through the
dispatcher `imdist_generator(im, type, level)`: the image goes through `mapmm` (global min-max
rescale to [0, 1]) before and after the distortion, and the level picks one value of the
dispatcher's table (`TYPES[t].levels`, level 1 -> 5, in MATLAB's order). Randomness comes only
from the generator passed in. See docs/distortions.md for the table and the deviations.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> y = distort(x, 11, 3, g)  # white noise, variance 0.003, on x's device
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dsmix_cli.distortions import _matlab, _random, blur, color, compression, noise, spatial, tone
from dsmix_cli.distortions._matlab import mapmm
from dsmix_cli.distortions.denoise import denoiser_name, set_denoiser

__all__ = [
    "NUM_TYPES", "NUM_LEVELS", "TYPES", "TYPE_NAMES", "CPU_ONLY_TYPES", "RANDOM_TYPES",
    "MONOTONE_TYPES", "HISTOGRAM_TYPES", "DistortionType", "distort", "distort_batch", "level_value", "mapmm",
    "whole_image_context", "crop_out_range", "set_denoiser", "denoiser_name",
]

NUM_TYPES = 25
NUM_LEVELS = 5


@dataclass(frozen=True)
class DistortionType:
    """One row of the KADID table (docs/distortions.md).

    Attributes:
        number: the KADID type number (1-25).
        name: a snake_case name.
        matlab: the MATLAB function the dispatcher calls.
        parameter: what the level values are.
        levels: the dispatcher's values for levels 1..5.
        fn: the batched implementation, `fn(x, values, generator) -> tensor`.
        cpu_only: runs through Pillow on the CPU.
        random: draws from the generator.
        monotone: level 5 departs further from the reference than level 1.
        histogram: computed from the image's value histogram (MATLAB thresholds the whole
            image), so a crop can be given its whole image's (`fn(..., histogram=...)`).
        pointwise: each output value is a monotone function of the same input value alone, so
            an image spanning [0, 1] comes out spanning [fn(0), fn(1)] (`crop_out_range`).
        shared: optional `fn(x1, values) -> [tensor per value]` for one image at several
            levels at once, cheaper than one call per level (JPEG2000: one encoding).
    """

    number: int
    name: str
    matlab: str
    parameter: str
    levels: tuple[float, ...]
    fn: Callable
    cpu_only: bool = False
    random: bool = False
    monotone: bool = True
    histogram: bool = False
    pointwise: bool = False
    shared: Callable | None = None


_T = DistortionType
TYPES: dict[int, DistortionType] = {t.number: t for t in (
    _T(1, "gaussian_blur", "imblurgauss", "sigma", (0.1, 0.5, 1, 2, 5), blur.gaussian_blur),
    _T(2, "lens_blur", "imblurlens", "radius", (1, 2, 4, 6, 8), blur.lens_blur),
    _T(3, "motion_blur", "imblurmotion", "length", (1, 2, 4, 6, 10), blur.motion_blur, random=True),
    _T(4, "color_diffusion", "imcolordiffuse", "amount", (1, 3, 6, 8, 12), color.color_diffusion),
    _T(5, "color_shift", "imcolorshift", "amount", (1, 3, 6, 8, 12), color.color_shift, random=True),
    _T(6, "color_quantization", "imcolorquantize", "colors", (64, 48, 32, 16, 8),
       compression.color_quantization, cpu_only=True),
    _T(7, "color_saturation_hsv", "imcolorsaturate", "factor", (0.4, 0.2, 0.1, 0, -0.4),
       color.color_saturation_hsv),
    _T(8, "color_saturation_lab", "imsaturate", "factor", (1, 2, 3, 6, 9), color.color_saturation_lab),
    _T(9, "jpeg2000", "imcompressjp2k", "ratio", compression.JPEG2000_RATIOS, compression.jpeg2000, cpu_only=True,
       shared=compression.jpeg2000_shared),
    _T(10, "jpeg", "imcompressjpeg", "quality", (43, 36, 24, 7, 4), compression.jpeg),
    _T(11, "white_noise", "imnoisegauss", "variance", (0.001, 0.002, 0.003, 0.005, 0.01),
       noise.white_noise, random=True),
    _T(12, "white_noise_color", "imnoisecolorcomp", "variance", (1e-4, 5e-4, 1e-3, 2e-3, 3e-3),
       noise.white_noise_color, random=True),
    _T(13, "impulse_noise", "imnoiseimpulse", "density", (0.001, 0.005, 0.01, 0.02, 0.03),
       noise.impulse_noise, random=True),
    _T(14, "multiplicative_noise", "imnoisemultiplicative", "variance", (0.001, 0.005, 0.01, 0.02, 0.05),
       noise.multiplicative_noise, random=True),
    _T(15, "denoise", "imdenoise", "variance", (0.01, 0.03, 0.05, 0.1, 0.15), noise.denoise_distortion,
       random=True),
    _T(16, "brighten", "imbrighten", "amount", (0.1, 0.2, 0.4, 0.7, 1.1), tone.brighten),
    _T(17, "darken", "imdarken", "amount", (0.05, 0.1, 0.2, 0.4, 0.8), tone.darken, pointwise=True),
    _T(18, "mean_shift", "immeanshift", "shift", (0.15, 0.08, 0, -0.08, -0.15), tone.mean_shift, monotone=False,
       pointwise=True),
    _T(19, "jitter", "imjitter", "amount", (0.05, 0.1, 0.2, 0.5, 1), spatial.jitter, random=True),
    _T(20, "non_eccentricity_patch", "imnoneccentricity", "patches", (20, 40, 60, 80, 100),
       spatial.non_eccentricity_patch, random=True),
    _T(21, "pixelate", "impixelate", "strength", (0.01, 0.05, 0.1, 0.2, 0.5), spatial.pixelate),
    _T(22, "quantization", "imnoisequantize", "thresholds", (20, 16, 13, 10, 7), tone.quantization,
       histogram=True),
    _T(23, "color_block", "imcolorblock", "blocks", (2, 4, 6, 8, 10), spatial.color_block, random=True),
    _T(24, "high_sharpen", "imsharpenHi", "amount", (1, 2, 3, 6, 12), blur.high_sharpen),
    _T(25, "contrast_change", "imcontrastc", "amount", (0.3, 0.15, 0, -0.4, -0.6), tone.contrast_change,
       monotone=False, pointwise=True),
)}

TYPE_NAMES: dict[int, str] = {n: t.name for n, t in TYPES.items()}
CPU_ONLY_TYPES: frozenset[int] = frozenset(n for n, t in TYPES.items() if t.cpu_only)
RANDOM_TYPES: frozenset[int] = frozenset(n for n, t in TYPES.items() if t.random)
MONOTONE_TYPES: frozenset[int] = frozenset(n for n, t in TYPES.items() if t.monotone)
HISTOGRAM_TYPES: frozenset[int] = frozenset(n for n, t in TYPES.items() if t.histogram)

Generators = torch.Generator | Sequence[torch.Generator] | None

# Types whose function never writes into the tensor it is given (the others work in place on
# a buffer of their own, so the dispatcher hands them a copy when the first rescale is the identity).
_READ_ONLY = frozenset({1, 2, 3, 4, 5, 12, 16, 17, 18, 19, 21, 22, 25})


def _check(dist_type: int, level: int) -> DistortionType:
    if dist_type not in TYPES:
        raise ValueError(f"distortion type {dist_type} is not in 1..{NUM_TYPES}")
    if not 1 <= level <= NUM_LEVELS:
        raise ValueError(f"distortion level {level} is not in 1..{NUM_LEVELS}")
    return TYPES[dist_type]


def level_value(dist_type: int, level: int) -> float:
    """The MATLAB dispatcher's parameter for a (type, level), e.g. (1, 5) -> sigma 5."""
    return float(_check(dist_type, level).levels[level - 1])


def whole_image_context(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a crop needs to know of its whole image to be distorted as the whole image is.

    The MATLAB dispatcher works on whole images: its first `mapmm` uses the whole image's
    range, and type 22 thresholds the whole image's histogram. Pass the two results to
    `distort`/`distort_batch` (`in_range`, `histogram`) with a crop of `x`.

    Args:
        x: (B, 3, H, W) whole images in [0, 1] (or uint8).

    Returns:
        ((B, 2) float32 (min, max) over all channels, (B, 256) float32 value histogram of the
        image after the first rescale, binned as `tone.multithresh` bins it).
    """
    b = x.shape[0]
    if x.dtype != torch.uint8:
        flat = x.float().reshape(b, -1)
        value_range = torch.stack([flat.amin(dim=1), flat.amax(dim=1)], dim=1)
        return value_range, tone.value_histogram(mapmm(x.float(), value_range)).float()
    # 8-bit images: count the 256 values once, then bin each value as mapmm + multithresh would
    flat = x.reshape(b, -1)
    value_range = torch.stack([flat.amin(dim=1), flat.amax(dim=1)], dim=1).float() / 255.0
    counts = torch.stack([torch.bincount(row.long() if row.device.type == "mps" else row, minlength=256)
                          for row in flat]).float()
    values = (torch.arange(256, dtype=torch.float32, device=x.device) / 255.0).view(1, 1, 1, 256).expand(b, 1, 1, 256)
    bins = (mapmm(values, value_range).reshape(b, 256) * 255).round().clamp(0, 255).long()
    return value_range, torch.zeros(b, 256, device=x.device).scatter_add_(1, bins, counts)


def crop_out_range(types: Sequence[int], levels: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The second rescale's (min, max) for crops distorted as their whole images, (B, 2).

    MATLAB's second `mapmm` uses the range of the whole distorted image, which a crop cannot see.
    After the first rescale the whole image spans [0, 1]; for a `pointwise` type it then comes
    out spanning [fn(0), fn(1)] exactly; for every other type [0, 1] is used, which is what the
    types that clip to [0, 1] and keep the extremes give, and close to it for the others
    (docs/qep.md, "The on-the-fly rescale").
    """
    out = torch.tensor([[0.0, 1.0]], device=device).repeat(len(types), 1)
    for i, (t, lv) in enumerate(zip(types, levels)):
        spec = _check(int(t), int(lv))
        if spec.pointwise:
            ends = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2).contiguous()
            y = spec.fn(ends, [float(spec.levels[int(lv) - 1])], None)
            out[i] = torch.stack([y.min(), y.max()]).to(device)
    return out


def _pipeline(x: torch.Tensor, spec: DistortionType, values: list[float], gens: Generators, mapmm_: bool,
              in_range: torch.Tensor | None, out_range: torch.Tensor | None, out: torch.Tensor,
              histogram: torch.Tensor | None = None) -> None:
    """`mapmm`, the distortion, `mapmm` and the clip to [0, 1] of a float32 batch, written into `out`.

    The distortion functions may overwrite the buffer they are given (it is always a new one).
    """
    own = spec.number not in _READ_ONLY
    if mapmm_:
        y = _matlab.mapmm_(x, in_range, out=torch.empty_like(x) if own else None, copy=own)
    else:
        y = x.clone() if own else x
    y = spec.fn(y, values, gens) if histogram is None else spec.fn(y, values, gens, histogram=histogram)
    if not mapmm_:
        torch.clamp(y, 0.0, 1.0, out=out)
        return
    _matlab.mapmm_(y, out_range, out=out, clip=True)


def _one_image(y: torch.Tensor, in_range: torch.Tensor | None) -> bool:
    """Whether every image of the batch is the same image with the same first rescale."""
    same = all(torch.equal(y[0], y[i]) for i in range(1, y.shape[0]))
    return same and (in_range is None or bool((in_range == in_range[:1]).all()))


def _run(x: torch.Tensor, spec: DistortionType, levels: Sequence[int], generator: Generators,
         mapmm_: bool, in_range: torch.Tensor | None = None, out_range: torch.Tensor | None = None,
         histogram: torch.Tensor | None = None) -> torch.Tensor:
    """One type on a batch: on the CPU image by image (each image's working set stays in the
    cache, so a batch is never slower per image than a single image); elsewhere batched."""
    device, dtype = x.device, x.dtype
    b = x.shape[0]
    values = [float(spec.levels[lv - 1]) for lv in levels]
    gens = _random.split(generator, b)
    y = x.float()
    if spec.cpu_only:
        y = y.cpu()
    rows = {"in": in_range, "out": out_range}
    for k, r in rows.items():
        if r is not None:
            rows[k] = torch.as_tensor(r).to(device=y.device, dtype=torch.float32).reshape(b, 2)
    hist = None
    if spec.histogram and histogram is not None:  # the crops' whole-image histograms (type 22)
        hist = torch.as_tensor(histogram).to(device=y.device).reshape(b, -1)
    if y.device.type != "cpu":
        out = torch.empty_like(y)
        _pipeline(y, spec, values, gens, mapmm_, rows["in"], rows["out"], out, hist)
        return out.to(device=device, dtype=dtype)
    work = torch.empty(y.shape, dtype=torch.float32)
    if spec.shared is not None and hist is None and b > 1 and len(set(values)) > 1 and _one_image(y, rows["in"]):
        first = _matlab.mapmm_(y[:1], None if rows["in"] is None else rows["in"][:1],
                               out=torch.empty_like(y[:1])) if mapmm_ else y[:1].clone()
        for i, z in enumerate(spec.shared(first, values)):
            if mapmm_:
                _matlab.mapmm_(z, None if rows["out"] is None else rows["out"][i:i + 1], out=work[i:i + 1], clip=True)
            else:
                torch.clamp(z, 0.0, 1.0, out=work[i:i + 1])
        return work.to(device=device, dtype=dtype)
    for i in range(b):
        sl = slice(i, i + 1)
        _pipeline(y[sl], spec, values[sl], _random.subset(gens, [i]), mapmm_,
                  None if rows["in"] is None else rows["in"][sl], None if rows["out"] is None else rows["out"][sl],
                  work[sl], None if hist is None else hist[sl])
    return work.to(device=device, dtype=dtype)


def distort(x: torch.Tensor, dist_type: int, level: int, generator: Generators = None,
            *, mapmm: bool = True, in_range: torch.Tensor | None = None,
            out_range: torch.Tensor | None = None, histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Apply one KADID distortion at one level to a batch (MATLAB `imdist_generator`).

    Args:
        x: (B, 3, H, W) float images in [0, 1], on any device.
        dist_type: 1..25 (KADID order, `TYPE_NAMES`).
        level: 1..5 (the dispatcher's table, `TYPES[t].levels`).
        generator: the only source of randomness: one `torch.Generator` for the batch, or one
            per image (then an image's output does not depend on its batch mates). A single
            generator for several images first draws one seed per image (`_random.split`).
            Draws are made on the generator's device and moved to `x.device`. None uses
            torch's global RNG.
        mapmm: apply the dispatcher's global min-max rescale before and after (default, as
            MATLAB); off, the distortion sees `x` as is and the result is clipped to [0, 1].
        in_range: optional (B, 2) (min, max) per image for the first rescale, instead of each
            image's own range: a crop passes its whole image's range, as MATLAB rescales whole
            images.
        out_range: the same for the second rescale (the range the whole distorted image has).
        histogram: optional (B, 256) value histogram of each whole image after the first
            rescale (`whole_image_context`), for the types that threshold it (22); others ignore it.

    Returns:
        A tensor of x's shape, dtype and device, in [0, 1]. CPU-only types (6, 9) run on the CPU
        and are moved back.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    spec = _check(int(dist_type), int(level))
    return _run(x, spec, [int(level)] * x.shape[0], generator, mapmm, in_range, out_range, histogram)


def distort_batch(x: torch.Tensor, types: torch.Tensor, levels: torch.Tensor, generator: Generators = None,
                  *, mapmm: bool = True, in_range: torch.Tensor | None = None,
                  out_range: torch.Tensor | None = None, histogram: torch.Tensor | None = None) -> torch.Tensor:
    """Apply a (type, level) per image; each type present runs once on its images.

    Args:
        x: (B, 3, H, W) float images in [0, 1].
        types: (B,) 1-based type numbers.
        levels: (B,) 1-based levels.
        generator: as in `distort`: a list gives each image its own; a single generator
            first draws one seed per image, in image order (`_random.split`).
        mapmm, in_range, out_range, histogram: as in `distort` (one row per image).

    Returns:
        The distorted batch (x's shape, dtype and device). A batch of one type goes through
        without being gathered and scattered.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
    t_list = [int(t) for t in torch.as_tensor(types).flatten().tolist()]
    l_list = [int(v) for v in torch.as_tensor(levels).flatten().tolist()]
    if len(t_list) != x.shape[0] or len(l_list) != x.shape[0]:
        raise ValueError("types and levels need one entry per image")
    for t, lv in zip(t_list, l_list):
        _check(t, lv)
    generator = _random.split(generator, x.shape[0])
    if len(set(t_list)) == 1:
        return _run(x, TYPES[t_list[0]], l_list, generator, mapmm, in_range, out_range, histogram)
    out = torch.empty_like(x)
    for t in sorted(set(t_list)):
        idx = [i for i, u in enumerate(t_list) if u == t]
        rows = torch.as_tensor(idx, device=x.device)
        sub = _run(x[idx], TYPES[t], [l_list[i] for i in idx], _random.subset(generator, idx), mapmm,
                   None if in_range is None else torch.as_tensor(in_range, device=x.device)[rows],
                   None if out_range is None else torch.as_tensor(out_range, device=x.device)[rows],
                   None if histogram is None or not TYPES[t].histogram
                   else torch.as_tensor(histogram, device=x.device)[rows])
        out[torch.as_tensor(idx, device=x.device)] = sub
    return out
