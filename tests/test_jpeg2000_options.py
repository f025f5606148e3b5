"""`benchmarks/jpeg2000_options.py`: its encoding choice, and the ratio it reads off a PSNR curve
(checked against a curve whose inverse is known in closed form)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark_modules import benchmark_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("jpeg2000_options.py") as module:
        yield module


def test_ratio_read_off_a_log_linear_curve(bench):
    # p(r) = 50 - 4 ln r is linear in ln r, so log interpolation between grid points is exact
    curve = [(float(r), 50 - 4 * math.log(r)) for r in bench.GRID]
    for target in (38.0, 31.5, 27.25, 24.0):
        want = math.exp((50 - target) / 4)
        assert bench._ratio_for(target, curve) == pytest.approx(want, rel=1e-9)
        assert bench._interp(curve, want) == pytest.approx(target, abs=1e-9)
    assert bench._ratio_for(60.0, curve) is None  # above the curve: no ratio reaches it
    assert math.isnan(bench._interp(curve, 5000.0))


def _psnr(a: Image.Image, data: bytes) -> float:
    b = Image.open(io.BytesIO(data)).convert("RGB")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return 10 * math.log10(255 ** 2 / (d ** 2).mean())


def test_encodings_type9_and_the_colour_transform(bench):
    from dsmix_cli.distortions import compression

    demo = sorted((ROOT / "dsmix_cli" / "assets" / "demo").glob("*.png"))
    if not demo:
        pytest.skip("no demo images in this checkout")
    im = Image.open(demo[0]).convert("RGB").resize((128, 96))
    assert bench.save(im, [45.0]) == compression._jpeg2000_save(im, [45.0])  # mct=0 is type 9's encoding
    plain, mct = bench.save(im, [16.0]), bench.save(im, [16.0], mct=1)
    budget = 128 * 96 * 3 / 16
    assert abs(len(plain) - budget) < 0.1 * budget and abs(len(mct) - budget) < 0.1 * budget
    assert plain != mct and _psnr(im, mct) > _psnr(im, plain)  # same bytes, less error: a milder level
