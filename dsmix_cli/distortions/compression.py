"""Compression and palette distortions: KADID types 6 (colour quantization), 9 (JPEG2000) and
10 (JPEG).

Types 6 and 9 run on the CPU through Pillow (OpenJPEG for JPEG2000), one image at a time: a
batch on another device is moved to the CPU and back. JPEG uses `torchvision.io`, on CUDA
when the batch is there (nvJPEG), else on the CPU (libjpeg). As in MATLAB's `imwrite`, the
image is rounded to 8 bits before encoding.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg, encode_jpeg

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._matlab import per_sample

Amount = float | Sequence[float]


def _to_pil(img: torch.Tensor) -> Image.Image:
    """A (3, H, W) float image in [0, 1] as an 8-bit Pillow image (rounded, as `imwrite` does)."""
    arr = img.detach().clamp(0, 1).mul(255).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _from_pil(im: Image.Image, like: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A Pillow image as a (3, H, W) tensor in [0, 1] of like's dtype (into `out` when given)."""
    t = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
    if out is None:
        out = torch.empty(t.shape, dtype=like.dtype, device=like.device)
    return out.copy_(t).div_(255.0)


def _per_image(x: torch.Tensor, values: list[float], fn) -> torch.Tensor:
    for i in range(x.shape[0]):  # in place: the dispatcher hands over a buffer of its own
        _from_pil(fn(_to_pil(x[i]), values[i]), x, out=x[i])
    return x


PALETTE_SAMPLE = 16384  # at least this many pixels build the colour-quantization palette


