"""DSMix (docs/method.md sections 3-4) against independent numpy computations written from the
equations of that page."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsmix_cli.dsmix import (LABEL_MODES, box_masks, mix, mix_weights, pristine_targets, sample_boxes,
                             soft_targets)
from dsmix_cli.errors import DsmixError

EPS = 1e-8


# ---------------------------------------------------------------- independent reference (numpy, loops)

def np_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with the half-pixel convention (align_corners=False), by hand."""
    in_h, in_w = a.shape

    def taps(n_out, n_in):
        res = []
        for i in range(n_out):
            src = (i + 0.5) * n_in / n_out - 0.5
            src = max(src, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            res.append((i0, i1, src - i0))
        return res

    out = np.zeros((out_h, out_w))
    for i, (y0, y1, fy) in enumerate(taps(out_h, in_h)):
        for j, (x0, x1, fx) in enumerate(taps(out_w, in_w)):
            top = (1 - fx) * a[y0, x0] + fx * a[y0, x1]
            bot = (1 - fx) * a[y1, x0] + fx * a[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bot
    return out


def np_visible(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """(K, H, W) masks of one sample: each pixel belongs to the last box covering it, else the base."""
    owner = np.zeros((h, w), dtype=int)
    for j, (y0, x0, y1, x1) in enumerate(boxes, start=1):
        for y in range(h):
            for x in range(w):
                if y0 <= y < y1 and x0 <= x < x1:
                    owner[y, x] = j
    return np.stack([(owner == k).astype(float) for k in range(len(boxes) + 1)])


def np_weights(visible: np.ndarray, dsm: np.ndarray, mode: str) -> np.ndarray:
    """docs/method.md 3.3-3.4 written literally: visible (K,B,H,W), dsm (K,B,h,w) -> (K,B)."""
    k_n, b_n, h, w = visible.shape
    out = np.zeros((k_n, b_n))
    for b in range(b_n):
        s = [np_bilinear(np.maximum(dsm[k, b], 0), h, w) for k in range(k_n)]
        v = [visible[k, b] for k in range(k_n)]
        if mode == "area":
            out[:, b] = [v[k].sum() / (h * w) for k in range(k_n)]
        elif mode == "absolute":
            shown = [(v[k] * s[k]).sum() for k in range(k_n)]
            out[:, b] = [shown[k] / (sum(shown) + EPS) for k in range(k_n)]
        else:
            r = [(v[k] * s[k]).sum() / (s[k].sum() + EPS) for k in range(k_n)]
            if mode == "normalized":
                out[:, b] = [r[k] / (sum(r) + EPS) for k in range(k_n)]
            else:  # one-sided
                out[:, b] = [1 - r[1], r[1]]
    return out


# ---------------------------------------------------------------- tests

def test_hand_bilinear_matches_a_hand_worked_case():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = np_bilinear(a, 4, 4)
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(up[3], [2, 2.25, 2.75, 3])
    np.testing.assert_allclose(up[1], [0.5, 0.75, 1.25, 1.5])


def _random_case(n_sources: int, seed: int, batch: int = 5, size: int = 24, dsm_size: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g)
    res = mix(x, n_sources=n_sources, generator=g)
    # DSMs with spatial structure: a smooth blob plus noise, some negative entries (clamped).
    dsm = torch.rand(n_sources, batch, dsm_size, dsm_size, generator=g) ** 3 - 0.05
    return x, res, dsm


@pytest.mark.parametrize("n_sources", [2, 3])
def test_mix_visible_masks_and_pixels_match_the_boxes(n_sources):
    x, res, _ = _random_case(n_sources, seed=10 + n_sources)
    k_n, b_n, h, w = res.visible.shape
    assert k_n == n_sources and res.sources.shape == (n_sources, b_n)
    assert torch.equal(res.sources[0], torch.arange(b_n))
    for j in range(1, n_sources):
        assert sorted(res.sources[j].tolist()) == list(range(b_n))
    for b in range(b_n):
        expect = np_visible(res.boxes[:, b].numpy(), h, w)
        np.testing.assert_array_equal(res.visible[:, b].numpy(), expect)
        for k in range(n_sources):
            m = expect[k].astype(bool)
            src = x[res.sources[k, b]].numpy()[:, m]
            np.testing.assert_array_equal(res.images[b].numpy()[:, m], src)


def test_mix_with_given_partners_pastes_those_images_into_the_first_b():
    """`partners` (K-1, B) index into x: the base images are x[:B], paste j of sample b is
    x[partners[j, b]], and the boxes are the ones the same generator would draw (no permutation)."""
    torch.manual_seed(0)
    x = torch.rand(9, 3, 12, 10)
    partners = torch.tensor([[3, 4, 5], [6, 7, 8]])
    res = mix(x, 3, torch.Generator().manual_seed(4), partners=partners)
    assert res.images.shape == (3, 3, 12, 10) and torch.equal(res.sources, torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]]))
    g = torch.Generator().manual_seed(4)
    boxes = torch.stack([sample_boxes(3, 12, 10, g) for _ in range(2)])
    assert torch.equal(res.boxes, boxes)
    for b in range(3):
        expect = np_visible(res.boxes[:, b].numpy(), 12, 10)
        for k in range(3):
            m = expect[k].astype(bool)
            np.testing.assert_array_equal(res.images[b].numpy()[:, m], x[res.sources[k, b]].numpy()[:, m])
    with pytest.raises(DsmixError, match="partners"):
        mix(x, 3, partners=partners[:1])


