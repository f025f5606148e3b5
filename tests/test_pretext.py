"""The QEP pretext validation: the counts and accuracies (against numpy), the held-out set (against
whole-image distortions found in it), and the pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsmix_cli.data.pairs import Pair
from dsmix_cli.distortions import distort
from dsmix_cli.evaluation.pretext import PretextCounts, count_predictions, pretext_metrics
from dsmix_cli.imageio import load_rgb_tensor, save_image_atomic, to_float
from dsmix_cli.stages.qep_validation import (confusion_picture, curves_picture, pair_validation_set,
                                             reference_validation_set, type_level_picture)


def _logits(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(1, 26, (n,), generator=g)
    levels = torch.randint(1, 6, (n,), generator=g)
    types[:7], levels[:7] = 0, 0  # pristine crops
    tl = torch.randn(n, 26, generator=g)
    ll = torch.randn(n, 6, generator=g)
    tl[torch.arange(n), types] += 1.5 * (torch.rand(n, generator=g) < 0.5)  # some right answers
    ll[torch.arange(n), levels] += 1.5 * (torch.rand(n, generator=g) < 0.5)
    return tl, ll, types, levels


def test_metrics_match_a_hand_count():
    tl, ll, types, levels = _logits(300, 0)
    counts = count_predictions(tl[:150], ll[:150], types[:150], levels[:150])
    counts.add(count_predictions(tl[150:], ll[150:], types[150:], levels[150:]))  # batches add up
    m = pretext_metrics(PretextCounts.from_tensor(counts.as_tensor()))
    t, lv, a, b = types.numpy(), levels.numpy(), tl.numpy(), ll.numpy()
    dist, ref = t > 0, t == 0
    assert m["val_type_acc"] == pytest.approx(np.mean(a[dist].argmax(1) == t[dist]))
    assert m["val_level_acc"] == pytest.approx(np.mean(b[dist].argmax(1) == lv[dist]))
    assert m["val_type_acc_no_pristine"] == pytest.approx(np.mean(a[dist][:, 1:].argmax(1) + 1 == t[dist]))
    assert m["val_level_acc_no_pristine"] == pytest.approx(np.mean(b[dist][:, 1:].argmax(1) + 1 == lv[dist]))
    assert m["val_pristine_acc"] == pytest.approx(np.mean(a[ref].argmax(1) == 0))
    assert m["val_called_pristine"] == pytest.approx(np.mean(a[dist].argmax(1) == 0))
    assert m["val_acc"] == pytest.approx((m["val_type_acc"] + m["val_level_acc"]) / 2)
    for k in (3, 17):
        sel = t == k
        assert m["per_type"][k]["n"] == sel.sum()
        assert m["per_type"][k]["type_acc"] == pytest.approx(np.mean(a[sel].argmax(1) == k))
    sel = (t == 5) & (lv == 2)
    got = m["per_type_level"]["level_acc"][4][1]
    assert (np.isnan(got) and not sel.any()) or got == pytest.approx(np.mean(b[sel].argmax(1) == 2))
    conf = np.zeros((26, 26), dtype=int)
    np.add.at(conf, (t, a.argmax(1)), 1)
    assert np.array_equal(counts.type_confusion.numpy(), conf)


def test_nothing_to_count_gives_nan_not_an_error():
    m = pretext_metrics(PretextCounts.zeros())
    assert np.isnan(m["val_type_acc"]) and np.isnan(m["val_pristine_acc"])


def _whole(seed: int, hw=(40, 44)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, hw[0]), torch.linspace(0, 1, hw[1]), indexing="ij")
    return (torch.stack([0.2 + 0.5 * yy, 0.3 + 0.4 * xx, 0.5 * yy * xx + 0.2]) + 0.1 * torch.rand(3, *hw, generator=g))


def _found_in(crop: torch.Tensor, image: torch.Tensor) -> bool:
    s = crop.shape[-1]
    return any(torch.equal(image[:, i:i + s, j:j + s], crop)
               for i in range(image.shape[1] - s + 1) for j in range(image.shape[2] - s + 1))


def test_reference_set_is_whole_image_distortions_cropped(tmp_path):
    paths = []
    for i in range(3):
        save_image_atomic(_whole(i).clamp(0, 1), tmp_path / f"r{i}.png")
        paths.append(tmp_path / f"r{i}.png")
    keys = [p.name for p in paths]
    vs = reference_validation_set(paths, keys, [1, 16], [1, 3, 5], 32, max_images=12)
    assert vs.info["references"] == 2  # 12 // (2 types x 3 levels)
    assert len(vs.dist) == 12 and len(vs.pristine) == 4
    assert sorted(zip(vs.types.tolist(), vs.levels.tolist())) == sorted([(t, lv) for _ in range(2) for t in (1, 16)
                                                                         for lv in (1, 3, 5)])
    whole = to_float(load_rgb_tensor(paths[0]))[None]
    for k in range(6):  # reference 0's crops: each is a crop of its whole distorted image
        t, lv = int(vs.types[k]), int(vs.levels[k])
        y = (distort(whole, t, lv)[0] * 255).round().to(torch.uint8)
        assert _found_in(vs.dist[k], y), (t, lv)
    assert _found_in(vs.pristine[0], load_rgb_tensor(paths[0]))
    # fixed seeds: the same set when made again (not from the in-process memo)
    import dsmix_cli.stages.qep_validation as qv

    qv._MEMO.clear()
    torch.manual_seed(123)
    again = reference_validation_set(paths, keys, [1, 16], [1, 3, 5], 32, max_images=12)
    assert again is not vs and torch.equal(again.dist, vs.dist) and torch.equal(again.pristine, vs.pristine)


def test_two_ranks_share_the_reference_set(tmp_path):
    from dsmix_cli.engine.runtime import DistInfo

    paths = []
    for i in range(2):
        save_image_atomic(_whole(10 + i).clamp(0, 1), tmp_path / f"r{i}.png")
        paths.append(tmp_path / f"r{i}.png")
    keys = [p.name for p in paths]
    full = reference_validation_set(paths, keys, [16, 18, 25], [2, 4], 32, max_images=100)
    parts = [reference_validation_set(paths, keys, [16, 18, 25], [2, 4], 32, max_images=100,
                                      dist_info=DistInfo(rank=r, world_size=2)) for r in range(2)]
    assert sum(len(p.dist) for p in parts) == len(full.dist) and sum(len(p.pristine) for p in parts) == len(full.pristine)
    rows = {bytes(c.flatten().tolist()) for p in parts for c in p.dist}
    assert rows == {bytes(c.flatten().tolist()) for c in full.dist}


def test_pair_set_crops_both_images_at_one_place(tmp_path):
    pairs, keys = [], []
    ref = _whole(3).clamp(0, 1)
    save_image_atomic(ref, tmp_path / "ref.png")
    for t, lv in ((11, 1), (11, 3), (17, 2)):
        d = (ref * (1 - 0.1 * lv)).clamp(0, 1)
        save_image_atomic(d, tmp_path / f"d{t}_{lv}.png")
        pairs.append(Pair(tmp_path / f"d{t}_{lv}.png", tmp_path / "ref.png", t, lv))
        keys.append("ref.png")
    vs = pair_validation_set(pairs, keys, 32, max_images=10)
    assert vs.types.tolist() == [11, 11, 17] and len(vs.pristine) == 2  # one per (reference, type)
    for k, p in enumerate(pairs):
        assert _found_in(vs.dist[k], load_rgb_tensor(p.dist))
    assert _found_in(vs.pristine[0], load_rgb_tensor(tmp_path / "ref.png"))


def test_pictures_show_the_counts(tmp_path):
    tl, ll, types, levels = _logits(400, 1)
    counts = count_predictions(tl, ll, types, levels)
    m = pretext_metrics(counts)
    conf = confusion_picture(counts.type_confusion, 10)
    assert conf.size[0] > 26 * 16 and conf.size[1] > 26 * 16
    tlp = type_level_picture(m["per_type_level"], 10)
    assert tlp.size[1] > 25 * 18
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n')
    cur = curves_picture(tmp_path / "metrics.jsonl", [{"step": 2, "val_type_acc": 0.5, "val_level_acc": 0.4,
                                                       "val_pristine_acc": 0.9, "val_called_pristine": 0.1}])
    assert cur.size == (640, 560)
    # the confusion's diagonal cell of a type every crop of which was answered right is the brightest colour
    perfect = torch.zeros(26, 26, dtype=torch.int64)
    perfect[3, 3] = 5
    perfect[4, 0] = 5
    img = np.asarray(confusion_picture(perfect, 1))
    bright = img.reshape(-1, 3).max(0)
    assert (img == bright).all(-1).any()
