"""A picture of predicted vs ground-truth DSMs, for checking a DSM network by eye.

One row per crop: the distorted input, its reference, the ground-truth map and the predicted
map (clamped at 0). Each map has its own colour scale, from 0 to that map's largest value,
drawn as a colour bar beside it: a network early in training predicts maps far fainter than
the truth, and on a shared scale the fainter map would look black. Under each row, its label
(which file and which crop) and the MSE. Maps are upsampled without smoothing, so each cell is
one ViT patch. Pillow only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw

from dsmix_cli.distortions import TYPES
from dsmix_cli.imageio import save_image_atomic
from dsmix_cli.plots import colormap, colour_bar, font

_PAD, _HEAD_H, _LINE_H = 6, 16, 13


def _image(x: torch.Tensor) -> Image.Image:
    """uint8 or [0, 1] float (3, H, W) -> PIL RGB."""
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _heat(m: torch.Tensor, scale: float, size: tuple[int, int]) -> Image.Image:
    """A map on its colour scale 0..`scale`, nearest-neighbour upsampled to `size` (W, H)."""
    arr = m.detach().float().cpu().numpy() / max(scale, 1e-12)
    return Image.fromarray(colormap(arr)).resize(size, Image.NEAREST)


def map_scale(m: torch.Tensor) -> float:
    """The top of a map's colour scale: its largest value (at least 1e-6, so an all-zero map draws)."""
    return float(max(m.detach().float().max().item(), 1e-6))


def preview_label(pair, size: int) -> str:
    """Name a preview crop: `file: distortion level L, centre SxS crop of WxH` (`pair`: a data.pairs.Pair).

    The preview shows validation crops the way validation takes them: the centre crop (aligned to
    the map's pooling grid when maps are stored), after resizing an image smaller than the crop up.
    """
    try:
        with Image.open(pair.dist) as im:
            w, h = im.size
    except OSError:
        w = h = 0
    name = TYPES[pair.type].name if pair.type in TYPES else f"type {pair.type}"
    where = (f"centre {size}x{size} crop of {w}x{h}" if min(w, h) >= size
             else f"centre {size}x{size} crop of {w}x{h} resized up")
    return f"{Path(pair.dist).name}: {name} level {pair.level}, {where}"


def preview_image(dist: torch.Tensor, ref: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
                  title: str = "", labels: Sequence[str] | None = None) -> Image.Image:
    """Compose the grid: rows of (distorted, reference, GT map + colour bar, predicted map + colour bar).

    Args:
        dist, ref: (N, 3, H, W) images (uint8 or float in [0, 1]).
        gt, pred: (N, h, w) maps (the prediction is shown clamped at 0); each map is drawn on its
            own scale, 0 to its maximum, with a colour bar.
        title: a line of text at the top (e.g. the step).
        labels: one line per row naming the crop (file, distortion, crop position).
    """
    n, _, h0, w0 = dist.shape
    zoom = max(1, -(-112 // w0))  # small crops are enlarged so the labels fit
    h, w = h0 * zoom, w0 * zoom
    preds = [pred[i].float().clamp(min=0) for i in range(n)]
    scales = [(map_scale(gt[i]), map_scale(preds[i])) for i in range(n)]
    bars = [(colour_bar(0.0, g, h, width=12), colour_bar(0.0, p, h, width=12)) for g, p in scales]
    bar_w = max((b.size[0] for pair in bars for b in pair), default=0)
    cell = w + _PAD + bar_w  # a map column: the map and its bar
    xs = [_PAD, _PAD + (w + _PAD), _PAD + 2 * (w + _PAD), _PAD + 2 * (w + _PAD) + cell + _PAD]
    width = xs[3] + cell + _PAD
    head_h = _HEAD_H if title else 0
    row_h = h + 2 * _LINE_H + _PAD
    height = head_h + _LINE_H + n * row_h + _PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    f, fs = font(12), font(11)
    if title:
        draw.text((_PAD, 2), title, fill=(0, 0, 0), font=f)
    heads = ("distorted", "reference", "ground-truth DSM", "predicted DSM")
    for x, name in zip(xs, heads):
        draw.text((x, head_h + 1), name, fill=(0, 0, 0), font=fs)
    for i in range(n):
        y = head_h + _LINE_H + i * row_h
        (g_scale, p_scale), (g_bar, p_bar) = scales[i], bars[i]
        canvas.paste(_image(dist[i]).resize((w, h), Image.BILINEAR), (xs[0], y))
        canvas.paste(_image(ref[i]).resize((w, h), Image.BILINEAR), (xs[1], y))
        canvas.paste(_heat(gt[i], g_scale, (w, h)), (xs[2], y))
        canvas.paste(g_bar, (xs[2] + w + _PAD, y))
        canvas.paste(_heat(preds[i], p_scale, (w, h)), (xs[3], y))
        canvas.paste(p_bar, (xs[3] + w + _PAD, y))
        mse = float(((preds[i] - gt[i].float()) ** 2).mean().item())
        label = labels[i] if labels is not None and i < len(labels) else f"crop {i + 1}"
        draw.text((_PAD, y + h + 1), label, fill=(0, 0, 0), font=fs)
        draw.text((_PAD, y + h + 1 + _LINE_H), f"scales 0..{g_scale:.3g} (truth), 0..{p_scale:.3g} (predicted)"
                  f"   mse {mse:.2e}", fill=(90, 90, 90), font=fs)
    return canvas


def save_preview(path: str | Path, dist: torch.Tensor, ref: torch.Tensor, gt: torch.Tensor, pred: torch.Tensor,
                 title: str = "", labels: Sequence[str] | None = None) -> None:
    """Write `preview_image(...)` atomically as PNG."""
    save_image_atomic(preview_image(dist, ref, gt, pred, title, labels), path)