@pytest.mark.parametrize("n_sources,mode", [(k, m) for k in (2, 3) for m in LABEL_MODES
                                            if not (m == "one-sided" and k != 2)])
def test_mix_weights_agree_with_independent_implementation(n_sources, mode):
    for seed in range(3):
        _, res, dsm = _random_case(n_sources, seed=100 * seed + n_sources)
        got = mix_weights(res.visible, dsm, mode=mode).numpy()
        want = np_weights(res.visible.numpy().astype(float), dsm.numpy().astype(float), mode)
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-6)


def test_mix_weights_hand_worked_two_source_case():
    # 4x4 image, right half pasted from B. A's DSM is all on the left (visible), B's DSM is
    # uniform: r_A = 1, r_B = 0.5 -> normalized lambda_B = 1/3; absolute: A shows mass 8, B 8*1 -> 1/2
    vis_b = torch.zeros(4, 4)
    vis_b[:, 2:] = 1
    visible = torch.stack([1 - vis_b, vis_b])[:, None]
    dsm_a = torch.zeros(4, 4)
    dsm_a[:, :2] = 1
    dsm = torch.stack([dsm_a, torch.ones(4, 4)])[:, None]
    # the maps are given at full resolution (h = H), so upsampling is the identity
    assert mix_weights(visible, dsm, "normalized")[:, 0].tolist() == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    assert mix_weights(visible, dsm, "absolute")[:, 0].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert mix_weights(visible, dsm, "area")[:, 0].tolist() == pytest.approx([0.5, 0.5])
    assert mix_weights(visible, dsm, "one-sided")[:, 0].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)


def test_paste_hidden_by_a_later_box_gets_zero_weight():
    h = w = 16
    boxes = torch.tensor([[[2, 2, 6, 6]], [[0, 0, 10, 10]]])  # paste 2 covers paste 1 entirely
    m1, m2 = box_masks(boxes[0], h, w)[0], box_masks(boxes[1], h, w)[0]
    visible = torch.stack([~(m1 | m2), m1 & ~m2, m2]).float()[:, None]
    dsm = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    dsm[1] *= 100  # even a very strong DSM cannot give a hidden paste label mass
    for mode in ("normalized", "absolute", "area"):
        wts = mix_weights(visible, dsm, mode=mode)
        assert wts[1, 0].item() == 0.0
        assert wts[:, 0].sum().item() == pytest.approx(1.0, abs=1e-6)
        tg = soft_targets(torch.tensor([[1], [2], [3]]), torch.tensor([[1], [5], [2]]), wts)
        assert tg["type"][0, 2].item() == 0.0 and tg["level"][0, 5].item() == 0.0


def test_zero_dsm_falls_back_to_area_and_invisible_base_gets_zero():
    _, res, _ = _random_case(3, seed=5)
    zero = torch.zeros(3, res.visible.shape[1], 6, 6)
    for mode in ("normalized", "absolute"):
        torch.testing.assert_close(mix_weights(res.visible, zero, mode), mix_weights(res.visible, zero, "area"))
    # one-sided: the pasted box covers everything -> A invisible -> (0, 1)
    visible = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    for dsm in (torch.rand(2, 1, 2, 2) + 0.1, torch.zeros(2, 1, 2, 2)):
        assert mix_weights(visible, dsm, "one-sided")[:, 0].tolist() == [0.0, 1.0]


def test_one_sided_needs_two_sources_and_bad_mode_is_rejected():
    _, res, dsm = _random_case(3, seed=1)
    with pytest.raises(DsmixError, match="one-sided"):
        mix_weights(res.visible, dsm, "one-sided")
    with pytest.raises(DsmixError, match="unknown label mode"):
        mix_weights(res.visible, dsm, "cutmix")


