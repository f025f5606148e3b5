"""The fast paths of the distortions against independent or slower computations of the same
thing: the filters against scipy, the shortcuts of types 7, 8, 12 and 24 against the colour-space
round trips they replace, the truncated-power curves against scipy's spline, JPEG2000's layered
encoding against Pillow's single-ratio one, and the generator rules that exact resume needs."""

from __future__ import annotations

import colorsys
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image
from scipy.interpolate import CubicSpline

from dsmix_cli.distortions import (
    NUM_TYPES, RANDOM_TYPES, _filters, _random, compression, distort, distort_batch, level_value, mapmm,
)
from dsmix_cli.distortions._colorspace import lab2rgb, rgb2lab, rgb2ycbcr, ycbcr2rgb
from dsmix_cli.distortions._matlab import curves, fspecial_disk, fspecial_motion, gaussian_kernel_1d, mapmm_

ROOT = Path(__file__).resolve().parents[1]


def image(seed: int = 0, h: int = 40, w: int = 56, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 5, 7, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=True)
    x = x + 0.2 * (torch.rand(batch, 1, h, w, generator=g) > 0.9)
    return ((x - x.amin()) / (x.amax() - x.amin())).float()


def scipy_correlate(x: torch.Tensor, k: np.ndarray) -> np.ndarray:
    a = x.double().numpy()
    return np.stack([[ndi.correlate(a[b, c], k, mode="nearest") for c in range(a.shape[1])]
                     for b in range(a.shape[0])])


@pytest.mark.parametrize("kernel", [fspecial_disk(2), fspecial_disk(6), fspecial_motion(7, 33),
                                    np.outer(gaussian_kernel_1d(9, 2.0), gaussian_kernel_1d(9, 2.0))])
def test_correlate_direct_and_fft_match_scipy(kernel, monkeypatch):
    x = image(1)
    expected = scipy_correlate(x, kernel)
    for passes in (10_000, 0):  # every tap as a pass, then the FFT
        monkeypatch.setattr(_filters, "FFT_PASSES", passes)
        np.testing.assert_allclose(_filters.correlate(x, kernel).numpy(), expected, atol=2e-6)


def test_correlate_separable_and_per_image_kernels():
    x = image(2, batch=2)
    g = gaussian_kernel_1d(21, 5.0)
    np.testing.assert_allclose(_filters.correlate_separable(x, g).numpy(), scipy_correlate(x, np.outer(g, g)),
                               atol=2e-6)
    ks = [fspecial_motion(5, 10), fspecial_motion(9, 120)]
    y = _filters.correlate(x, ks).numpy()
    for i in range(2):
        np.testing.assert_allclose(y[i], scipy_correlate(x[i:i + 1], ks[i])[0], atol=2e-6)


def test_mapmm_in_place_has_the_same_bits():
    x = image(3, batch=2) * 0.6 + 0.2
    ref = mapmm(x)
    assert torch.equal(mapmm_(x.clone()), ref)  # batched path
    assert torch.equal(mapmm_(x[:1].clone()), ref[:1])  # single-image CPU path
    rng = torch.tensor([[0.1, 0.9], [0.0, 0.5]])
    assert torch.equal(mapmm_(x[1:].clone(), rng[1:]), mapmm(x[1:], rng[1:]))
    flat = torch.full((1, 3, 4, 4), 0.3)  # a constant image is left as it is
    assert torch.equal(mapmm_(flat.clone()), flat)
    full = image(4)  # range exactly [0, 1]: untouched, and not copied unless asked
    assert mapmm_(full, copy=False) is full


def test_hsv_saturation_shortcut_is_the_hsv_round_trip():
    x = image(5, 12, 14)
    for level in range(1, 6):
        f = level_value(7, level)
        y = distort(x, 7, level, mapmm=False)[0].numpy()
        a = x[0].double().numpy()
        expected = np.zeros_like(a)
        for i in range(a.shape[1]):
            for j in range(a.shape[2]):
                h, s, v = colorsys.rgb_to_hsv(*a[:, i, j])
                expected[:, i, j] = colorsys.hsv_to_rgb(h, s * f, v)
        np.testing.assert_allclose(y, np.clip(expected, 0, 1), atol=2e-6)


def test_lab_shortcuts_are_the_lab_round_trips():
    x = image(6)
    for level in (2, 5):  # type 8: a*, b* scaled
        s = level_value(8, level)
        lab = rgb2lab(x.double())
        expected = lab2rgb(torch.cat([lab[:, :1], lab[:, 1:] * s], dim=1)).clamp(0, 1)
        assert torch.allclose(distort(x, 8, level, mapmm=False).double(), expected, atol=1e-4)
    for level in (1, 4):  # type 24: unsharp mask on L, Gaussian sigma 3 (13x13), replicate border
        a = level_value(24, level)
        lab = rgb2lab(x.double())
        light = lab[0, 0].numpy()
        g = gaussian_kernel_1d(13, 3.0)
        sharp = light + a * (light - ndi.correlate(light, np.outer(g, g), mode="nearest"))
        lab[0, 0] = torch.from_numpy(sharp)
        expected = lab2rgb(lab).clamp(0, 1)
        assert torch.allclose(distort(x, 24, level, mapmm=False).double(), expected, atol=1e-4)


