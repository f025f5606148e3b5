"""Crop views of an image for probing and scoring, and their features through a frozen encoder.

The DSMix probe (the `paper` view set): training uses a random 224x224 crop plus a random
horizontal flip; testing averages the predictions over five 224x224 crops (the four corners and
the centre). An image whose shorter side is below the crop size is first resized up (bilinear,
aspect ratio kept) so that its shorter side equals the crop size (FLIVE's small images).

The ARNIQA view set adds the same five crops of the image downscaled by 2 (`half_views`): the
half-size image is `(W // 2, H // 2)`, bicubic with antialiasing, and a crop that does not fit
in it is filled with zeros where it falls outside (as ARNIQA crops its half-scale image).

A dataset whose protocol fixes an image size (KonIQ-10k: 512x384) is resized to it on load
(`resize_to`, W x H, bilinear with antialiasing) before any crop.

`ViewDataset` yields, per image, a stack of uint8 views: `train_views` random crop+flip views
(each drawn from `generator(seed, *key, index, k)`, so the same image gets the same views however
many workers load it), then, when asked, the five test crops, then the five half-scale crops. An
unreadable image yields no views and the reason, so one bad file never stops a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from dsmix_cli.engine.runtime import generator
from dsmix_cli.errors import ImageReadError
from dsmix_cli.imageio import load_rgb_tensor

NUM_TEST_VIEWS = 5


def resize_min_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 image (3, H, W) up so that min(H, W) == size; larger images are returned as is.

    Bilinear with antialiasing, the aspect ratio kept (the long side is rounded).
    """
    h, w = image.shape[-2:]
    short = min(h, w)
    if short >= size:
        return image
    scale = size / short
    new_h, new_w = (size, max(size, round(w * scale))) if h <= w else (max(size, round(h * scale)), size)
    out = F.interpolate(image.unsqueeze(0).float(), size=(new_h, new_w), mode="bilinear",
                        align_corners=False, antialias=True)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def resize_exact(image: torch.Tensor, size_wh: tuple[int, int] | None) -> torch.Tensor:
    """Resize a uint8 image (3, H, W) to `size_wh` = (W, H), bilinear with antialiasing; an image
    already of that size (or `size_wh=None`) is returned as is."""
    if size_wh is None:
        return image
    w, h = int(size_wh[0]), int(size_wh[1])
    if tuple(image.shape[-2:]) == (h, w):
        return image
    out = F.interpolate(image.unsqueeze(0).float(), size=(h, w), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def downscale_half(image: torch.Tensor) -> torch.Tensor:
    """The image at half scale: (3, H, W) -> (3, H // 2, W // 2), bicubic with antialiasing (as
    Pillow's `resize((W // 2, H // 2))`, which ARNIQA, CONTRIQUE and Re-IQA use)."""
    h, w = image.shape[-2:]
    out = F.interpolate(image.unsqueeze(0).float(), size=(max(1, h // 2), max(1, w // 2)), mode="bicubic",
                        align_corners=False, antialias=True)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def five_crops_padded(image: torch.Tensor, size: int) -> torch.Tensor:
    """Five size x size windows (top-left, top-right, bottom-left, bottom-right, centre), zero
    where a window falls outside the image (ARNIQA's `center_corners_crop`).

    The corners sit at the image's corners; the centre window starts at `(H // 2 - size // 2,
    W // 2 - size // 2)`. Same order as `five_crops`, so crop k of both scales shows the same place.
    """
    h, w = image.shape[-2:]
    padded = F.pad(image, (size, size, size, size))  # zeros around, so every window is in bounds
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (h // 2 - size // 2, w // 2 - size // 2)]
    return torch.stack([padded[..., t + size:t + 2 * size, l + size:l + 2 * size] for t, l in corners])


def random_crop_flip(image: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly placed size x size crop, horizontally flipped with probability 1/2.

    Args:
        image: (3, H, W) with H, W >= size.
        size: the crop side.
        gen: the source of the crop position and the flip.
    """
    h, w = image.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    crop = image[..., top:top + size, left:left + size]
    if bool(torch.rand((), generator=gen) < 0.5):
        crop = crop.flip(-1)
    return crop


def five_crops(image: torch.Tensor, size: int) -> torch.Tensor:
    """The four corner crops and the centre crop, stacked (5, 3, size, size).

    Order: top-left, top-right, bottom-left, bottom-right, centre (torchvision's `five_crop`
    order; the centre offset is `round((H - size) / 2)`, as torchvision's `center_crop`).
    """
    h, w = image.shape[-2:]
    top_c, left_c = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top_c, left_c)]
    return torch.stack([image[..., t:t + size, l:l + size] for t, l in corners])


class ViewDataset(Dataset):
    """Images as stacks of uint8 crop views.

    Args:
        paths: the image files.
        size: the crop side.
        train_views: random crop+flip views per image (first in the stack).
        test_views: also append the five test crops.
        seed: base seed of the random views.
        key: extra generator keys (e.g. `("fresh", split, epoch)` for fresh crops each epoch).
        half_views: also append the five crops of the image at half scale (ARNIQA).
        resize_to: (W, H) every image is resized to first (a protocol's fixed size), or None.
    """

    def __init__(self, paths: Sequence[str | Path], size: int = 224, train_views: int = 0,
                 test_views: bool = True, seed: int = 0, key: tuple = ("train-view",),
                 half_views: bool = False, resize_to: tuple[int, int] | None = None):
        self.paths = [Path(p) for p in paths]
        self.size = int(size)
        self.train_views = int(train_views)
        self.test_views = bool(test_views)
        self.seed = seed
        self.key = tuple(key)
        self.half_views = bool(half_views)
        self.resize_to = tuple(int(v) for v in resize_to) if resize_to else None

    @property
    def views_per_image(self) -> int:
        return (self.train_views + (NUM_TEST_VIEWS if self.test_views else 0)
                + (NUM_TEST_VIEWS if self.half_views else 0))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        try:
            loaded = resize_exact(load_rgb_tensor(self.paths[index]), self.resize_to)
        except ImageReadError as exc:
            return index, torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8), str(exc)
        image = resize_min_side(loaded, self.size)
        views = [random_crop_flip(image, self.size, generator(self.seed, *self.key, index, k))
                 for k in range(self.train_views)]
        stack = torch.stack(views) if views else image.new_zeros(0, 3, self.size, self.size)
        if self.test_views:
            stack = torch.cat([stack, five_crops(image, self.size)])
        if self.half_views:
            stack = torch.cat([stack, five_crops_padded(downscale_half(loaded), self.size)])
        return index, stack.contiguous(), ""


def collate_views(batch: list[tuple[int, torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(indices (B,), views of the readable images (B', V, 3, S, S), error per image ("" if fine))."""
    indices = torch.tensor([b[0] for b in batch], dtype=torch.long)
    good = [b[1] for b in batch if not b[2]]
    views = torch.stack(good) if good else torch.zeros(0, 0, 3, 1, 1, dtype=torch.uint8)
    return indices, views, [b[2] for b in batch]


@dataclass
class ViewFeatures:
    """Features of every view of every image: `features[i, v]` (N, V, D), and the read errors.

    Rows of unreadable images are zeros; `errors[i]` names the file and the reason ("" if fine).
    """

    features: torch.Tensor
    errors: list[str]

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([not e for e in self.errors], dtype=torch.bool)


def encode_views(encoder, dataset: ViewDataset, *, crops_per_batch: int = 32, workers: int = 0,
                 dtype: torch.dtype = torch.float32,
                 on_progress: Callable[[int], None] | None = None) -> ViewFeatures:
    """Run every view of every image through the frozen encoder once.

    Args:
        encoder: a `models.encoders.Encoder` (frozen, eval mode).
        dataset: the images and their views.
        crops_per_batch: crops per encoder forward pass (images per loader batch =
            crops_per_batch // views per image, at least 1).
        workers: data-loading processes (decoding and cropping run there).
        dtype: storage type of the cached features (float16 halves the memory of big sets).
        on_progress: called with the number of images done after each batch.
    """
    views = dataset.views_per_image
    per_batch = max(1, crops_per_batch // max(views, 1))
    loader = DataLoader(dataset, batch_size=per_batch, shuffle=False, num_workers=workers,
                        collate_fn=collate_views)
    out = torch.zeros(len(dataset), views, encoder.feature_dim, dtype=dtype)
    errors = [""] * len(dataset)
    for indices, crops, errs in loader:
        for i, e in zip(indices.tolist(), errs):
            errors[i] = e
        good = indices[torch.tensor([not e for e in errs], dtype=torch.bool)]
        if len(good):
            feats = encoder.features(crops.flatten(0, 1)).view(len(good), views, -1)
            out[good] = feats.to("cpu", dtype)
        if on_progress is not None:
            on_progress(len(indices))
    return ViewFeatures(out, errors)


def count_other_sizes(paths: Sequence[str | Path], size_wh: tuple[int, int]) -> int:
    """How many of the images are not `size_wh` = (W, H), read from their headers (no decoding);
    unreadable files are not counted (they are reported when decoded)."""
    from PIL import Image

    want = (int(size_wh[0]), int(size_wh[1]))
    other = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                other += im.size != want
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return other