def palette_stride(height: int, width: int, sample: int = PALETTE_SAMPLE) -> int:
    """k such that every k-th row and column still give at least `sample` pixels (k >= 1)."""
    return max(1, math.isqrt(max(1, height * width // sample)))


def quantize_colors(im: Image.Image, colors: int) -> Image.Image:
    """MATLAB `ind2rgb(rgb2ind(im, n))`: an n-colour palette (Pillow median cut, the closest
    Pillow method to MATLAB's minimum-variance quantization) applied with Floyd-Steinberg
    dithering (`rgb2ind`'s default).

    The palette is built from a regular subsample (every k-th row and column, at least
    `PALETTE_SAMPLE` pixels: k = 3 at 512x384): median cut's cost grows faster than the pixel
    count, and the palette of a 22,000-pixel grid moves each level's mean PSNR by less than
    0.3 dB (benchmarks/bench_severity.py). The dithering runs on every pixel.
    """
    return im.quantize(palette=median_cut_palette(im, colors), dither=Image.Dither.FLOYDSTEINBERG).convert("RGB")


def median_cut_palette(im: Image.Image, colors: int) -> Image.Image:
    """The n-colour median-cut palette of `quantize_colors` (a "P" image whose palette it is),
    from every k-th row and column of `im` (`palette_stride`)."""
    k = palette_stride(im.height, im.width)
    src = im if k == 1 else Image.fromarray(np.ascontiguousarray(np.asarray(im)[::k, ::k]), mode="RGB")
    return src.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def color_quantization(x: torch.Tensor, colors: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 6, MATLAB `imcolorquantize(im, n)`; n = 64, 48, 32, 16, 8 colours. CPU (Pillow)."""
    return _per_image(x, per_sample(colors, x.shape[0]), quantize_colors)


def _jpeg2000_save(im: Image.Image, ratios: list[float]) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(r) for r in ratios],
            irreversible=True)
    return buf.getvalue()


def _jpeg2000_open(data: bytes, layers: int = 0) -> Image.Image:
    """Decode a JPEG2000 codestream, its first `layers` quality layers only (0: all)."""
    out = Image.open(io.BytesIO(data))
    if layers:
        # Pillow applies `layers` only together with `reduce`: set it in the tile's arguments
        # (codec, reduce, layers, offset, length), as its own `load` does for `reduce`.
        tile = out.tile[0]
        args = tuple(tile[3])
        if len(args) != 5:
            raise RuntimeError("unexpected Pillow JPEG2000 tile arguments")
        out.tile = [tile._replace(args=(args[0], args[1], int(layers), args[3], args[4]))]
    out.load()
    return out.convert("RGB")


JPEG2000_RATIOS = (16.0, 32.0, 45.0, 120.0, 400.0)  # the dispatcher's levels 1-5 of type 9


LAYERED_MIN_BYTES = 1024  # layered encoding once the highest ratio still leaves this many bytes


def layered(height: int, width: int) -> bool:
    """Whether an image of this size is encoded with one layer per level ratio: when even the
    highest ratio leaves `LAYERED_MIN_BYTES` (512x384: 1,475 bytes at ratio 400), so that the
    layer headers are a negligible part of any level's budget. Smaller images (crops) get one
    single-layer encoding per ratio. The choice depends on the size alone, so an image's output
    never depends on what else is in its batch."""
    return height * width * 3 / max(JPEG2000_RATIOS) >= LAYERED_MIN_BYTES


def _layer_ratios(ratios) -> list[float]:
    """The quality layers of the encoding: every ratio of the level table, and any other one
    asked for, highest ratio (lowest quality) first."""
    return sorted(set(JPEG2000_RATIOS) | {float(r) for r in ratios}, reverse=True)


def jpeg2000_levels(im: Image.Image, ratios: Sequence[float]) -> list[Image.Image]:
    """`imwrite(im, f, 'jp2', 'CompressionRatio', r)` then `imread`, for one or more ratios r:
    OpenJPEG through Pillow in rate mode (ratio of raw to compressed size) with the
    irreversible 9/7 wavelet (lossy).

    An image of KADIS size (`layered`) is encoded once with one quality layer per ratio of the level table (highest
    ratio first), and the image at ratio r is decoded from the layers up to r's. OpenJPEG's
    rate allocation truncates every code-block at the same rate-distortion slope as for a
    single-layer encoding at r, so the decoded image is that one up to the few bytes the other
    layers' headers take (within 0.07 dB of PSNR on the CLIVE images). The encoding is four
    fifths of the cost, so the five levels of one image cost about two single encodings; and
    the image at a ratio is the same whichever other ratios are asked for with it.
    """
    if not layered(im.height, im.width):
        single = {float(r): _jpeg2000_open(_jpeg2000_save(im, [float(r)])) for r in set(ratios)}
        return [single[float(r)] for r in ratios]
    layers = _layer_ratios(ratios)
    data = _jpeg2000_save(im, layers)
    out = {}
    for r in ratios:
        r = float(r)
        if r not in out:
            k = layers.index(r) + 1
            try:
                out[r] = _jpeg2000_open(data, k if k < len(layers) else 0)
            except RuntimeError:  # a Pillow whose JPEG2000 tiles differ: a single-layer encoding
                out[r] = _jpeg2000_open(_jpeg2000_save(im, [r]))
    return [out[float(r)] for r in ratios]


def jpeg2000_roundtrip(im: Image.Image, ratio: float) -> Image.Image:
    """`jpeg2000_levels` at one ratio."""
    return jpeg2000_levels(im, [ratio])[0]


def jpeg2000(x: torch.Tensor, ratio: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 9, MATLAB `imcompressjp2k(im, r)`; r = 16, 32, 45, 120, 400. CPU (Pillow/OpenJPEG),
    see `jpeg2000_levels`."""
    return _per_image(x, per_sample(ratio, x.shape[0]), jpeg2000_roundtrip)


def jpeg2000_shared(x: torch.Tensor, ratios: list[float]) -> list[torch.Tensor]:
    """Type 9 of one (1, 3, H, W) image at several ratios from one encoding, as tensors."""
    return [_from_pil(im, x).unsqueeze(0) for im in jpeg2000_levels(_to_pil(x[0]), ratios)]


def _jpeg_on(x8: list[torch.Tensor], quality: int, device: torch.device) -> list[torch.Tensor]:
    data = encode_jpeg(x8, quality=quality)
    return decode_jpeg([d.cpu() for d in data], device=device)


def jpeg(x: torch.Tensor, quality: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 10, MATLAB `imcompressjpeg(im, q)`: `imwrite(..., 'jpg', 'Quality', q)` and re-read;
    q = 43, 36, 24, 7, 4. torchvision encode/decode, on CUDA when the batch is on CUDA."""
    qualities = [int(round(q)) for q in per_sample(quality, x.shape[0])]
    x8 = x.detach().clamp(0, 1).mul_(255).round_().to(torch.uint8)
    if not x.is_cuda and x.shape[0] == 1:  # the CPU path, image by image: no lists, in place
        decoded = decode_jpeg(encode_jpeg(x8[0], quality=qualities[0]))
        return x.copy_(decoded.unsqueeze(0)).div_(255.0)
    out = torch.empty_like(x)
    for q in sorted(set(qualities)):
        idx = [i for i, v in enumerate(qualities) if v == q]
        imgs = [x8[i].contiguous() for i in idx]
        if x.is_cuda:
            try:
                decoded = _jpeg_on(imgs, q, x.device)
            except RuntimeError:  # a torchvision build without nvJPEG: fall back to libjpeg
                decoded = _jpeg_on([t.cpu() for t in imgs], q, torch.device("cpu"))
        else:
            decoded = _jpeg_on(imgs, q, torch.device("cpu"))
        for i, d in zip(idx, decoded):
            out[i] = d.to(device=x.device, dtype=x.dtype) / 255.0
    return out
