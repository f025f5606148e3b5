"""Deterministic, resumable data order for training, and what happens to an unreadable sample.

An epoch's order is a permutation drawn from `(seed, "order", epoch)`; each rank of a DDP run
takes an interleaved shard of it; a resumed run skips the batches already consumed. The sampler
yields `(epoch, index)` keys, so a dataset can draw its per-sample randomness (crops, flips) from
`generator(seed, "sample", epoch, index)`: the same sample always gets the same crop, however
many workers load it and whether or not the run was interrupted.

Unreadable samples (an image found undecodable, a pair whose images differ in size): the
training loaders serve their dataset through `SkipBadDataset`. By default such a sample stops
the run with one line naming the file (`InputFailedError`, exit code 1: the checkpoints written
so far are whole and `--resume` continues). With `skip_bad` (`--skip-bad`) the sample is
replaced by the next readable sample of the dataset (index + 1, + 2, ... with that sample's own
crop): a function of the data alone, so a resumed run, or one with another number of workers,
sees exactly the same batches. The replaced files are collected in a `BadInputs` record, which
the command reports at the end (exit code 1).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dsmix_cli.engine.runtime import DistInfo, generator
from dsmix_cli.errors import DatasetError, DsmixError, ImageReadError, InputFailedError

# the key under which a served item carries the sample it replaced ("" when none)
SKIPPED_KEY = "_skipped"


def steps_per_epoch(num_items: int, batch_size: int, world_size: int = 1) -> int:
    """Full batches per epoch per rank (the remainder of an epoch is dropped)."""
    return num_items // (batch_size * world_size)


def split_global_batch(batch_size: int, world_size: int, num_items: int, min_per_rank: int = 1) -> tuple[int, int]:
    """`--batch-size` is the global batch: under torchrun each of the N processes takes batch/N,
    so the schedule and the samples per step do not depend on N. Returns (batch per process,
    full steps per epoch); a batch that does not split, or an epoch shorter than one batch, is a
    DsmixError naming the option."""
    if batch_size % world_size or batch_size // world_size < min_per_rank:
        least = f", with at least {min_per_rank} samples per process" if min_per_rank > 1 else ""
        raise DsmixError(f"--batch-size {batch_size} (the global batch) must be divisible by the {world_size} "
                         f"processes of this run{least}")
    per_rank = batch_size // world_size
    steps = steps_per_epoch(num_items, per_rank, world_size)
    if steps < 1:
        raise DsmixError(f"{num_items} training samples are fewer than one batch of {batch_size}: "
                         f"lower --batch-size or add data")
    return per_rank, steps


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


class BadInputs:
    """The unreadable samples a run skipped: one line each (file and reason), in the order met."""

    def __init__(self) -> None:
        self._lines: dict[str, None] = {}

    def add(self, lines: Iterable[str]) -> None:
        for line in lines:
            if line:
                self._lines.setdefault(line, None)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def __len__(self) -> int:
        return len(self._lines)


class SkipBadDataset(Dataset):
    """`dataset` with its unreadable samples either stopping the run (one line, exit code 1) or,
    with `skip`, replaced by the next readable sample (see the module docstring).

    Items that are dicts gain `SKIPPED_KEY`: the replaced sample's file and reason, or "".

    Args:
        dataset: indexed by `(epoch, index)` keys or plain indices.
        skip: replace unreadable samples instead of stopping.
    """

    def __init__(self, dataset: Dataset, skip: bool = False):
        self.dataset = dataset
        self.skip = bool(skip)

    def __len__(self) -> int:
        return len(self.dataset)

    def _get(self, key, note: str) -> Any:
        item = self.dataset[key]
        if isinstance(item, dict):
            item[SKIPPED_KEY] = note
        return item

    def __getitem__(self, key) -> Any:
        try:
            return self._get(key, "")
        except (ImageReadError, DatasetError) as exc:
            if not self.skip:
                raise InputFailedError(f"{exc.reason}; the run stopped here (its checkpoints are whole). Pass "
                                       f"--skip-bad to train without such files (with --resume to continue "
                                       f"this run)", exc.path) from None
            note = str(exc)
        epoch, index = split_keys(key)
        n = len(self.dataset)
        for k in range(1, n):
            j = (index + k) % n
            try:
                return self._get((epoch, j) if isinstance(key, (tuple, list)) else j, note)
            except (ImageReadError, DatasetError):
                continue  # also unreadable: it is reported when its own turn comes
        raise InputFailedError(f"no readable sample left to replace it ({note})")


class GuardedLoader:
    """Iterates a DataLoader over a `SkipBadDataset`, moving each batch's skipped-sample notes
    into a `BadInputs` record (batches come out as the collate function made them)."""

    def __init__(self, loader: DataLoader, bad: BadInputs | None):
        self.loader = loader
        self.bad = bad

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if isinstance(batch, dict) and SKIPPED_KEY in batch:
                notes = batch.pop(SKIPPED_KEY)
                if self.bad is not None:
                    self.bad.add([notes] if isinstance(notes, str) else notes)
            yield batch


def guarded_loader(dataset: Dataset, *, skip_bad: bool = False, bad: BadInputs | None = None,
                   **loader_kwargs) -> GuardedLoader:
    """A `DataLoader(SkipBadDataset(dataset, skip_bad), **loader_kwargs)` whose skipped samples
    go to `bad` (for loaders besides the epoch's, e.g. validation)."""
    return GuardedLoader(DataLoader(SkipBadDataset(dataset, skip_bad), **loader_kwargs), bad)


def epoch_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, skip_batches: int = 0,
                 workers: int = 0, dist_info: DistInfo | None = None, pin_memory: bool = False,
                 collate_fn=None, prefetch_factor: int | None = None, skip_bad: bool = False,
                 bad: BadInputs | None = None) -> GuardedLoader:
    """A DataLoader over one epoch (or the rest of it) in the deterministic order.

    An unreadable sample stops the run with one line naming its file (exit code 1), or with
    `skip_bad` is replaced by the next readable one and recorded in `bad`.
    """
    sampler = EpochSampler(len(dataset), batch_size, seed, epoch, skip_batches, dist_info)
    kwargs = {}
    if workers > 0:
        kwargs["persistent_workers"] = False
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return guarded_loader(dataset, skip_bad=skip_bad, bad=bad, batch_size=batch_size, sampler=sampler,
                          num_workers=workers, pin_memory=pin_memory, drop_last=True, collate_fn=collate_fn,
                          **kwargs)


def split_keys(keys: Sequence) -> tuple[int, int]:
    """Unpack a sampler key `(epoch, index)`; a plain int index means epoch 0."""
    if isinstance(keys, (tuple, list)):
        return int(keys[0]), int(keys[1])
    return 0, int(keys)
