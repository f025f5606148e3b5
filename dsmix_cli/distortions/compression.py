"""Compression and palette distortions: KADID types 6 (colour quantization), 9 (JPEG2000) and
10 (JPEG).

Types 6 and 9 run on the CPU through Pillow (OpenJPEG for JPEG2000), one image at a time: a
batch on another device is moved to the CPU and back. JPEG uses `torchvision.io`, on CUDA
when the batch is there (nvJPEG), else on the CPU (libjpeg). As in MATLAB's `imwrite`, the
image is rounded to 8 bits before encoding.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg, encode_jpeg

from dsmix_cli.distortions import _random
from dsmix_cli.distortions._matlab import per_sample

Amount = float | Sequence[float]


def _to_pil(img: torch.Tensor) -> Image.Image:
    arr = img.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _from_pil(im: Image.Image, like: torch.Tensor) -> torch.Tensor:
    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(device=like.device, dtype=like.dtype)


def _per_image(x: torch.Tensor, values: list[float], fn) -> torch.Tensor:
    return torch.stack([_from_pil(fn(_to_pil(x[i]), values[i]), x) for i in range(x.shape[0])])


def quantize_colors(im: Image.Image, colors: int) -> Image.Image:
    """MATLAB `ind2rgb(rgb2ind(im, n))`: an n-colour palette (Pillow median cut, the closest
    Pillow method to MATLAB's minimum-variance quantization) applied with Floyd-Steinberg
    dithering (`rgb2ind`'s default)."""
    palette = im.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB")


def color_quantization(x: torch.Tensor, colors: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 6, MATLAB `imcolorquantize(im, n)`; n = 64, 48, 32, 16, 8 colours. CPU (Pillow)."""
    return _per_image(x, per_sample(colors, x.shape[0]), quantize_colors)


def jpeg2000_roundtrip(im: Image.Image, ratio: float) -> Image.Image:
    """`imwrite(im, f, 'jp2', 'CompressionRatio', r)` then `imread`: OpenJPEG through Pillow in
    rate mode (ratio of raw to compressed size) with the irreversible 9/7 wavelet (lossy)."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)], irreversible=True)
    buf.seek(0)
    with Image.open(buf) as out:
        out.load()
        return out.convert("RGB")


def jpeg2000(x: torch.Tensor, ratio: Amount, generator: _random.Gen = None) -> torch.Tensor:
    """Type 9, MATLAB `imcompressjp2k(im, r)`; r = 16, 32, 45, 120, 400. CPU (Pillow/OpenJPEG)."""
    return _per_image(x, per_sample(ratio, x.shape[0]), jpeg2000_roundtrip)


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
