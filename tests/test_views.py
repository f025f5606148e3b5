"""Crop views: five-crop against torchvision, random crops and flips, small images, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dsmix_cli.engine.runtime import generator
from dsmix_cli.evaluation.views import (ViewDataset, collate_views, five_crops, random_crop_flip,
                                        resize_min_side)


def _image(h, w, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("h,w,size", [(40, 50, 24), (41, 64, 24), (24, 24, 24), (37, 30, 11)])
def test_five_crops_match_torchvision(h, w, size):
    img = _image(h, w)
    ours = five_crops(img, size)
    theirs = torch.stack(TF.five_crop(img, [size, size]))  # tl, tr, bl, br, centre
    assert ours.shape == (5, 3, size, size)
    assert torch.equal(ours, theirs)


def test_five_crops_corners_by_hand():
    img = torch.arange(6 * 8, dtype=torch.int64).view(1, 6, 8)
    crops = five_crops(img, 4)
    assert crops[0, 0, 0, 0] == 0            # top-left pixel of the image
    assert crops[1, 0, 0, -1] == 7           # top-right
    assert crops[2, 0, -1, 0] == 5 * 8       # bottom-left
    assert crops[3, 0, -1, -1] == 6 * 8 - 1  # bottom-right
    assert crops[4, 0, 0, 0] == 1 * 8 + 2    # centre offset (1, 2)


def test_random_crop_flip_is_a_window_of_the_image_and_flips_half_the_time():
    h, w, size = 30, 40, 16
    img = torch.arange(h * w, dtype=torch.int64).view(1, h, w)  # every pixel names its position
    flips, positions = 0, set()
    for k in range(400):
        crop = random_crop_flip(img, size, generator(0, "t", k))
        flipped = bool(crop[0, 0, 0] > crop[0, 0, -1])
        window = crop.flip(-1) if flipped else crop
        t, l = divmod(int(window[0, 0, 0]), w)
        assert torch.equal(window, img[:, t:t + size, l:l + size])
        flips += flipped
        positions.add((t, l))
    assert 150 < flips < 250  # Binomial(400, 1/2): far outside means the flip is broken
    ts = {t for t, _ in positions}
    ls = {l for _, l in positions}
    assert ts == set(range(h - size + 1)) and ls == set(range(w - size + 1))  # every offset reachable
    assert torch.equal(random_crop_flip(img, size, generator(0, "t", 3)), random_crop_flip(img, size, generator(0, "t", 3)))


def test_small_images_are_resized_up_keeping_aspect():
    img = _image(20, 50)
    out = resize_min_side(img, 32)
    assert out.shape == (3, 32, 80) and out.dtype == torch.uint8
    tall = resize_min_side(_image(60, 10), 32)
    assert tall.shape == (3, 192, 32)
    big = _image(40, 40)
    assert resize_min_side(big, 32) is big  # never resized down
    flat = torch.full((3, 10, 12), 77, dtype=torch.uint8)
    assert (resize_min_side(flat, 30) == 77).all()  # a constant image stays constant


def test_view_dataset_stack_and_unreadable(tmp_path):
    good = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    ds = ViewDataset([good, bad, tmp_path / "missing.png"], size=24, train_views=3, test_views=True, seed=1)
    assert ds.views_per_image == 8
    idx, views, err = ds[0]
    assert err == "" and views.shape == (8, 3, 24, 24)
    # the last five are the five test crops of the resized image (20x30 -> 24x36)
    img = torch.from_numpy(np.array(Image.open(good).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(views[3:], five_crops(resize_min_side(img, 24), 24))
    assert torch.equal(ds[0][1], views)  # deterministic per (seed, index)
    _, v1, e1 = ds[1]
    _, v2, e2 = ds[2]
    assert v1.shape[0] == 0 and str(bad) in e1 and "not an image" in e1
    assert "file not found" in e2
    indices, stacked, errors = collate_views([ds[0], ds[1], ds[2]])
    assert indices.tolist() == [0, 1, 2] and stacked.shape == (1, 8, 3, 24, 24) and errors[0] == ""
