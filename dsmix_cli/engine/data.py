"""Deterministic, resumable data order for training.

An epoch's order is a permutation drawn from `(seed, "order", epoch)`; each rank of a DDP run
takes an interleaved shard of it; a resumed run skips the batches already consumed. The sampler
yields `(epoch, index)` keys, so a dataset can draw its per-sample randomness (crops, flips) from
`generator(seed, "sample", epoch, index)`: the same sample always gets the same crop, however
many workers load it and whether or not the run was interrupted.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dsmix_cli.engine.runtime import DistInfo, generator


def steps_per_epoch(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches per epoch per rank (the remainder of an epoch is dropped)."""
    return num_items // (batch_size * world_size)


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of item indices for one epoch."""
    return torch.randperm(num_items, generator=generator(seed, "order", epoch))


class EpochSampler(Sampler):
    """Yields `(epoch, index)` for this rank's share of one epoch, after `skip_batches` batches."""

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int,
                 skip_batches: int = 0, dist_info: DistInfo | None = None):
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.skip_batches = skip_batches
        self.dist = dist_info or DistInfo()

    def _indices(self) -> list[int]:
        world = self.dist.world_size
        n_batches = steps_per_epoch(self.num_items, self.batch_size, world)
        order = epoch_order(self.num_items, self.seed, self.epoch)[: n_batches * self.batch_size * world]
        mine = order[self.dist.rank::world]
        return mine[self.skip_batches * self.batch_size:].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self._indices()])

    def __len__(self) -> int:
        return len(self._indices())


def epoch_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, skip_batches: int = 0,
                 workers: int = 0, dist_info: DistInfo | None = None, pin_memory: bool = False,
                 collate_fn=None, prefetch_factor: int | None = None) -> DataLoader:
    """A DataLoader over one epoch (or the rest of it) in the deterministic order."""
    sampler = EpochSampler(len(dataset), batch_size, seed, epoch, skip_batches, dist_info)
    kwargs = {}
    if workers > 0:
        kwargs["persistent_workers"] = False
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=True, collate_fn=collate_fn, **kwargs)


def split_keys(keys: Sequence) -> tuple[int, int]:
    """Unpack a sampler key `(epoch, index)`; a plain int index means epoch 0."""
    if isinstance(keys, (tuple, list)):
        return int(keys[0]), int(keys[1])
    return 0, int(keys)
