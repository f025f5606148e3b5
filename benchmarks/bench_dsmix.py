"""How much of a QEP training step DSMix costs (box sampling, pasting, label weights, soft targets).

`bench_dsmix_overhead(device)` times, on one synthetic batch, the DSMix part alone and a whole
QEP training step (forward of student and teacher, losses, backward, SGD step; the step includes
DSMix) and returns both and their ratio. Run directly for a quick look:

    python benchmarks/bench_dsmix.py --device cuda
    python benchmarks/bench_dsmix.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) * 1000.0 / iters


def bench_dsmix_overhead(device: str | torch.device, batch: int = 110, size: int = 224, arch: str = "resnet50",
                         quick: bool = False) -> dict:
    """Time DSMix (mix + mix_weights + soft_targets) against a whole QEP step on the same batch.

    Args:
        device: where to run (`cpu`, `cuda`, `cuda:N`).
        batch: distorted images per step (the step also carries as many references).
        size: crop size.
        arch: student and teacher architecture (random weights; speed does not depend on them).
        quick: a small smoke configuration (batch <= 8, size <= 64, resnet18, few iterations).

    Returns:
        `{"dsmix_ms", "step_ms", "dsmix_overhead_fraction", "device", "batch", "size", "arch", "amp"}`.
    """
    from dsmix_cli.dsmix import mix, mix_weights, soft_targets
    from dsmix_cli.engine.runtime import autocast, resolve_amp, resolve_device
    from dsmix_cli.models.heads import QualityEncoderNet
    from dsmix_cli.models.resnet import build_resnet
    from dsmix_cli.stages.qep import QEPConfig, make_training_step

    device = resolve_device(str(device))
    if quick:
        batch, size, arch = min(batch, 8), min(size, 64), "resnet18"
    warmup, iters = (1, 2) if quick else (3, 10)
    amp = resolve_amp("auto", device)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(batch, 3, size, size, generator=g)
    dist = (ref + 0.1 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    to_u8 = lambda x: x.mul(255).round().to(torch.uint8)  # noqa: E731
    cpu_batch = {"dist": to_u8(dist), "ref": to_u8(ref), "type": torch.randint(1, 26, (batch,), generator=g),
                 "level": torch.randint(1, 6, (batch,), generator=g)}
    dist_d = dist.to(device)
    dsm = torch.rand(batch, size // 8, size // 8, generator=g).to(device)
    types, levels = cpu_batch["type"].to(device), cpu_batch["level"].to(device)

    def dsmix_only():
        res = mix(dist_d, 3, torch.Generator().manual_seed(1))
        w = mix_weights(res.visible, dsm[res.sources])
        return soft_targets(types[res.sources], levels[res.sources], w)

    cfg = QEPConfig(out=Path("unused"), arch=arch, batch_size=batch, image_size=size, dsm_source="gt",
                    pretrained=False)
    model = QualityEncoderNet(build_resnet(arch)).to(device).train()
    teacher = build_resnet(arch).to(device).eval().requires_grad_(False)
    from dsmix_cli.dsm.gt import gt_dsm

    step_fn = make_training_step(cfg, device, lambda d, r, b: gt_dsm(d, r, pool=8), teacher)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def whole_step():
        with autocast(device, amp):
            out = step_fn(model, cpu_batch, torch.Generator().manual_seed(1), 0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    dsmix_ms = time_ms(dsmix_only, device, warmup, iters)
    step_ms = time_ms(whole_step, device, warmup, iters)
    return {"dsmix_ms": dsmix_ms, "step_ms": step_ms, "dsmix_overhead_fraction": dsmix_ms / step_ms,
            "device": str(device), "batch": batch, "size": size, "arch": arch, "amp": amp}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=110)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    print(json.dumps(bench_dsmix_overhead(a.device, a.batch, a.size, a.arch, a.quick), indent=2))
