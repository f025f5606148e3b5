"""A picture of predicted vs ground-truth DSMs, for checking a DSM network by eye (METHOD.md 10.18).

One row per image: the distorted input, its reference, the ground-truth map and the predicted
map (clamped at 0), both maps on the same colour scale (0 to the row's largest value, printed
under the row), upsampled without smoothing so each cell is one ViT patch. Pillow only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dsmix_cli.imageio import save_image_atomic
from dsmix_cli.plots import colormap

def _image(x: torch.Tensor) -> Image.Image:
    """uint8 or [0, 1] float (3, H, W) -> PIL RGB."""
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _heat(m: torch.Tensor, scale: float, size: tuple[int, int]) -> Image.Image:
    arr = m.detach().float().cpu().numpy() / max(scale, 1e-12)
    return Image.fromarray(colormap(arr)).resize(size, Image.NEAREST)


def preview_image(dist: torch.Tensor, ref: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
                  title: str = "") -> Image.Image:
    """Compose the grid: rows of (distorted, reference, GT map, predicted map).

    Args:
        dist, ref: (N, 3, H, W) images (uint8 or float in [0, 1]).
        gt, pred: (N, h, w) maps (the prediction is shown clamped at 0).
        title: a line of text at the top (e.g. the step).
    """
    n, _, h0, w0 = dist.shape
    zoom = max(1, -(-112 // w0))  # small crops are enlarged so the labels fit
    h, w = h0 * zoom, w0 * zoom
    pad, label_h, head_h = 4, 14, 16 if title else 0
    cols = ("distorted", "reference", "GT DSM", "predicted DSM")
    width = 4 * w + 5 * pad
    height = head_h + label_h + n * (h + label_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill=(0, 0, 0))
    for c, name in enumerate(cols):
        draw.text((pad + c * (w + pad), head_h + 1), name, fill=(0, 0, 0))
    for i in range(n):
        y = head_h + label_h + i * (h + label_h + pad)
        p = pred[i].float().clamp(min=0)
        scale = float(max(gt[i].max().item(), p.max().item(), 1e-6))
        tiles = (_image(dist[i]).resize((w, h), Image.BILINEAR), _image(ref[i]).resize((w, h), Image.BILINEAR),
                 _heat(gt[i], scale, (w, h)), _heat(p, scale, (w, h)))
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (pad + c * (w + pad), y))
        mse = float(((p - gt[i].float()) ** 2).mean().item())
        draw.text((pad, y + h + 1), f"scale 0..{scale:.3f}   mse {mse:.2e}", fill=(0, 0, 0))
    return canvas


def save_preview(path: str | Path, dist: torch.Tensor, ref: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
                 title: str = "") -> None:
    """Write `preview_image(...)` atomically as PNG."""
    save_image_atomic(preview_image(dist, ref, gt, pred, title), path)
