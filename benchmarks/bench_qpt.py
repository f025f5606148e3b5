"""What a `qep --pretext qpt` step costs, and how much of it the degradation chains take.

`bench_qpt_step(device)` builds one batch the way the loader does (`QPTDataset` over synthetic
references: region crops, two chains per region, patch positions; JPEG2000 / colour
quantization prefixes applied as in the workers), then times on the training device:

* `chains_ms`: the device part of the chains and the patch cutting (`degrade_and_cut`);
* `step_ms`: a whole step (chains, the MoCo forward of queries and keys, the loss, backward,
  SGD), KD off;
* `loader_ms_per_region`: building one item in a loader worker (crop, draws, CPU prefixes).

Run directly:

    python benchmarks/bench_qpt.py --device cuda                  # batch 110, 224 px patches, ResNet-50
    python benchmarks/bench_qpt.py --device cpu --quick --json benchmarks/results/qpt-cpu-quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # also when loaded from a file path (the tests)
    sys.path.insert(0, str(_HERE))

from bench_dsmix import time_ms  # noqa: E402


def bench_qpt_step(device: str | torch.device = "auto", batch: int = 110, size: int = 224, arch: str = "resnet50",
                   queue: int = 65536, quick: bool = False) -> dict:
    """Time the degradation chains against a whole QPT step on one batch (random weights).

    Args:
        device: where the step runs.
        batch: reference regions per step (4 patches each).
        size: patch side (`--image-size`); the region is 3/2 of it.
        arch: the encoder.
        queue: queue size.
        quick: a small configuration (batch <= 16, size <= 64, resnet18, few iterations).

    Returns:
        `{"chains_ms", "step_ms", "chains_fraction", "loader_ms_per_region", "device", "batch", "size",
        "arch", "amp", "threads"}`.
    """
    from dsmix_cli.distortions import CPU_ONLY_TYPES, distort_batch
    from dsmix_cli.engine.runtime import DistInfo, autocast, generator, resolve_amp, resolve_device
    from dsmix_cli.imageio import save_image_atomic
    from dsmix_cli.models.moco import MomentumContrastNet
    from dsmix_cli.models.resnet import build_resnet
    from dsmix_cli.qpt import QPTOptions, default_region
    from dsmix_cli.stages.qep import QEPConfig
    from dsmix_cli.stages.qpt import QPTDataset, collate_qpt, degrade_and_cut, make_training_step

    device = resolve_device(str(device))
    if quick:
        batch, size, arch = min(batch, 16), min(size, 64), "resnet18"
    warmup, iters = (1, 2) if quick else (2, 5)
    amp = resolve_amp("auto", device)
    region = default_region(size)
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        paths = []
        for i in range(8):
            p = Path(tmp) / f"r{i}.png"
            low = torch.rand(1, 3, 8, 8, generator=g)
            img = torch.nn.functional.interpolate(low, size=(region + 16, region + 24), mode="bicubic",
                                                  align_corners=False)[0].clamp(0, 1)
            save_image_atomic(img, p)
            paths.append(p)
        ds = QPTDataset(paths, region, size, 0, list(range(1, 26)), [1, 2, 3, 4, 5], 3, 0.5, epoch_size=batch,
                        cpu_types=CPU_ONLY_TYPES)
        t0 = time.perf_counter()
        items = [ds[(0, i)] for i in range(batch)]
        loader_ms = (time.perf_counter() - t0) * 1000.0 / batch
    cpu_batch = collate_qpt(items)
    cfg = QEPConfig(out=Path("unused"), pretext="qpt", refs=Path("unused"), on_the_fly=True, arch=arch,
                    batch_size=batch, image_size=size, pretrained=False, kd_alpha=0.0, kd_beta=0.0,
                    qpt=QPTOptions(queue=queue))
    model = MomentumContrastNet(build_resnet(arch), queue_size=queue).to(device).train()
    step_fn = make_training_step(cfg, device, None, distort_batch, DistInfo())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def chains_only():
        with torch.no_grad():
            degrade_and_cut(cpu_batch, device, size, distort_batch, generator(0, "bench"))

    def whole_step():
        with autocast(device, amp):
            out = step_fn(model, cpu_batch, generator(0, "bench"), 0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    chains_ms = time_ms(chains_only, device, warmup, iters)
    step_ms = time_ms(whole_step, device, warmup, iters)
    return {"chains_ms": chains_ms, "step_ms": step_ms, "chains_fraction": chains_ms / step_ms,
            "loader_ms_per_region": loader_ms, "device": str(device), "batch": batch, "size": size,
            "region": region, "arch": arch, "queue": queue, "amp": amp, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=110)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--queue", type=int, default=65536)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None, help="also write the record to this file")
    a = parser.parse_args()
    record = bench_qpt_step(a.device, a.batch, a.size, a.arch, a.queue, a.quick)
    text = json.dumps(record, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
