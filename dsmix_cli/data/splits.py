"""Train/val/test splits and score normalisation (docs/probing.md, docs/datasets.md).

Random splits are drawn by reference for synthetic sets (no reference, and so no scene, is in
both train and test) and by image for authentic ones. Split `i` of seed `s` is the permutation
drawn by `numpy.random.Generator(PCG64(derive_seed(s, "split", i)))` over the sorted groups, so
the same seed gives the same split on any machine and any number of splits (split 3 does not
depend on how many splits were asked for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsmix_cli.data.catalog import Dataset
from dsmix_cli.engine.runtime import derive_seed
from dsmix_cli.errors import DatasetError, DsmixError


@dataclass
class Split:
    """Item indices (into `Dataset.items`, ascending) of one split."""

    index: int
    train: list[int]
    val: list[int]
    test: list[int]


def _count(ratio: float, n: int) -> int:
    # Round half up (Python's round() rounds half to even): 0.8 * 81 = 64.8 -> 65.
    return int(math.floor(ratio * n + 0.5 + 1e-9))


def split_groups(dataset: Dataset) -> tuple[list, list[int]]:
    """The units a random split permutes, and each item's unit.

    Returns:
        (groups, group_of_item): sorted reference ids for a synthetic set whose items all carry
        one, else item indices (one group per image).
    """
    if dataset.synthetic and dataset.items and all(it.ref is not None for it in dataset.items):
        groups = sorted({it.ref for it in dataset.items})
        where = {g: k for k, g in enumerate(groups)}
        return groups, [where[it.ref] for it in dataset.items]
    n = len(dataset.items)
    return list(range(n)), list(range(n))


def make_splits(dataset: Dataset, n_splits: int = 10, train_ratio: float = 0.8,
                val_ratio: float = 0.0, seed: int = 0, official: bool = False) -> list[Split]:
    """Seeded random splits (80/20 by default, 70/10/20 with `val_ratio=0.1, train_ratio=0.7`).

    Args:
        dataset: the loaded dataset.
        n_splits: how many random splits.
        train_ratio: fraction of groups (references or images) in train, rounded half up
            (LIVE 29 -> 23/6, CSIQ 30 -> 24/6, TID2013 25 -> 20/5, KADID 81 -> 65/16).
        val_ratio: fraction of groups in val (taken after train); the rest is test.
        seed: base seed; split i uses `derive_seed(seed, "split", i)`.
        official: return the one split the data carries (`Item.split` tags) instead.

    Returns:
        `n_splits` splits (or one, `official`).

    Raises:
        DsmixError: ratios out of range, too few groups, or no official split in the data.
    """
    if official:
        return [official_split(dataset)]
    if n_splits < 1:
        raise DsmixError(f"--splits must be at least 1, got {n_splits}")
    if not (0.0 < train_ratio <= 1.0) or not (0.0 <= val_ratio < 1.0) or train_ratio + val_ratio > 1.0 + 1e-9:
        raise DsmixError(f"split ratios train {train_ratio} + val {val_ratio} must lie in (0, 1] "
                         "and sum to at most 1")
    groups, group_of = split_groups(dataset)
    n = len(groups)
    n_train, n_val = _count(train_ratio, n), _count(val_ratio, n)
    n_val = min(n_val, n - n_train)
    if n_train < 1 or (train_ratio + val_ratio < 1.0 - 1e-9 and n - n_train - n_val < 1):
        unit = "references" if n != len(dataset.items) else "images"
        raise DsmixError(f"{dataset.name}: {n} {unit} are too few for a {train_ratio:g}/"
                         f"{val_ratio:g}/{1 - train_ratio - val_ratio:g} split")
    members: list[list[int]] = [[] for _ in range(n)]
    for i, g in enumerate(group_of):
        members[g].append(i)
    splits = []
    for s in range(n_splits):
        rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "split", s)))
        perm = rng.permutation(n)
        parts = (perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:])
        train, val, test = (sorted(i for g in part for i in members[g]) for part in parts)
        splits.append(Split(s, train, val, test))
    return splits


def carve_validation(dataset: Dataset, split: Split, fraction: float = 0.125, seed: int = 0) -> Split:
    """A split whose validation part is carved from its *training* side (never its test side).

    For a split without a validation part: `fraction` of its training groups (references for a
    synthetic set, else images; 1/8 makes 80/20 into 70/10/20), at least one group and at least
    two images, drawn from `derive_seed(seed, "val", split.index)`. The test part is unchanged.
    A split that already has a validation part is returned as is.

    Raises:
        DsmixError: too few training images to hold out two and keep two.
    """
    if split.val:
        return split
    groups, group_of = split_groups(dataset)
    train_groups = sorted({group_of[i] for i in split.train})
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "val", split.index)))
    order = [train_groups[k] for k in rng.permutation(len(train_groups))]
    size = {g: 0 for g in train_groups}
    for i in split.train:
        size[group_of[i]] += 1
    k = max(1, _count(fraction, len(train_groups)))
    while sum(size[g] for g in order[:k]) < 2 and k < len(order) - 1:
        k += 1
    held = set(order[:k])
    val = [i for i in split.train if group_of[i] in held]
    fit = [i for i in split.train if group_of[i] not in held]
    if len(val) < 2 or len(fit) < 2:
        raise DsmixError(f"{dataset.name}: split {split.index} has {len(split.train)} training images, too few "
                         "to carve a validation part from them")
    return Split(split.index, fit, val, split.test)


def official_split(dataset: Dataset) -> Split:
    """The split the data carries (KonIQ `set`, pyiqa `official_split`, a CSV `split` column).

    Items without a tag are in none of the parts.
    """
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, it in enumerate(dataset.items):
        if it.split in parts:
            parts[it.split].append(i)
    if not parts["train"] and not parts["test"]:
        raise DatasetError(f"{dataset.name}: the label file carries no official split "
                           "(KonIQ 'set', pyiqa 'official_split' or a CSV 'split' column)",
                           dataset.label_file)
    return Split(0, parts["train"], parts["val"], parts["test"])


def column_splits(dataset: Dataset, prefix: str = "ratio802_seed123_split_") -> list[Split]:
    """The splits stored in pyiqa split columns (`ratio802_seed123_split_01`...), in column order."""
    columns = sorted(c for c in dataset.split_columns if c.startswith(prefix))
    if not columns:
        raise DatasetError(f"{dataset.name}: no split columns named {prefix}NN in the label file",
                           dataset.label_file)
    out = []
    for k, col in enumerate(columns):
        tags = dataset.split_columns[col]
        out.append(Split(k, *([i for i, t in enumerate(tags) if t == part] for part in ("train", "val", "test"))))
    return out


@dataclass(frozen=True)
class ScoreNormaliser:
    """Min-max scaling of raw labels to [0, 1] with training-split statistics, flipped for
    lower-is-better labels so that 1 is always the best quality.

    Test scores outside the training range map outside [0, 1]; nothing is clipped.
    """

    lo: float
    hi: float
    lower_better: bool

    @classmethod
    def fit(cls, raw_train_scores, lower_better: bool, source: str | Path | None = None) -> "ScoreNormaliser":
        """Fit on the raw scores of the training split (NaN ignored).

        Args:
            source: the label file the scores come from, named in the error.

        Raises:
            DatasetError: fewer than two distinct finite scores.
        """
        raw = np.asarray(raw_train_scores, dtype=np.float64).ravel()
        raw = raw[np.isfinite(raw)]
        if raw.size == 0 or raw.max() <= raw.min():
            found = "no finite score" if raw.size == 0 else f"every score is {raw.min():g}"
            raise DatasetError("cannot normalise scores: the training split needs at least two "
                               f"different finite scores ({found})", source)
        return cls(float(raw.min()), float(raw.max()), bool(lower_better))

    def apply(self, raw):
        """Raw labels -> [0, 1] over the training split, higher = better (arrays or tensors)."""
        if not hasattr(raw, "dtype"):
            raw = np.asarray(raw, dtype=np.float64)
        unit = (raw - self.lo) / (self.hi - self.lo)
        return 1.0 - unit if self.lower_better else unit

    def invert(self, normalised):
        """Normalised scores -> the raw label scale and direction."""
        if not hasattr(normalised, "dtype"):
            normalised = np.asarray(normalised, dtype=np.float64)
        unit = 1.0 - normalised if self.lower_better else normalised
        return self.lo + unit * (self.hi - self.lo)

    def to_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "lower_better": self.lower_better}

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreNormaliser":
        return cls(float(d["lo"]), float(d["hi"]), bool(d["lower_better"]))
