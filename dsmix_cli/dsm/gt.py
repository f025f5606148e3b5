"""The ground-truth distortion-induced sensitivity map (docs/method.md section 1).

DSM_gt(i, j) = 1/p^2 * sum over the p x p cell (i, j) of 1/3 * sum_c |I_D(u, v, c) - I_R(u, v, c)|,
with pixels in [0, 1], a p x p average pool with stride p and no padding (p = 8 in the paper,
the ViT patch size, so one value per token).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from dsmix_cli.errors import DatasetError, DsmixError


def _as_float01(x: torch.Tensor) -> torch.Tensor:
    """uint8 images become float32 /255; floating images are taken as already in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float().div(255.0)
    if not x.is_floating_point():
        raise DsmixError(f"gt_dsm: expected uint8 or float images, got {x.dtype}")
    return x.float()


def gt_dsm(distorted: torch.Tensor, reference: torch.Tensor, pool: int = 8) -> torch.Tensor:
    """The ground-truth DSM of distorted/reference image pairs (docs/method.md section 1).

    Channel mean of the absolute difference, then average pooling with kernel = stride = `pool`
    and no padding (a trailing strip narrower than `pool` is dropped, as `floor(H / pool)`).

    Args:
        distorted: (B, 3, H, W) or (3, H, W) images, uint8 (divided by 255) or float in [0, 1].
        reference: the matching reference images, same shape (and device) as `distorted`.
        pool: the pooling size p (the ViT patch size; 8 in the paper).

    Returns:
        float32 maps of shape (B, H // pool, W // pool), or (H // pool, W // pool) for
        unbatched input, on the input's device. Values lie in [0, 1].

    Raises:
        DsmixError: mismatched shapes, not 3 channels, a pool larger than the image.
    """
    if distorted.shape != reference.shape:
        raise DsmixError(f"gt_dsm: distorted {tuple(distorted.shape)} and reference "
                         f"{tuple(reference.shape)} differ in shape")
    unbatched = distorted.dim() == 3
    if unbatched:
        distorted, reference = distorted.unsqueeze(0), reference.unsqueeze(0)
    if distorted.dim() != 4 or distorted.shape[1] != 3:
        raise DsmixError(f"gt_dsm: expected (B, 3, H, W) or (3, H, W) images, got {tuple(distorted.shape)}")
    if pool < 1 or pool > min(distorted.shape[-2:]):
        raise DsmixError(f"gt_dsm: pool {pool} does not fit images of size {tuple(distorted.shape[-2:])}")
    diff = (_as_float01(distorted) - _as_float01(reference)).abs().mean(dim=1, keepdim=True)  # D(u, v)
    maps = F.avg_pool2d(diff, kernel_size=pool, stride=pool, padding=0).squeeze(1)
    return maps[0] if unbatched else maps


def dsm_map_path(maps_dir: str | Path, dist_path: str | Path) -> Path:
    """Where `make-gt-dsm` stores the map of a distorted image: `maps_dir/<distorted-stem>.npy`."""
    return Path(maps_dir) / f"{Path(dist_path).stem}.npy"


def load_gt_map(maps_dir: str | Path, pair) -> torch.Tensor:
    """Read the stored ground-truth map of `pair` (a `dsmix_cli.data.pairs.Pair`) as float32.

    Returns:
        A (H // pool, W // pool) float32 tensor (maps are stored float16 or float32).

    Raises:
        DatasetError: the map is missing (run `dsmix make-gt-dsm`) or not a 2-D float array.
    """
    path = dsm_map_path(maps_dir, pair.dist)
    if not path.is_file():
        raise DatasetError(f"no ground-truth map for {Path(pair.dist).name}; make the maps with "
                           f"`dsmix make-gt-dsm --data DIR --out {maps_dir}`", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"not a readable .npy map ({exc})", path) from None
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise DatasetError(f"expected a 2-D float map, found shape {arr.shape} dtype {arr.dtype}", path)
    return torch.from_numpy(arr.astype(np.float32, copy=False).copy())
