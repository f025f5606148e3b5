"""`dsmix make-gt-dsm`: store the ground-truth DSM of every distorted image (docs/method.md,
section 1).

One map per distorted image at full resolution, `OUT/<distorted-stem>.npy`, shape
(H // pool, W // pool), float16 by default. Each file is written atomically, so a killed run
leaves only whole maps and a rerun skips them (resume for free; the temporaries a killed run
left are removed). A pair that cannot be used (an undecodable image, images of different
sizes, an image smaller than the pool) gets no map and is listed in the result's `failed`; the
other maps are written (the command then exits 1, and a rerun tries those pairs again). Pre-training does not need
these (it computes the ground truth on the fly from the shared crop); they serve
`pretrain-dsm --gt-maps` and `qep --dsm-source maps`.

With `dsm_model` the maps are instead the DSM network's predictions on each whole distorted
image (clamped at 0, docs/method.md section 3.1), cropped to whole patches: a cache that lets
`qep --dsm-source maps` use the network's maps without running the ViT at every step. The
folder's `maps.json` records which kind of map it holds, and a rerun refuses to mix kinds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import json

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dsmix_cli.data.pairs import Pair, load_pairs
from dsmix_cli.dsm.gt import dsm_map_path, gt_dsm, load_gt_map
from dsmix_cli.errors import DatasetError, DsmixError
from dsmix_cli.fileio import remove_stale_temporaries, save_npy, write_json
from dsmix_cli.imageio import load_rgb_tensor

__all__ = ["MakeGtConfig", "MakeGtResult", "make_gt_dsm", "dsm_map_path", "load_gt_map"]

DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class MakeGtConfig:
    """Options of `make-gt-dsm`."""

    data: Path
    out: Path
    pool: int = 8
    dtype: str = "float16"
    workers: int = 0
    skip_missing: bool = False
    dsm_model: Path | None = None  # write the DSM network's predicted maps instead of the GT
    device: str = "cpu"  # where the DSM network runs
    allow_outside_root: bool = False  # accept manifest entries that resolve outside --data


@dataclass
class MakeGtResult:
    out: Path
    total: int  # distorted images in the dataset
    written: int  # maps written by this run
    skipped: int  # maps already present (resume)
    failed: list[str] = field(default_factory=list)  # pairs without a map: "file: reason", one each


class _PairImages(Dataset):
    """Decodes one (distorted, reference) pair per item, in worker processes when asked."""

    def __init__(self, pairs: list[Pair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        """(i, distorted, reference, "") or, for a pair that cannot be read, (i, None, None, why)."""
        pair = self.pairs[i]
        try:
            dist, ref = load_rgb_tensor(pair.dist), load_rgb_tensor(pair.ref)
        except DsmixError as exc:
            return i, None, None, str(exc)
        if dist.shape != ref.shape:
            return i, None, None, str(DatasetError(f"is {dist.shape[2]}x{dist.shape[1]} but its reference "
                                                   f"{pair.ref.name} is {ref.shape[2]}x{ref.shape[1]}", pair.dist))
        return i, dist, ref, ""


def make_gt_dsm(cfg: MakeGtConfig, on_progress: Callable[[int, int], None] | None = None) -> MakeGtResult:
    """Write the missing ground-truth maps of a pairs folder.

    Args:
        cfg: the options.
        on_progress: called as `on_progress(done, total)` after each image (done counts the
            maps already present).

    Raises:
        DsmixError: bad options; DatasetError: unreadable dataset, two distorted images with the
            same file stem (their maps would collide), mismatched image sizes.
    """
    if cfg.dtype not in DTYPES:
        raise DsmixError(f"--dtype {cfg.dtype!r}: expected float16 or float32")
    if cfg.pool < 1:
        raise DsmixError(f"--pool {cfg.pool}: must be at least 1")
    pairs = load_pairs(cfg.data, skip_missing=cfg.skip_missing, allow_outside_root=cfg.allow_outside_root)
    stems = Counter(p.dist.stem for p in pairs)
    clashes = [s for s, n in stems.items() if n > 1]
    if clashes:
        raise DatasetError(f"{len(clashes)} distorted file names repeat across folders (e.g. {clashes[0]}); "
                           f"their maps would overwrite each other", cfg.data)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DsmixError("--out exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    model, record = None, {"source": "gt", "pool": cfg.pool}
    if cfg.dsm_model is not None:
        from dsmix_cli.dsm.network import load_dsm_model
        from dsmix_cli.engine.runtime import resolve_device

        device = resolve_device(cfg.device)
        model = load_dsm_model(cfg.dsm_model, device)
        if model.patch_size != cfg.pool:
            raise DsmixError(f"--pool {cfg.pool} differs from the DSM network's patch size {model.patch_size}")
        record = {"source": "model", "pool": cfg.pool, "dsm_model": str(Path(cfg.dsm_model).resolve())}
    _check_record(out, record)
    remove_stale_temporaries(out)
    todo = [p for p in pairs if not dsm_map_path(out, p.dist).is_file()]
    done = len(pairs) - len(todo)
    if on_progress is not None:
        on_progress(done, len(pairs))
    loader = DataLoader(_PairImages(todo), batch_size=None, shuffle=False, num_workers=cfg.workers)
    dtype = DTYPES[cfg.dtype]
    written = 0
    failed: list[str] = []
    for n, (i, dist, ref, error) in enumerate(loader, start=1):
        if not error and min(dist.shape[-2:]) < cfg.pool:
            error = str(DatasetError(f"is {dist.shape[2]}x{dist.shape[1]}, smaller than the pool {cfg.pool} "
                                     "(no map cell fits)", todo[i].dist))
        if error:
            failed.append(error)
        else:
            dsm = gt_dsm(dist, ref, pool=cfg.pool) if model is None else predicted_dsm(model, dist)
            save_npy(dsm_map_path(out, todo[i].dist), dsm.numpy().astype(dtype))
            written += 1
        if on_progress is not None:
            on_progress(done + n, len(pairs))
    return MakeGtResult(out=out, total=len(pairs), written=written, skipped=done, failed=failed)


def predicted_dsm(model, image: torch.Tensor) -> torch.Tensor:
    """The DSM network's map of one whole uint8 (3, H, W) image, cropped to whole patches
    (the same (H // p, W // p) grid as the ground truth); float32 on the CPU."""
    p = model.patch_size
    h, w = image.shape[-2] // p * p, image.shape[-1] // p * p
    device = next(model.parameters()).device
    x = image[:, :h, :w].to(device).float().div(255.0).unsqueeze(0)
    with torch.no_grad():
        return model.predict(x)[0].float().cpu()


def _check_record(out: Path, record: dict) -> None:
    """Write `maps.json`, or check that the maps already in `out` are of the same kind."""
    path = out / "maps.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise DsmixError("unreadable maps.json; remove it or choose another --out", path) from None
        if old != record:
            raise DsmixError(f"holds maps of another kind ({old}); this run would write {record}: "
                             f"choose another --out", path)
        return
    if any(out.glob("*.npy")):  # maps from before maps.json existed: assume ground truth
        if record["source"] != "gt":
            raise DsmixError("already holds ground-truth maps; choose another --out for predicted maps", out)
    write_json(path, record)
