"""Reference images for on-the-fly QEP: listing, the held-out split, and random crops.

`ReferenceCropDataset` serves random crops (and flips) of reference images keyed by
`(epoch, index)`, so a resumed run sees exactly the crops it would have seen. On the fly it
also draws each crop's distortion type and level, and carries what the crop needs to know of
its whole image to be distorted as the MATLAB dispatcher distorts whole images (`rescale`):

* `image` (default): the whole reference's value range for the first min-max rescale, and the
  whole image's value histogram for the types that threshold it (22). The second rescale uses
  `distortions.crop_out_range`: the range of the whole *distorted* image is unknown to a crop;
  it is [fn(0), fn(1)] for the pointwise tone types and [0, 1] (or close to it) for the others
  (docs/qep.md, "The on-the-fly rescale", has the measured gap per type).
* `crop`: each crop is rescaled by its own range, before and after (the behaviour before the
  option existed; it stretches every distorted crop to the full [0, 1], a contrast cue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, default_collate

from dsmix_cli.engine.data import split_keys
from dsmix_cli.engine.runtime import generator, trim_memory
from dsmix_cli.errors import DatasetError, DsmixError
from dsmix_cli.imageio import is_image_file, load_rgb_tensor, to_float, to_uint8

RESCALE_MODES = ("image", "crop")


def list_references(folder: Path, option: str = "--refs", info: Callable[[str], None] = lambda _m: None) -> list[Path]:
    """The image files under `folder` (recursively, sorted, each file once, links to folders not
    followed: `paths.walk_files`; what is skipped goes to `info`); a `DatasetError` naming
    `option` when there are none."""
    from dsmix_cli.paths import walk_files

    if not Path(folder).is_dir():
        raise DatasetError(f"{option}: not a folder", folder)
    walk = walk_files(Path(folder), is_image_file)
    for line in walk.skipped:
        info(line)
    if not walk.files:
        raise DatasetError(f"{option}: no image files found", folder)
    return sorted(walk.files)  # Path order: a resumed run keeps its references' order


def split_references(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded `val_fraction` of the references (as `pairs.split_by_reference` does).

    At least one reference is held out when `val_fraction > 0` and there are two or more, and at
    least one stays for training. Order within each part is kept.

    Returns:
        (training references, held-out references).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DsmixError(f"--val-fraction {val_fraction}: expected a value in [0, 1)")
    n = len(paths)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    order = torch.randperm(n, generator=generator(seed, "split-references")).tolist()
    held = set(order[:n_val])
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def load_reference(path: Path, crop_size: int, resize: int | None = None) -> torch.Tensor:
    """A reference as the crops see it: uint8 (3, H, W), its shorter side resized to `resize`
    (antialiased bilinear) when given, and resized up so that it is at least `crop_size`."""
    img = load_rgb_tensor(path)
    h, w = img.shape[-2:]
    target = max(resize or 0, crop_size) if resize or min(h, w) < crop_size else None
    if target is not None and min(h, w) != target:
        scale = target / min(h, w)
        size = (max(target, round(h * scale)), max(target, round(w * scale)))
        img = F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=scale < 1,
                            align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    return img


class ReferenceCropDataset(Dataset):
    """Random crops (and flips) of reference images, keyed by `(epoch, index)` for exact resume.

    Item i of an epoch is reference `i % len(paths)`; its crop and flip come from
    `generator(seed, "sample", epoch, i)`. An image smaller than the crop is first resized so
    that its shorter side equals the crop size; with `resize`, every reference is first resized
    so that its shorter side is `resize` pixels (the whole image is then that image).

    With `types`/`levels` (on-the-fly QEP) each item also draws its distortion type and level,
    uniformly, from the same generator, and carries `in_range` (2,) and `histogram` (256,) of
    its whole image under `rescale="image"` (see the module docstring). Types that only run on
    the CPU through Pillow (`cpu_types`: JPEG2000 and colour quantization) are applied right
    here, in the data-loader workers, so they never stall the training device; the item then
    carries the distorted 8-bit crop and `premade=True`. Every other type is applied batched on
    the training device in the training step (`stages.qep_batches.distort_on_the_fly`). `offset` is
    (top, left, flipped) of the crop; a flipped crop is distorted unflipped, then flipped.

    `cache()` decodes every reference once and keeps it in memory (call it before the loader
    starts its workers, which then share the decoded images).
    """

    def __init__(self, paths: list[Path], crop_size: int, seed: int, flip: bool = True,
                 epoch_size: int | None = None, types: list[int] | None = None,
                 levels: list[int] | None = None, cpu_types: frozenset[int] = frozenset(), *,
                 rescale: str = "image", resize: int | None = None):
        if rescale not in RESCALE_MODES:
            raise DsmixError(f"--rescale {rescale!r}: choose one of {', '.join(RESCALE_MODES)}")
        self.paths, self.crop, self.seed, self.flip = paths, crop_size, seed, flip
        self.size = epoch_size or len(paths)
        self.types, self.levels, self.cpu_types = types, levels, cpu_types
        self.rescale, self.resize = rescale, resize
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.size

    def _whole(self, index: int, need_histogram: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(image, (min, max), histogram or None) of reference `index`."""
        if index in self._cache:
            return self._cache[index]
        img = load_reference(self.paths[index], self.crop, self.resize)
        if need_histogram:
            from dsmix_cli.distortions import whole_image_context

            value_range, hist = whole_image_context(img[None])
            return img, value_range[0], hist[0]
        return img, torch.stack([img.amin(), img.amax()]).float() / 255.0, None

    def cache(self, on_progress: Callable[[int, int], None] | None = None) -> None:
        """Decode every reference once (with its whole-image range and histogram) and keep it."""
        for i in range(len(self.paths)):
            if i not in self._cache:
                self._cache[i] = self._whole(i, need_histogram=True)
                trim_memory()  # decoded files come and go, the images stay: keep the heap compact
            if on_progress is not None:
                on_progress(i + 1, len(self.paths))

    def __getitem__(self, key) -> dict:
        epoch, index = split_keys(key)
        g = generator(self.seed, "sample", epoch, index)
        ref_index = index % len(self.paths)
        # the draws keep the order they always had: crop, flip, then type and level
        img, value_range, hist = self._whole(ref_index, need_histogram=False)
        h, w = img.shape[-2:]
        top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
        crop = img[:, top:top + self.crop, left:left + self.crop]
        flipped = self.flip and bool(torch.rand(1, generator=g) < 0.5)
        if flipped:
            crop = crop.flip(-1)
        item = {"ref": crop.contiguous(), "offset": torch.tensor([top, left, int(flipped)])}
        if self.types is None:
            return item
        t = self.types[int(torch.randint(len(self.types), (1,), generator=g))]
        lv = self.levels[int(torch.randint(len(self.levels), (1,), generator=g))]
        item.update(type=t, level=lv, premade=t in self.cpu_types)
        kwargs = {}
        if self.rescale == "image":
            from dsmix_cli.distortions import HISTOGRAM_TYPES

            if hist is None and t in HISTOGRAM_TYPES:
                from dsmix_cli.distortions import whole_image_context

                hist = whole_image_context(img[None])[1][0]
            item["in_range"] = value_range.float()
            item["histogram"] = hist.float() if hist is not None else torch.zeros(256)
            from dsmix_cli.distortions import crop_out_range

            kwargs = {"in_range": item["in_range"][None], "out_range": crop_out_range([t], [lv]),
                      "histogram": item["histogram"][None]}
        if item["premade"]:  # the other types are distorted on the device, in the step
            from dsmix_cli.distortions import distort

            src = crop.flip(-1) if flipped else crop  # distorted unflipped, then flipped, as a whole image
            out = to_uint8(distort(to_float(src)[None], t, lv, generator=g, **kwargs)[0])
            item["dist"] = (out.flip(-1) if flipped else out).contiguous()
        return item


def collate_on_the_fly(items: list[dict]) -> dict:
    """Batch on-the-fly items: `dist` holds only the crops already distorted in the workers
    (rows where `premade` is True, in order), so the other rows cost no extra transfer."""
    batch = default_collate([{k: v for k, v in it.items() if k != "dist"} for it in items])
    premade = [it["dist"] for it in items if it["premade"]]
    batch["dist"] = torch.stack(premade) if premade else torch.empty(0, *items[0]["ref"].shape, dtype=torch.uint8)
    return batch
