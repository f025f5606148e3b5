"""A contact sheet of the distortions: one reference, a row per type, a column per level.

The reference is centre-cropped to 3:4 and resized to KADIS's 384x512, so every distortion
acts at the scale it has in KADIS-700k; each thumbnail is then a central crop of the distorted
image, `zoom` times the thumbnail size, reduced by `zoom` (zoom 1 is a 1:1 crop, where no
resampling hides noise or blocking).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dsmix_cli.distortions import NUM_LEVELS, NUM_TYPES, TYPES, distort_batch
from dsmix_cli.engine.runtime import generator
from dsmix_cli.imageio import load_rgb, save_image_atomic, to_uint8

WORK_SIZE = (384, 512)  # (H, W) of a KADIS reference


def kadis_size_reference(im: Image.Image, size: tuple[int, int] = WORK_SIZE) -> torch.Tensor:
    """Centre-crop a PIL image to the aspect of `size` (H, W) and resize it: float (3, H, W)."""
    h, w = size
    iw, ih = im.size
    scale = min(iw / w, ih / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (iw - cw) // 2, (ih - ch) // 2
    im = im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_contact_sheet(reference: str | Path, out: str | Path, *, types: Sequence[int] | None = None,
                         levels: Sequence[int] | None = None, seed: int = 0, device: str | torch.device = "cpu",
                         thumb: tuple[int, int] = (96, 128), zoom: int = 2, label_width: int = 210,
                         caption: str | None = None,
                         on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Render the sheet and write it atomically (format from the extension).

    Args:
        reference: the reference image file.
        out: the output image (.png, .jpg, ...).
        types: the rows (default 1..25).
        levels: the columns (default 1..5).
        seed: the generators' base seed (per (type, level)).
        device: where the distortions run.
        thumb: (H, W) of each thumbnail.
        zoom: crop `zoom` x thumb from the 384x512 image and reduce it by `zoom`.
        label_width: width of the row-label column in pixels.
        caption: optional text under the header.
        on_progress: called with (rows done, rows) after each type's row is rendered.

    Returns:
        The path written.
    """
    types = list(types or range(1, NUM_TYPES + 1))
    levels = list(levels or range(1, NUM_LEVELS + 1))
    device = torch.device(device)
    ref = kadis_size_reference(load_rgb(reference)).to(device)
    th, tw = thumb
    ch, cw = min(th * zoom, ref.shape[1]), min(tw * zoom, ref.shape[2])
    top, left = (ref.shape[1] - ch) // 2, (ref.shape[2] - cw) // 2
    gap, header = 4, 22 + (16 if caption else 0)
    cols = 1 + len(levels)
    sheet = Image.new("RGB", (label_width + cols * (tw + gap), header + len(types) * (th + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(13)
    for c, name in enumerate(["reference"] + [f"level {lv}" for lv in levels]):
        draw.text((label_width + c * (tw + gap) + 4, 4), name, fill="black", font=font)
    if caption:
        draw.text((4, 22), caption, fill="black", font=_font(11))

    def tile(img: torch.Tensor) -> Image.Image:
        crop = to_uint8(img[:, top:top + ch, left:left + cw]).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(crop).resize((tw, th), Image.Resampling.BOX)

    for r, t in enumerate(types):
        y0 = header + r * (th + gap)
        spec = TYPES[t]
        draw.text((4, y0 + th // 2 - 16), f"{t:2d} {spec.name}", fill="black", font=font)
        draw.text((4, y0 + th // 2 + 2), f"{spec.parameter} {', '.join(f'{v:g}' for v in spec.levels)}",
                  fill="dimgray", font=_font(10))
        x = ref.unsqueeze(0).expand(len(levels), -1, -1, -1).contiguous()
        gens = [generator(seed, "contact-sheet", t, lv, device=device) for lv in levels]
        y = distort_batch(x, torch.full((len(levels),), t), torch.tensor(levels), gens)
        sheet.paste(tile(ref), (label_width, y0))
        for c in range(len(levels)):
            sheet.paste(tile(y[c]), (label_width + (c + 1) * (tw + gap), y0))
        if on_progress is not None:
            on_progress(r + 1, len(types))
    out = Path(out)
    save_image_atomic(sheet, out, **({"optimize": True} if out.suffix.lower() == ".png" else {"quality": 90}))
    return out
