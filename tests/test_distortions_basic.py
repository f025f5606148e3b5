"""Every distortion type: shape, range, dtype, determinism, severity against the level."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsmix_cli.distortions import (
    CPU_ONLY_TYPES, MONOTONE_TYPES, NUM_LEVELS, NUM_TYPES, RANDOM_TYPES, TYPE_NAMES, TYPES, distort,
    distort_batch, level_value,
)


def photo_like(h: int, w: int, seed: int = 0, grain: float = 0.02) -> torch.Tensor:
    """A (1, 3, h, w) image in [0, 1]: smooth colour shading, random discs and bars, mild grain."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.random((1, 3, 5, 6)))
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=True)[0].numpy()
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(12):
        cy, cx, r = rng.random() * h, rng.random() * w, 2 + rng.random() * h / 5
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if rng.random() < 0.5 else \
            (np.abs(yy - cy) < r / 3) & (np.abs(xx - cx) < r)
        img[:, mask] = rng.random((3, 1))
    img += grain * rng.standard_normal((3, h, w))
    img = (img - img.min()) / (img.max() - img.min())
    return torch.from_numpy(img).float().unsqueeze(0)


X = photo_like(48, 64)
X_BIG = photo_like(96, 128, seed=1, grain=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def departure(y: torch.Tensor, x: torch.Tensor) -> float:
    return (y - x).abs().mean().item()


def test_table_is_kadid():
    assert NUM_TYPES == 25 and NUM_LEVELS == 5 and len(TYPES) == 25
    assert TYPE_NAMES[1] == "gaussian_blur" and TYPE_NAMES[10] == "jpeg" and TYPE_NAMES[25] == "contrast_change"
    assert CPU_ONLY_TYPES == {6, 9}
    assert RANDOM_TYPES == {3, 5, 11, 12, 13, 14, 15, 19, 20, 23}
    assert level_value(9, 5) == 400 and level_value(10, 1) == 43 and level_value(18, 1) == 0.15
    assert all(len(t.levels) == 5 for t in TYPES.values())
    with pytest.raises(ValueError):
        distort(X, 26, 1)
    with pytest.raises(ValueError):
        distort(X, 1, 6)


@pytest.mark.parametrize("t", range(1, NUM_TYPES + 1))
def test_every_type_shape_range_dtype_determinism(t):
    x = X.repeat(2, 1, 1, 1)
    for level in (1, 5):
        y = distort(x, t, level, gen(3))
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
        assert torch.equal(y, distort(x, t, level, gen(3))), "same seed, same output"
        if t in RANDOM_TYPES and level == 5:
            assert not torch.equal(y, distort(x, t, level, gen(4))), "the generator drives the randomness"
    y64 = distort(x.double(), t, 3, gen(0), mapmm=False)
    assert y64.dtype == torch.float64 and y64.min() >= 0 and y64.max() <= 1


@pytest.mark.parametrize("t", sorted(MONOTONE_TYPES))
def test_level_5_departs_further_than_level_1(t):
    d1 = departure(distort(X, t, 1, gen(0)), X)
    d5 = departure(distort(X, t, 5, gen(0)), X)
    assert d5 > d1, (TYPE_NAMES[t], d1, d5)


@pytest.mark.parametrize("t", [1, 2, 9, 10, 21])
def test_severity_grows_level_by_level(t):
    d = [departure(distort(X_BIG, t, lv, gen(0)), X_BIG) for lv in range(1, 6)]
    assert all(b > a for a, b in zip(d, d[1:])), (TYPE_NAMES[t], d)


def test_signed_types_pass_through_identity():
    # mean shift level 3 (shift 0) is the identity on an image already spanning [0, 1]
    assert torch.allclose(distort(X, 18, 3), X, atol=1e-6)
    # Lab saturation level 1 (factor 1) changes nothing but rounding of the colour conversions
    assert torch.allclose(distort(X, 8, 1), X, atol=1e-4)


def test_batch_groups_by_type_and_matches_single_calls():
    x = torch.cat([X, photo_like(48, 64, seed=5), X, photo_like(48, 64, seed=6)])
    types = torch.tensor([11, 1, 20, 11])
    levels = torch.tensor([5, 4, 2, 1])
    gens = [gen(i) for i in range(4)]
    y = distort_batch(x, types, levels, gens)
    for i in range(4):
        single = distort(x[i:i + 1], int(types[i]), int(levels[i]), gen(i))
        assert torch.allclose(y[i:i + 1], single, atol=1e-6), i


def test_mapmm_switch():
    x = 0.25 + 0.5 * X  # range [0.25, 0.75]
    y_off = distort(x, 18, 3, mapmm=False)
    assert torch.allclose(y_off, x)
    y_on = distort(x, 18, 3)
    assert y_on.min().item() == pytest.approx(0.0, abs=1e-6) and y_on.max().item() == pytest.approx(1.0, abs=1e-6)


def test_mapmm_given_range_rescales_a_crop_as_its_whole_image():
    # Type 18 level 3 is the identity between the two rescales, so the result is
    # (x - lo) / (hi - lo) with the range given, not the crop's own.
    whole = 0.2 + 0.6 * X                      # range [0.2, 0.8]
    crop = whole[:, :, 4:12, 4:12]
    lo, hi = whole.amin(dim=(1, 2, 3)), whole.amax(dim=(1, 2, 3))
    rng = torch.stack([lo, hi], dim=1)
    y = distort(crop, 18, 3, in_range=rng, out_range=torch.tensor([[0.0, 1.0]] * crop.shape[0]))
    expected = ((crop - lo.view(-1, 1, 1, 1)) / (hi - lo).view(-1, 1, 1, 1)).clamp(0, 1)
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(distort(whole, 18, 3)[:, :, 4:12, 4:12], y, atol=1e-6)
    own = distort(crop, 18, 3)                 # the crop's own range stretches it further
    assert (own - y).abs().max() > 0.05
    batch = distort_batch(crop, torch.full((crop.shape[0],), 18), torch.full((crop.shape[0],), 3),
                          in_range=rng, out_range=torch.tensor([[0.0, 1.0]] * crop.shape[0]))
    assert torch.allclose(batch, y, atol=1e-6)
