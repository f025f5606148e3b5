"""On the fly, a crop is distorted as its whole image is (`--rescale image`): checked against
"distort the whole image, then crop" for the deterministic types 1, 2, 10, 16, 18, 22 and 24.

Two claims, two tolerances:

1. The plumbing is exact. Given the one thing a crop cannot know, the range [a, b] of the whole
   image after the distortion and before the dispatcher's second min-max rescale, the crop path
   (whole-image range and histogram from the dataset, the crop, the flip after the distortion)
   reproduces the whole image's pixels away from the crop border, to float rounding (1e-5).
2. In place of [a, b] the step uses [a0, b0] = `crop_out_range`: [fn(0), fn(1)] for the pointwise
   tone types (18 here), [0, 1] for the others. The second rescale maps [a, b] onto [0, 1], the
   crop maps [a0, b0] there instead; both are linear in the value, so at any pixel the gap is at
   most max(|a - a0|, |b0 - b|) / (b0 - a0), reached at the ends. That bound is 0 for the types
   whose whole result spans [a0, b0] (10, 18, 22, 24 here: exact) and a few hundredths for blur
   and brightening; the per-crop rescale (`--rescale crop`) is far outside it.

"Away from the border" is the filter's reach (kernel radius), where a crop's replicate padding
differs from the whole image's neighbours: 10 px for Gaussian blur (sigma 5, 21 taps), 8 px for
the lens blur (radius 8), 6 px for the sharpening (13 taps), 8 px for JPEG (the crops are taken
at offsets on the 16-pixel block grid), 0 for the pointwise types 16, 18 and 22.
"""

from __future__ import annotations

import pytest
import torch

from dsmix_cli.data.references import ReferenceCropDataset, collate_on_the_fly
from dsmix_cli.distortions import TYPES, crop_out_range, distort, distort_batch, mapmm, whole_image_context
from dsmix_cli.imageio import save_image_atomic, to_float
from dsmix_cli.stages.qep_batches import distort_on_the_fly

CROP = 48
MARGIN = {1: 10, 2: 8, 10: 8, 16: 0, 18: 0, 22: 0, 24: 6}


def _reference(path):
    """A textured image whose range is [0.1, 0.85] (so the first rescale matters), its extremes on
    small features (so a blur shrinks the whole image's range: the second rescale matters too)."""
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 112), torch.linspace(0, 1, 120), indexing="ij")
    img = torch.stack([0.3 + 0.2 * torch.sin(6 * xx + c) * torch.cos(5 * yy - c) for c in (0.0, 1.0, 2.0)])
    img = img + 0.05 * torch.rand(img.shape, generator=g)
    img[:, 20:23, 90:93] = 0.85
    img[:, 70:72, 10:12] = 0.1
    img = img.clamp(0.1, 0.85)
    save_image_atomic(img, path)
    return path


def _items(ds: ReferenceCropDataset, want: int, aligned: bool) -> list[dict]:
    """The first `want` items of the dataset (on the 16-pixel grid when `aligned`), both flips."""
    found, flips = [], set()
    for i in range(20000):
        it = ds[(0, i)]
        top, left, flip = it["offset"].tolist()
        if aligned and (top % 16 or left % 16):
            continue
        if len(found) < want - 1 or flip not in flips or len(flips) == 2:
            found.append(it)
            flips.add(flip)
        if len(found) == want and len(flips) == 2:
            return found
    raise AssertionError("not enough crops found")


def _whole_then_crop(whole: torch.Tensor, it: dict, out: torch.Tensor) -> torch.Tensor:
    top, left, flip = it["offset"].tolist()
    c = out[:, top:top + CROP, left:left + CROP]
    return c.flip(-1) if flip else c


