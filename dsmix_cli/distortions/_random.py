"""Random draws for the distortions: only from explicit `torch.Generator`s.

A draw is made on the generator's device and then moved to the batch's device, so the same
generator state gives the same numbers whatever device the images are on. A *list* of
generators (one per sample) draws each sample's numbers from its own generator: then a sample's
output does not depend on which other samples share its batch (what `dsmix synthesize` uses,
so a resumed run writes exactly what an uninterrupted one would have). A single generator for a
batch of several images is first split (`split`) into one generator per image, so that the
batched path (CUDA) and the image-by-image path (CPU) draw the same numbers.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

Gen = Union[torch.Generator, Sequence[torch.Generator], None]


def _device_of(gen: torch.Generator | None, fallback: torch.device) -> torch.device:
    return gen.device if gen is not None else fallback


def _draw(kind: str, gen: Gen, batch: int, shape: tuple[int, ...], device: torch.device,
          dtype: torch.dtype, low: int = 0, high: int = 2, out: torch.Tensor | None = None) -> torch.Tensor:
    def one(g: torch.Generator | None, n: int, dst: torch.Tensor | None) -> torch.Tensor:
        dev = _device_of(g, device)
        size = (n, *shape)
        if dst is not None and dst.device != dev:
            dst = None
        if kind == "rand":
            t = torch.rand(size, generator=g, device=dev, dtype=dtype, out=dst)
        elif kind == "randn":
            t = torch.randn(size, generator=g, device=dev, dtype=dtype, out=dst)
        else:
            t = torch.randint(low, high, size, generator=g, device=dev)
        return t.to(device)

    if out is not None and (tuple(out.shape) != (batch, *shape) or out.dtype != dtype or kind == "randint"):
        out = None
    if gen is None or isinstance(gen, torch.Generator):
        return one(gen, batch, out)
    gens = list(gen)
    if len(gens) != batch:
        raise ValueError(f"{len(gens)} generators for a batch of {batch}")
    if batch == 1:
        return one(gens[0], 1, out)
    if out is not None and all(_device_of(g, device) == out.device for g in gens):
        for i, g in enumerate(gens):
            one(g, 1, out[i:i + 1])
        return out
    return torch.cat([one(g, 1, None) for g in gens], dim=0)


def rand(gen: Gen, batch: int, *shape: int, device: torch.device, dtype=torch.float32,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform [0, 1) numbers of shape (batch, *shape) on `device` (into `out` when given)."""
    return _draw("rand", gen, batch, tuple(shape), device, dtype, out=out)


def randn(gen: Gen, batch: int, *shape: int, device: torch.device, dtype=torch.float32,
          out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal numbers of shape (batch, *shape) on `device` (into `out` when given)."""
    return _draw("randn", gen, batch, tuple(shape), device, dtype, out=out)


def randint(gen: Gen, batch: int, low: int, high: int, *shape: int, device: torch.device) -> torch.Tensor:
    """Integers in [low, high) of shape (batch, *shape) on `device`."""
    return _draw("randint", gen, batch, tuple(shape), device, torch.int64, low, high)


def split(gen: Gen, batch: int) -> Gen:
    """One generator per image of a batch.

    A list is returned as it is and None stays None (torch's global generator). A single
    generator serves a batch of one directly; for a larger batch it first draws one 63-bit seed
    per image (in image order) and each image gets a fresh generator on the same device seeded
    with its seed. An image's draws then depend only on its own generator, whichever way the
    batch is processed.
    """
    if gen is None or not isinstance(gen, torch.Generator):
        return gen
    if batch == 1:
        return [gen]
    seeds = torch.randint(0, 2**63 - 1, (batch,), generator=gen, device=gen.device).tolist()
    return [torch.Generator(device=gen.device).manual_seed(int(s)) for s in seeds]


def subset(gen: Gen, index: Sequence[int]) -> Gen:
    """The generators of a subset of the batch (a single generator is shared)."""
    if gen is None or isinstance(gen, torch.Generator):
        return gen
    gens = list(gen)
    return [gens[i] for i in index]
