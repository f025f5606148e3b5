"""Splits (by reference / by image, seeded, official, pyiqa columns) and score normalisation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import fixtures_datasets as fx
from dsmix_cli.data import Dataset, Item, ScoreNormaliser, column_splits, load_dataset, make_splits
from dsmix_cli.errors import DsmixError


def _dataset(n_refs: int | None, per_ref: int = 3, n_images: int = 0, splits=None) -> Dataset:
    """An in-memory dataset: `n_refs` references x `per_ref` images (synthetic) or `n_images`."""
    if n_refs is not None:
        refs = [f"ref{r:02d}" for r in range(n_refs) for _ in range(per_ref)]
        # Interleave items of different references, so grouping cannot rely on order.
        order = np.random.default_rng(5).permutation(len(refs))
        refs = [refs[i] for i in order]
    else:
        refs = [None] * n_images
    items = [Item(Path(f"/d/{i}.png"), float(i), r, f"{i}.png", (splits[i] if splits else None))
             for i, r in enumerate(refs)]
    return Dataset("t", Path("/d"), items, False, (0.0, 1.0), n_refs is not None, [], [],
                   n_refs)


def _blake_seed(seed: int, *keys) -> int:
    # The documented seed derivation, written out independently of dsmix_cli.
    h = hashlib.blake2b(digest_size=8)
    h.update(str(seed).encode())
    for k in keys:
        h.update(b"/")
        h.update(str(k).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


@pytest.mark.parametrize("n_refs, n_train", [(29, 23), (30, 24), (25, 20), (81, 65)])
def test_synthetic_splits_by_reference(n_refs, n_train):
    ds = _dataset(n_refs)
    splits = make_splits(ds, n_splits=10, seed=3)
    assert len(splits) == 10 and [s.index for s in splits] == list(range(10))
    for s in splits:
        train_refs = {ds.items[i].ref for i in s.train}
        test_refs = {ds.items[i].ref for i in s.test}
        assert not train_refs & test_refs
        assert len(train_refs) == n_train and len(test_refs) == n_refs - n_train
        assert sorted(s.train + s.test) == list(range(len(ds.items))) and s.val == []
        assert s.train == sorted(s.train) and s.test == sorted(s.test)
    assert len({tuple(s.test) for s in splits}) > 1  # the ten splits differ


def test_authentic_splits_by_image():
    ds = _dataset(None, n_images=1162)
    s = make_splits(ds, n_splits=2, seed=0)[0]
    assert (len(s.train), len(s.test)) == (930, 232)  # as pyiqa's CLIVE splits


def test_split_matches_an_independent_numpy_permutation():
    """Split i of seed s = PCG64(blake2b(s/split/i)).permutation over the sorted references."""
    ds = _dataset(10, per_ref=2)
    refs = sorted({it.ref for it in ds.items})
    for seed in (0, 7):
        splits = make_splits(ds, n_splits=3, seed=seed)
        for s in splits:
            perm = np.random.Generator(np.random.PCG64(_blake_seed(seed, "split", s.index))).permutation(10)
            want_test = {refs[k] for k in perm[8:]}
            assert {ds.items[i].ref for i in s.test} == want_test
            assert s.test == sorted(i for i, it in enumerate(ds.items) if it.ref in want_test)


def test_split_is_pinned_for_seed_0():
    """A literal expectation, so a change of algorithm or library shows up on any machine."""
    ds = _dataset(None, n_images=10)
    s0, s1 = make_splits(ds, n_splits=2, seed=0)
    assert s0.test == [3, 7] and s1.test == [5, 8]  # permutations [4,2,1,5,0,9,8,6,7,3], [1,3,4,2,7,9,6,0,8,5]
    assert s0.train == [0, 1, 2, 4, 5, 6, 8, 9]


def test_same_seed_same_splits_and_prefix_stable():
    ds = _dataset(29)
    a = make_splits(ds, n_splits=10, seed=11)
    b = make_splits(ds, n_splits=4, seed=11)
    assert [(s.train, s.test) for s in a[:4]] == [(s.train, s.test) for s in b]
    c = make_splits(ds, n_splits=4, seed=12)
    assert [s.test for s in b] != [s.test for s in c]


def test_seventy_ten_twenty():
    ds = _dataset(30)
    for s in make_splits(ds, n_splits=3, train_ratio=0.7, val_ratio=0.1):
        parts = [{ds.items[i].ref for i in p} for p in (s.train, s.val, s.test)]
        assert [len(p) for p in parts] == [21, 3, 6]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_bad_ratios_and_too_few_groups():
    ds = _dataset(None, n_images=10)
    for kwargs in ({"train_ratio": 0.0}, {"train_ratio": 0.8, "val_ratio": 0.3}, {"n_splits": 0}):
        with pytest.raises(DsmixError):
            make_splits(ds, **kwargs)
    with pytest.raises(DsmixError, match="too few"):
        make_splits(_dataset(None, n_images=1))
    whole = make_splits(ds, n_splits=1, train_ratio=1.0)[0]
    assert whole.train == list(range(10)) and whole.test == []


def test_official_split_from_tags():
    tags = ["train", "test", None, "val", "train"]
    s = make_splits(_dataset(None, n_images=5, splits=tags), official=True)
    assert len(s) == 1 and (s[0].train, s[0].val, s[0].test) == ([0, 4], [3], [1])
    with pytest.raises(DsmixError, match="no official split"):
        make_splits(_dataset(None, n_images=5), official=True)


def test_official_and_column_splits_from_a_pyiqa_csv(tmp_path):
    exp = fx.make_pyiqa_nr(tmp_path)
    ds = load_dataset("pyiqa", csv=exp["csv"])
    official = make_splits(ds, official=True)[0]
    assert (official.train, official.val, official.test) == ([0, 1, 4], [2], [3])
    cols = column_splits(ds)
    assert [(c.train, c.test) for c in cols] == [([0, 1, 2, 3], [4]), ([1, 2, 3, 4], [0])]


def test_koniq_official_split(tmp_path):
    fx.make_koniq10k(tmp_path)
    s = make_splits(load_dataset("koniq10k", tmp_path), official=True)[0]
    assert (s.train, s.val, s.test) == ([0, 1, 2], [3], [4, 5])


# --- ScoreNormaliser ------------------------------------------------------------------------


def test_normaliser_hand_worked():
    up = ScoreNormaliser.fit([2.0, 6.0, 4.0, float("nan")], lower_better=False)
    assert (up.lo, up.hi) == (2.0, 6.0)
    np.testing.assert_allclose(up.apply([2.0, 3.0, 4.0, 6.0, 8.0]), [0.0, 0.25, 0.5, 1.0, 1.5])
    down = ScoreNormaliser.fit(np.array([2.0, 6.0]), lower_better=True)
    np.testing.assert_allclose(down.apply([2.0, 3.0, 6.0]), [1.0, 0.75, 0.0])  # DMOS 2 is the best


def test_normaliser_round_trip_and_tensors():
    n = ScoreNormaliser.fit([10.0, 90.0], lower_better=True)
    raw = np.array([10.0, 33.3, 90.0, 95.0])
    np.testing.assert_allclose(n.invert(n.apply(raw)), raw)
    t = n.apply(torch.tensor([10.0, 90.0]))
    assert isinstance(t, torch.Tensor) and t.tolist() == [1.0, 0.0]
    assert ScoreNormaliser.from_dict(n.to_dict()) == n


def test_normaliser_needs_two_scores():
    with pytest.raises(DsmixError, match="two different"):
        ScoreNormaliser.fit([3.0, 3.0], lower_better=False)
