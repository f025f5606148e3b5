"""Render the pictures in docs/: ground-truth DSMs and a DSMix example.

    python docs/figures.py            # writes docs/img/gt-dsm.png and docs/img/dsmix.png

Both use `astronaut.png` from the demo images shipped with the package (public domain, NASA;
see dsmix_cli/assets/demo/LICENSES.md) and the project's own functions, so the pictures show
exactly what the code computes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from dsmix_cli.demo import demo_images
from dsmix_cli.distortions import TYPE_NAMES, distort
from dsmix_cli.dsm.gt import gt_dsm
from dsmix_cli.plots import colormap
from dsmix_cli.dsmix import mix, mix_weights
from dsmix_cli.imageio import load_rgb_tensor, save_image_atomic, to_float

OUT = Path(__file__).resolve().parent / "img"
TILE = 192


def _tile(x: torch.Tensor) -> Image.Image:
    arr = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr).resize((TILE, TILE), Image.BILINEAR)


def _heat(m: torch.Tensor, scale: float) -> Image.Image:
    return Image.fromarray(colormap((m / scale).numpy())).resize((TILE, TILE), Image.NEAREST)


def _reference() -> torch.Tensor:
    path = next(p for p in demo_images() if p.stem == "astronaut")
    x = to_float(load_rgb_tensor(path))
    s = min(x.shape[1:]) // 8 * 8
    return x[:, :s, :s].unsqueeze(0)


def gt_dsm_figure() -> Image.Image:
    """Distorted images (top) and their ground-truth DSMs (bottom), each on its own colour scale."""
    ref = _reference()
    cases = [(1, 4), (10, 5), (11, 5), (21, 4), (20, 5), (23, 5)]
    gen = torch.Generator().manual_seed(0)
    dists = [distort(ref, t, lv, gen) for t, lv in cases]
    maps = [gt_dsm(d, ref)[0] for d in dists]
    pad, label = 6, 16
    canvas = Image.new("RGB", (len(cases) * (TILE + pad) + pad, 2 * (TILE + label) + 3 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((t, lv), d, m) in enumerate(zip(cases, dists, maps)):
        x = pad + i * (TILE + pad)
        draw.text((x, pad), f"{t} {TYPE_NAMES[t]}, level {lv}", fill="black")
        canvas.paste(_tile(d[0]), (x, pad + label))
        draw.text((x, 2 * pad + TILE + label), f"GT DSM (max {float(m.max()):.3f})", fill="black")
        canvas.paste(_heat(m, float(m.max())), (x, 2 * pad + TILE + 2 * label))
    return canvas


def dsmix_figure() -> Image.Image:
    """Three distorted sources, their DSMs, the Mix=3 image and its label weights by mode."""
    ref = _reference()
    cases = [(11, 5), (1, 5), (23, 5)]  # white noise everywhere, blur, a few colour blocks
    gen = torch.Generator().manual_seed(3)
    batch = torch.cat([distort(ref, t, lv, gen) for t, lv in cases])
    maps = gt_dsm(batch, ref.expand_as(batch))
    # find a sample whose base and two pastes are three different images
    for seed in range(100):
        m = mix(batch, n_sources=3, generator=torch.Generator().manual_seed(seed))
        distinct = [b for b in range(batch.shape[0]) if len(set(m.sources[:, b].tolist())) == 3]
        if distinct:
            b = distinct[0]
            break
    src = m.sources[:, b]
    dsm = maps[m.sources]
    weights = {mode: mix_weights(m.visible, dsm, mode=mode)[:, b] for mode in ("normalized", "absolute", "area")}
    pad, label = 6, 16
    canvas = Image.new("RGB", (4 * (TILE + pad) + pad, 2 * (TILE + label) + 3 * pad + 4 * label), "white")
    draw = ImageDraw.Draw(canvas)
    for k in range(3):
        x = pad + k * (TILE + pad)
        t, lv = cases[int(src[k])]
        role = "base" if k == 0 else f"paste {k}"
        draw.text((x, pad), f"{role}: {TYPE_NAMES[t]} L{lv}", fill="black")
        canvas.paste(_tile(batch[int(src[k])]), (x, pad + label))
        vis = m.visible[k, b]
        heat = _heat(dsm[k, b], float(dsm[k, b].max()))
        # grey out the part of the source's DSM that later boxes hide in the mix
        mask = Image.fromarray((vis.numpy() * 255).astype("uint8")).resize((TILE, TILE), Image.NEAREST)
        heat = Image.composite(heat, Image.new("RGB", heat.size, (160, 160, 160)), mask)
        draw.text((x, 2 * pad + TILE + label), "its DSM (grey = hidden in the mix)", fill="black")
        canvas.paste(heat, (x, 2 * pad + TILE + 2 * label))
    x = pad + 3 * (TILE + pad)
    draw.text((x, pad), "DSMix (Mix=3)", fill="black")
    canvas.paste(_tile(m.images[b]), (x, pad + label))
    y = 3 * pad + 2 * TILE + 2 * label
    for i, (mode, w) in enumerate(weights.items()):
        shares = ", ".join(f"{v:.2f}" for v in w.tolist())
        draw.text((pad, y + i * label), f"label weights (base, paste 1, paste 2), {mode:>10}: {shares}",
                  fill="black")
    return canvas


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    save_image_atomic(gt_dsm_figure(), OUT / "gt-dsm.png")
    save_image_atomic(dsmix_figure(), OUT / "dsmix.png")
    print(f"wrote {OUT / 'gt-dsm.png'} and {OUT / 'dsmix.png'}")


if __name__ == "__main__":
    main()
