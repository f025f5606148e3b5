"""Tiny distorted/reference folders for the DSM tests (no dependency on the distortion library).

`write_synth_folder` writes what `dsmix synthesize` writes: `ref_imgs/*.png`, `dist_imgs/*.png`
named `<stem>_<tt>_<ll>.png` and `dist_imgs.csv` (`dist_img,ref_img,type,level`, relative paths),
with distortions made by plain numpy operations.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def reference_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour image with some texture (uint8 HxWx3)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([np.sin(xx / rng.uniform(5, 15)) , np.cos(yy / rng.uniform(5, 15)),
                     np.sin((xx + yy) / rng.uniform(8, 20))], axis=-1)
    img = 0.5 + 0.3 * base + 0.1 * rng.standard_normal((h, w, 3))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def distort(ref: np.ndarray, kind: int, level: int, rng: np.random.Generator) -> np.ndarray:
    """Simple numpy distortions: 1 noise, 2 box blur, 3 brightness, 4 a noisy block."""
    x = ref.astype(np.float64)
    if kind == 1:
        x = x + rng.normal(0, 8 * level, x.shape)
    elif kind == 2:
        k = 1 + 2 * level
        pad = np.pad(x, ((k, k), (k, k), (0, 0)), mode="edge")
        c = pad.cumsum(0).cumsum(1)
        c = np.pad(c, ((1, 0), (1, 0), (0, 0)))
        h, w = x.shape[:2]
        s = 2 * k + 1
        x = (c[s:s + h, s:s + w] - c[:h, s:s + w] - c[s:s + h, :w] + c[:h, :w])[:h, :w] / s**2
    elif kind == 3:
        x = x + 20 * level
    else:
        x = x.copy()
        x[8:40, 16:48] += rng.normal(0, 30 * level, (32, 32, 3))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def write_synth_folder(root: Path, n_refs: int = 4, kinds=(1, 2, 3, 4), levels=(1, 2), h: int = 64, w: int = 80,
                       seed: int = 0) -> Path:
    """Write a synthesize-style folder and return it."""
    rng = np.random.default_rng(seed)
    (root / "ref_imgs").mkdir(parents=True, exist_ok=True)
    (root / "dist_imgs").mkdir(exist_ok=True)
    rows = []
    for r in range(n_refs):
        stem = f"ref{r:02d}"
        ref = reference_image(rng, h, w)
        Image.fromarray(ref).save(root / "ref_imgs" / f"{stem}.png")
        for t in kinds:
            for level in levels:
                name = f"{stem}_{t:02d}_{level:02d}.png"
                Image.fromarray(distort(ref, t, level, rng)).save(root / "dist_imgs" / name)
                rows.append((f"dist_imgs/{name}", f"ref_imgs/{stem}.png", t, level))
    with (root / "dist_imgs.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["dist_img", "ref_img", "type", "level"])
        wr.writerows(rows)
    return root