def test_no_mixing_is_identity():
    x = torch.rand(4, 3, 8, 8)
    res = mix(x, n_sources=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.images, x) and res.sources.shape == (1, 4)
    assert mix_weights(res.visible, torch.rand(1, 4, 2, 2)).tolist() == [[1.0] * 4]


def test_soft_targets_hand_case_and_sum_to_one():
    types = torch.tensor([[3, 0], [3, 25], [7, 25]])
    levels = torch.tensor([[1, 0], [2, 5], [1, 5]])
    wts = torch.tensor([[0.5, 0.2], [0.3, 0.5], [0.2, 0.3]])
    t = soft_targets(types, levels, wts)
    assert t["type"].shape == (2, 26) and t["level"].shape == (2, 6) and t["joint"].shape == (2, 126)
    assert t["type"][0, 3].item() == pytest.approx(0.8) and t["type"][0, 7].item() == pytest.approx(0.2)
    assert t["level"][0, 1].item() == pytest.approx(0.7) and t["level"][0, 2].item() == pytest.approx(0.3)
    # joint class 5 (t - 1) + l: (3,1) -> 11, (3,2) -> 12, (7,1) -> 31, (25,5) -> 125, pristine -> 0
    assert t["joint"][0, [11, 12, 31]].tolist() == pytest.approx([0.5, 0.3, 0.2])
    assert t["joint"][1, 0].item() == pytest.approx(0.2) and t["joint"][1, 125].item() == pytest.approx(0.8)
    for v in t.values():
        torch.testing.assert_close(v.sum(1), torch.ones(2))
    # weights from a real mix: targets still sum to 1
    _, res, dsm = _random_case(3, seed=9)
    g = torch.Generator().manual_seed(3)
    ty, lv = torch.randint(1, 26, (5,), generator=g), torch.randint(1, 6, (5,), generator=g)
    tg = soft_targets(ty[res.sources], lv[res.sources], mix_weights(res.visible, dsm))
    for v in tg.values():
        torch.testing.assert_close(v.sum(1), torch.ones(5))
    p = pristine_targets(3)
    assert all(torch.equal(v.argmax(1), torch.zeros(3, dtype=torch.long)) and torch.equal(v.sum(1), torch.ones(3))
               for v in p.values())


def test_box_area_distribution_matches_the_spec():
    # E[clipped area fraction] for rho ~ U(0,1), side sqrt(rho), uniform centre, clipping:
    # computed here by an independent continuous Monte Carlo in numpy.
    rng = np.random.default_rng(0)
    n, size = 40000, 64
    rho, cy, cx = rng.random(n), rng.random(n), rng.random(n)
    half = np.sqrt(rho) / 2
    ext = (np.clip(cy + half, 0, 1) - np.clip(cy - half, 0, 1)) * (np.clip(cx + half, 0, 1) - np.clip(cx - half, 0, 1))
    boxes = sample_boxes(n, size, size, torch.Generator().manual_seed(0))
    assert ((boxes[:, 0] <= boxes[:, 2]) & (boxes[:, 1] <= boxes[:, 3])).all()
    assert boxes.min() >= 0 and boxes.max() <= size
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float() / size**2
    assert area.mean().item() == pytest.approx(ext.mean(), abs=0.01)
    # the distribution, not just the mean: compare quartiles
    np.testing.assert_allclose(np.quantile(area.numpy(), [0.25, 0.5, 0.75]), np.quantile(ext, [0.25, 0.5, 0.75]),
                               atol=0.02)
    # the same generator seed gives the same boxes
    assert torch.equal(boxes, sample_boxes(n, size, size, torch.Generator().manual_seed(0)))


def test_paste_prob_zero_means_no_paste():
    x = torch.rand(3, 3, 8, 8)
    res = mix(x, 3, torch.Generator().manual_seed(0), paste_prob=0.0)
    assert torch.equal(res.images, x) and res.visible[0].min() == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_cpu_generator_matches_cpu():
    x = torch.rand(6, 3, 32, 32)
    cpu = mix(x, 3, torch.Generator().manual_seed(4))
    gpu = mix(x.cuda(), 3, torch.Generator().manual_seed(4))
    assert torch.equal(cpu.images, gpu.images.cpu()) and torch.equal(cpu.sources, gpu.sources.cpu())
    dsm = torch.rand(3, 6, 4, 4)
    torch.testing.assert_close(mix_weights(cpu.visible, dsm[:, :]), mix_weights(gpu.visible, dsm.cuda()).cpu())
