"""The deterministic distortions against independent computations of the MATLAB semantics
(NumPy/SciPy/Pillow/colorsys written here, not the package's own helpers)."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image
from scipy.interpolate import CubicSpline

from dsmix_cli.distortions import distort, level_value
from dsmix_cli.distortions._colorspace import hsv2rgb, lab2rgb, rgb2hsv, rgb2lab, rgb2ycbcr, ycbcr2rgb
from dsmix_cli.distortions._matlab import fspecial_disk, fspecial_motion, spline_coefficients, ppval
from dsmix_cli.distortions.denoise import wiener_denoise
from dsmix_cli.distortions.spatial import _nearest_index
from dsmix_cli.distortions.tone import multithresh


def reference_image(h=96, w=128, seed=0) -> np.ndarray:
    """An 8-bit-valued HxWx3 float image in [0.1, 0.9] (so mapmm has work to do)."""
    rng = np.random.default_rng(seed)
    low = rng.random((6, 8, 3))
    img = ndi.zoom(low, (h / 6, w / 8, 1), order=3)[:h, :w]
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(10):
        cy, cx, r = rng.random() * h, rng.random() * w, 3 + rng.random() * 15
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.random(3)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round((0.1 + 0.8 * img) * 255) / 255


def np_mapmm(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def to8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ours8(img: np.ndarray, t: int, level: int) -> np.ndarray:
    x = torch.from_numpy(img.transpose(2, 0, 1).copy()).float().unsqueeze(0)
    y = distort(x, t, level)
    return to8(y[0].permute(1, 2, 0).numpy())


def fspecial_gaussian_np(sigma: float) -> np.ndarray:
    size = 2 * math.ceil(2 * sigma) + 1
    r = (size - 1) // 2
    t = np.arange(-r, r + 1)
    h = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2))
    h[h < np.finfo(float).eps * h.max()] = 0
    return h / h.sum()


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_gaussian_blur_matches_imfilter_replicate(level):
    img = reference_image()
    h = fspecial_gaussian_np(level_value(1, level))
    a = np_mapmm(img)
    ref = np.stack([ndi.correlate(a[..., c], h, mode="nearest") for c in range(3)], axis=-1)
    expected = to8(np_mapmm(ref))
    assert psnr8(ours8(img, 1, level), expected) >= 40


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_mean_shift_matches_truncate(level):
    img = reference_image()
    expected = to8(np_mapmm(np.clip(np_mapmm(img) + level_value(18, level), 0, 1)))
    assert psnr8(ours8(img, 18, level), expected) >= 40


@pytest.mark.parametrize("level", [1, 3, 5])
def test_jpeg_matches_pillow_at_same_quality(level):
    img = reference_image()
    buf = io.BytesIO()
    Image.fromarray(to8(np_mapmm(img))).save(buf, format="JPEG", quality=int(level_value(10, level)))
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64) / 255
    expected = to8(np_mapmm(decoded))
    assert psnr8(ours8(img, 10, level), expected) >= 34


def test_lens_blur_kernel_is_the_disk_area():
    # MATLAB fspecial('disk', 1) printed to 4 decimals
    k1 = fspecial_disk(1)
    expected = np.array([[0.0251, 0.1453, 0.0251], [0.1453, 0.3183, 0.1453], [0.0251, 0.1453, 0.0251]])
    np.testing.assert_allclose(k1, expected, atol=6e-5)
    # radius 4: area of the disk in each pixel by supersampling (independent of the closed form)
    n = 200
    s = (np.arange(9 * n) + 0.5) / n - 4.5
    inside = (s[:, None] ** 2 + s[None, :] ** 2 <= 16).reshape(9, n, 9, n).mean(axis=(1, 3))
    np.testing.assert_allclose(fspecial_disk(4), inside / inside.sum(), atol=3e-4)


def test_motion_kernel_is_a_normalised_line():
    np.testing.assert_allclose(fspecial_motion(9, 0), np.full((1, 9), 1 / 9), atol=1e-12)
    np.testing.assert_allclose(fspecial_motion(5, 90), np.full((5, 1), 1 / 5), atol=1e-9)
    assert fspecial_motion(1, 37).shape == (1, 1)
    for theta in (13, 45, 120, 180):
        k = fspecial_motion(10, theta)
        assert k.sum() == pytest.approx(1, abs=1e-9) and (k >= 0).all()
        np.testing.assert_allclose(k, np.rot90(k, 2), atol=1e-12)  # symmetric about the centre
    # MATLAB fspecial('motion', 3, 45) printed to 4 decimals: bottom-left to top-right
    expected = [[0, 0.0754, 0.1883], [0.0754, 0.3215, 0.0754], [0.1883, 0.0754, 0]]
    np.testing.assert_allclose(fspecial_motion(3, 45), expected, atol=6e-5)


def test_contrast_curve_is_matlab_not_a_knot_spline():
    xk = [0, 0.3, 0.5, 0.7, 1]
    for a in (0.3, 0.15, 0, -0.4, -0.6):
        yk = [0, 0.25 - a / 4, 0.5, 0.75 + a / 4, 1]
        t = np.linspace(0, 1, 257)
        ours = ppval(xk, spline_coefficients(xk, yk), torch.from_numpy(t)).numpy()
        np.testing.assert_allclose(ours, CubicSpline(xk, yk, bc_type="not-a-knot")(t), atol=1e-12)


def test_three_point_spline_is_the_parabola():
    c = 0.5 + 1.1 / 2
    t = np.linspace(0, 1, 101)
    ours = ppval([0, 0.5, 1], spline_coefficients([0, 0.5, 1], [0, c, 1]), torch.from_numpy(t)).numpy()
    np.testing.assert_allclose(ours, (2 - 4 * c) * t ** 2 + (4 * c - 1) * t, atol=1e-12)


def test_contrast_and_darken_follow_the_curves():
    img = reference_image()
    a = level_value(25, 4)
    xk, yk = [0, 0.3, 0.5, 0.7, 1], [0, 0.25 - a / 4, 0.5, 0.75 + a / 4, 1]
    expected = to8(np_mapmm(np.clip(CubicSpline(xk, yk, bc_type="not-a-knot")(np_mapmm(img)), 0, 1)))
    assert psnr8(ours8(img, 25, 4), expected) >= 40
    d = level_value(17, 5)
    c = 0.5 - d / 2
    u = np_mapmm(img)
    expected = to8(np_mapmm(np.clip((2 - 4 * c) * u ** 2 + (4 * c - 1) * u, 0, 1)))
    assert psnr8(ours8(img, 17, 5), expected) >= 40


def test_lab_against_published_values():
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0.5, 0.5, 0.5]]).T.reshape(1, 3, 5, 1)
    lab = rgb2lab(rgb)[0, :, :, 0].T.numpy()
    expected = [[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86],
                [100, 0, 0], [53.39, 0, 0]]
    np.testing.assert_allclose(lab, expected, atol=0.02)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab2rgb(rgb2lab(x.double())), x.double(), atol=1e-9)


def test_hsv_matches_colorsys():
    x = torch.rand(1, 3, 6, 7, generator=torch.Generator().manual_seed(1)).double()
    hsv = rgb2hsv(x)
    for i in range(6):
        for j in range(7):
            h, s, v = colorsys.rgb_to_hsv(*x[0, :, i, j].tolist())
            np.testing.assert_allclose(hsv[0, :, i, j].numpy(), [h, s, v], atol=1e-12)
    assert torch.allclose(hsv2rgb(hsv), x, atol=1e-12)


def test_ycbcr_is_bt601_studio_range():
    rgb = torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1).double()
    np.testing.assert_allclose(rgb2ycbcr(rgb).flatten().numpy() * 255, [235, 128, 128], atol=1e-3)
    np.testing.assert_allclose(rgb2ycbcr(rgb * 0).flatten().numpy() * 255, [16, 128, 128], atol=1e-9)
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2)).double()
    assert torch.allclose(ycbcr2rgb(rgb2ycbcr(x)), x, atol=1e-12)


def test_noise_statistics_follow_imnoise():
    x = torch.full((1, 3, 64, 64), 0.5)
    g = torch.Generator().manual_seed(0)
    y = distort(x, 11, 5, g, mapmm=False)  # variance 0.01
    assert (y - x).std().item() == pytest.approx(0.1, rel=0.05)
    y = distort(x, 13, 5, g, mapmm=False)  # salt & pepper, density 0.03, per element
    changed = (y != x)
    assert changed.float().mean().item() == pytest.approx(0.03, rel=0.2)
    assert set(y[changed].unique().tolist()) <= {0.0, 1.0}
    y = distort(x, 14, 5, g, mapmm=False)  # speckle: uniform n with variance 0.05
    n = ((y - x) / x).flatten()
    assert n.var().item() == pytest.approx(0.05, rel=0.05)
    assert n.abs().max().item() <= math.sqrt(3 * 0.05) + 1e-6


def test_wiener_substitute_matches_wiener2():
    rng = np.random.default_rng(0)
    a = rng.random((20, 24))
    nv = 0.02
    mean = ndi.uniform_filter(a, 5, mode="nearest")
    var = ndi.uniform_filter(a * a, 5, mode="nearest") - mean ** 2
    expected = mean + np.maximum(var - nv, 0) / np.maximum(var, nv) * (a - mean)
    ours = wiener_denoise(torch.from_numpy(a).view(1, 1, 20, 24), torch.tensor([nv]), 2)
    np.testing.assert_allclose(ours[0, 0].numpy(), expected, atol=1e-10)


def test_multithresh_is_otsu_optimum():
    rng = np.random.default_rng(3)
    vals = np.concatenate([rng.normal(m, 0.04, 300) for m in (0.15, 0.5, 0.8)]).clip(0, 1)
    bins = np.round(vals * 255).astype(int)
    hist = np.bincount(bins, minlength=256).astype(float)
    lev = np.arange(256)

    def between(t1, t2):  # sum over classes of w * mu^2 (maximised by Otsu)
        total = 0.0
        for lo, hi in ((0, t1), (t1 + 1, t2), (t2 + 1, 255)):
            w = hist[lo:hi + 1].sum()
            if w > 0:
                total += (hist[lo:hi + 1] * lev[lo:hi + 1]).sum() ** 2 / w
        return total

    best = max(((between(a, b), a, b) for a in range(255) for b in range(a + 1, 255)))
    x = torch.from_numpy(vals).view(1, 1, 1, -1)
    t = multithresh(x, 2)[0].tolist()
    assert between(*t) == pytest.approx(best[0], rel=1e-12)


def test_pixelate_nearest_indices():
    # MATLAB imresize nearest, scale 1/2 on 4 pixels: u = 2x - 0.5 -> rows 2 and 4 (1-based)
    assert _nearest_index(2, 4, 0.5, torch.device("cpu")).tolist() == [1, 3]
    # and back up by 2: u = x/2 + 0.25 -> 1, 1, 2, 2 (1-based)
    assert _nearest_index(4, 2, 2.0, torch.device("cpu")).tolist() == [0, 0, 1, 1]


def test_color_quantization_uses_at_most_n_colours():
    img = reference_image(48, 64)
    for level in (1, 5):
        out = ours8(img, 6, level)
        # mapmm after can merge colours, never add any
        assert len(np.unique(out.reshape(-1, 3), axis=0)) <= level_value(6, level)
