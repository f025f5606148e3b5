"""The DSM preview: each map on its own colour scale with a colour bar, each crop named."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from dsmix_cli.data.pairs import Pair
from dsmix_cli.dsm.preview import preview_image, preview_label
from dsmix_cli.plots import colormap

BRIGHTEST = tuple(int(c) for c in colormap(np.array([1.0]))[0])


def _one_hot_map(value: float, cell: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(1, 8, 8)
    m[0, cell[0], cell[1]] = value
    return m


def test_each_map_has_its_own_scale_so_a_faint_prediction_is_not_black():
    dist = torch.rand(1, 3, 64, 64)
    ref = torch.rand(1, 3, 64, 64)
    gt = _one_hot_map(0.2, (1, 1))
    pred = _one_hot_map(0.004, (5, 6))  # 50x fainter than the truth, as early in training
    img = np.asarray(preview_image(dist, ref, gt, pred, labels=["x.png: blur level 3"]))
    zoom = -(-112 // 64)
    cell_px = (8 * zoom) ** 2  # one map cell of a 64-pixel crop, upsampled without smoothing
    hot = (img == BRIGHTEST).all(-1).sum()
    # both maps reach the top of their own scales; on one shared scale only the truth's cell would
    assert hot >= 2 * cell_px


def test_each_map_has_a_colour_bar():
    h = 64 * -(-112 // 64)
    ramp = colormap(np.linspace(1.0, 0.0, h))  # what plots.colour_bar draws, top to bottom
    img = np.asarray(preview_image(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), _one_hot_map(0.2, (1, 1)),
                                   _one_hot_map(0.01, (2, 2))))
    columns = 0
    for y0 in range(img.shape[0] - h + 1):
        inner = img[y0 + 1:y0 + h - 1]  # the bar's outline is its first and last row
        columns += int((inner == ramp[None, 1:-1].transpose(1, 0, 2)).all(-1).all(0).sum())
    assert columns >= 2 * 10  # two bars of 12 columns (10 inside the outline)


def test_preview_label_names_the_file_the_distortion_and_the_crop(tmp_path):
    path = tmp_path / "I01_10_04.png"
    Image.new("RGB", (120, 80)).save(path)
    pair = Pair(path, tmp_path / "I01.png", 10, 4)
    assert preview_label(pair, 64) == "I01_10_04.png: jpeg level 4, centre 64x64 crop of 120x80"
    assert preview_label(pair, 96) == "I01_10_04.png: jpeg level 4, centre 96x96 crop of 120x80 resized up"