def test_colour_noise_fused_path_is_the_ycbcr_round_trip():
    x = image(7)
    v = level_value(12, 5)
    y = distort(x, 12, 5, torch.Generator().manual_seed(3), mapmm=False)
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    expected = ycbcr2rgb((rgb2ycbcr(x.double()) + math.sqrt(v) * n.double()).clamp(0, 1)).clamp(0, 1)
    assert torch.allclose(y.double(), expected, atol=1e-5)


def test_truncated_power_curves_are_the_spline():
    t = torch.linspace(-0.05, 1.05, 501, dtype=torch.float64)
    for xk, yk in (([0, 0.3, 0.5, 0.7, 1], [0, 0.4, 0.5, 0.6, 1]), ([0, 0.5, 1], [0, 0.9, 1]),
                   ([0, 0.2, 0.45, 0.6, 0.8, 1], [0, 0.1, 0.5, 0.55, 0.9, 1])):
        spline = CubicSpline(xk, yk, bc_type="not-a-knot") if len(xk) > 3 else np.poly1d(np.polyfit(xk, yk, 2))
        np.testing.assert_allclose(curves(t, xk, yk).numpy(), np.clip(spline(t.numpy()), 0, 1), atol=1e-12)


def test_jpeg2000_levels_of_one_image_match_single_calls_and_pillow():
    x = image(8, 384, 512)
    assert compression.layered(384, 512) and not compression.layered(224, 224)
    levels = torch.arange(1, 6)
    together = distort_batch(x.expand(5, -1, -1, -1), torch.full((5,), 9), levels)
    for lv in range(1, 6):
        alone = distort(x, 9, lv)
        assert torch.equal(together[lv - 1:lv], alone), lv  # the same bits whatever else is asked
    # against Pillow's single-ratio encoding at the same ratio: the same severity
    ref8 = np.asarray(compression._to_pil(x[0]))
    for lv in (1, 3, 5):
        buf = io.BytesIO()
        Image.fromarray(ref8).save(buf, format="JPEG2000", quality_mode="rates",
                                   quality_layers=[level_value(9, lv)], irreversible=True)
        single = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)
        layered = np.asarray(compression.jpeg2000_roundtrip(Image.fromarray(ref8), level_value(9, lv)), np.float64)

        def psnr(a):
            return 10 * math.log10(255 ** 2 / max(np.mean((a - ref8) ** 2), 1e-12))

        assert abs(psnr(layered) - psnr(single)) < 0.3, lv
    # a crop-sized image: one single-layer encoding per ratio, exactly Pillow's
    small = image(9, 64, 80)
    small8 = np.asarray(compression._to_pil(small[0]))
    buf = io.BytesIO()
    Image.fromarray(small8).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[45.0], irreversible=True)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(compression.jpeg2000_roundtrip(Image.fromarray(small8), 45)), expected)


def test_colour_quantization_palette_has_n_colours_from_a_subsample():
    assert compression.palette_stride(384, 512) == 3 and compression.palette_stride(100, 100) == 1
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (384, 512, 3), dtype=np.uint8))
    for n in (64, 8):
        pal = np.array(compression.median_cut_palette(im, n).getpalette()).reshape(-1, 3)
        assert len(np.unique(pal, axis=0)) == n
        out = np.asarray(compression.quantize_colors(im, n))
        assert len(np.unique(out.reshape(-1, 3), axis=0)) <= n


@pytest.mark.parametrize("t", range(1, NUM_TYPES + 1))
def test_an_image_with_its_generator_ignores_its_batch_mates(t):
    x = torch.cat([image(9), image(10)])
    gens = [torch.Generator().manual_seed(20 + t), torch.Generator().manual_seed(40 + t)]
    both = distort_batch(x, torch.full((2,), t), torch.tensor([2, 4]), gens)
    second = distort(x[1:], t, 4, torch.Generator().manual_seed(40 + t))
    assert torch.allclose(both[1:], second, atol=1e-6)


@pytest.mark.parametrize("t", sorted(RANDOM_TYPES))
def test_a_single_generator_is_split_into_per_image_seeds(t):
    x = torch.cat([image(11), image(12)])
    g = torch.Generator().manual_seed(5)
    seeds = torch.randint(0, 2**63 - 1, (2,), generator=torch.Generator().manual_seed(5)).tolist()
    y = distort(x, t, 3, g)
    for i in range(2):
        alone = distort(x[i:i + 1], t, 3, torch.Generator().manual_seed(seeds[i]))
        assert torch.allclose(y[i:i + 1], alone, atol=1e-6), i
    assert _random.split(g, 1) == [g]


@pytest.mark.slow
def test_severity_of_types_6_and_9_on_the_demo_images_matches_the_record():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_severity
    finally:
        sys.path.pop(0)
    record = json.loads(bench_severity.RECORD.read_text(encoding="utf-8"))
    sets = bench_severity.image_sets(clive=Path("/nonexistent"))
    rows = bench_severity.compare(bench_severity.measure_all(sets), record)
    assert len(rows) == 10 and {r["set"] for r in rows} == {"demo"}
    bad = [r for r in rows if not r["pass"]]
    assert not bad, bad
