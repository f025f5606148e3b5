"""Throughput of each distortion type, batched: images per second at 384x512 (KADIS size).

Import `bench_distortions(device, ...)` from a benchmark runner, or run
`python benchmarks/bench_distortions.py [--device cuda] [--quick]` to print a table.
Encoding the outputs to files is not included (see `dsmix synthesize` for end to end).
"""

from __future__ import annotations

import argparse
import time

import torch

from dsmix_cli.distortions import NUM_TYPES, TYPE_NAMES, distort_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_distortions(device: str | torch.device, size: tuple[int, int] = (384, 512), batch: int = 8,
                      repeats: int = 3, quick: bool = False) -> dict[int, float]:
    """Images per second for each type (levels 1-5 cycled through the batch).

    Args:
        device: where the batch lives (CPU-only types 6 and 9 go through the CPU anyway).
        size: (H, W) of the images.
        batch: images per call.
        repeats: timed calls per type (after one warm-up call).
        quick: one timed call on a batch of 2 (a smoke run).

    Returns:
        {type number: images per second}.
    """
    device = torch.device(device)
    if quick:
        batch, repeats = 2, 1
    g = torch.Generator().manual_seed(0)
    low = torch.rand(batch, 3, size[0] // 16, size[1] // 16, generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(0, 1).to(device)
    levels = torch.tensor([i % 5 + 1 for i in range(batch)])
    rates: dict[int, float] = {}
    for t in range(1, NUM_TYPES + 1):
        types = torch.full((batch,), t)
        gens = torch.Generator(device=device).manual_seed(t)
        distort_batch(x, types, levels, gens)  # warm-up (kernels, caches)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            distort_batch(x, types, levels, gens)
        _sync(device)
        rates[t] = batch * repeats / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rates = bench_distortions(args.device, batch=args.batch, repeats=args.repeats, quick=args.quick)
    print(f"device {args.device}, 384x512, batch {args.batch if not args.quick else 2}")
    print(f"{'type':>4}  {'name':<24}{'img/s':>10}")
    for t, r in rates.items():
        print(f"{t:>4}  {TYPE_NAMES[t]:<24}{r:>10.1f}")


if __name__ == "__main__":
    main()