@pytest.mark.parametrize("t", sorted(MARGIN))
def test_on_the_fly_crops_equal_the_whole_image_distorted_then_cropped(tmp_path, t):
    path = _reference(tmp_path / "ref.png")
    whole_u8 = ReferenceCropDataset([path], CROP, seed=1)._whole(0, need_histogram=False)[0]
    whole = to_float(whole_u8)[None]
    m = MARGIN[t]
    inner = (slice(None), slice(None), slice(m, CROP - m), slice(m, CROP - m))
    for level in (1, 3, 5):
        ds = ReferenceCropDataset([path], CROP, seed=level, types=[t], levels=[level], rescale="image")
        ds.cache()
        items = _items(ds, 4, aligned=t == 10)
        batch = collate_on_the_fly(items)
        ref = to_float(batch["ref"])
        expected = torch.stack([_whole_then_crop(whole, it, distort(whole, t, level)[0]) for it in items])

        # 1. exact, given the whole distorted image's range before the second rescale
        value_range, hist = whole_image_context(whole_u8[None])
        assert torch.allclose(batch["in_range"], value_range.expand(len(items), 2))
        z = TYPES[t].fn(mapmm(whole, value_range), [TYPES[t].levels[level - 1]], None,
                        **({"histogram": hist} if TYPES[t].histogram else {}))
        a, b = float(z.min()), float(z.max())
        flipped = batch["offset"][:, 2].bool()
        src = torch.where(flipped.view(-1, 1, 1, 1), ref.flip(-1), ref)  # distorted unflipped, as the step does
        exact = distort_batch(src, batch["type"], batch["level"], in_range=batch["in_range"],
                              histogram=batch["histogram"], out_range=torch.tensor([[a, b]] * len(items)))
        exact = torch.where(flipped.view(-1, 1, 1, 1), exact.flip(-1), exact)
        tol = 1e-5
        assert (exact - expected)[inner].abs().max() <= tol, (t, level)

        # 2. the step's own path: crop_out_range for the unknown range, within the bound it implies
        got = distort_on_the_fly(batch, ref, torch.Generator().manual_seed(0))
        a0, b0 = crop_out_range([t], [level])[0].tolist()
        bound = max(abs(a - a0), abs(b0 - b)) / (b0 - a0)
        assert (got - expected)[inner].abs().max() <= bound + tol, (t, level, bound)
        if t in (10, 18, 22, 24):
            assert bound == pytest.approx(0.0, abs=1e-6)  # the whole result spans [a0, b0]: exact

    # the per-crop rescale is far from the whole image (the contrast cue it used to give)
    ds = ReferenceCropDataset([path], CROP, seed=3, types=[t], levels=[3], rescale="crop")
    ds.cache()
    items = _items(ds, 4, aligned=t == 10)
    batch = collate_on_the_fly(items)
    assert "in_range" not in batch
    own = distort_on_the_fly(batch, to_float(batch["ref"]), torch.Generator().manual_seed(0))
    expected = torch.stack([_whole_then_crop(whole, it, distort(whole, t, 3)[0]) for it in items])
    assert (own - expected)[inner].abs().mean() > 0.02


def test_cpu_types_in_the_workers_use_the_whole_image_range_too(tmp_path):
    """Colour quantization (Pillow, in the loader workers) gets the same first rescale."""
    path = _reference(tmp_path / "ref.png")
    img = ReferenceCropDataset([path], CROP, seed=1)._whole(0, need_histogram=False)[0]
    value_range = whole_image_context(img[None])[0]
    ds = ReferenceCropDataset([path], CROP, seed=2, types=[6], levels=[1], cpu_types=frozenset({6}), rescale="image")
    for i in range(2):  # an unflipped and a flipped crop
        it = ds[(0, i)]
        flip = bool(it["offset"][2])
        src = it["ref"].flip(-1) if flip else it["ref"]
        want = distort(to_float(src)[None], 6, 1, in_range=value_range, out_range=torch.tensor([[0.0, 1.0]]))[0]
        want = (want * 255).round().to(torch.uint8)
        assert torch.equal(it["dist"], want.flip(-1) if flip else want)
    own = ReferenceCropDataset([path], CROP, seed=2, types=[6], levels=[1], cpu_types=frozenset({6}), rescale="crop")
    assert not torch.equal(own[(0, 0)]["dist"], it["dist"])
