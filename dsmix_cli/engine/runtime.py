"""Device choice, seeding, determinism, mixed precision and distributed set-up: one owner each.

Randomness in the tool is a pure function of (seed, what, where): `derive_seed(seed, *keys)`
gives the seed of a `torch.Generator` for one purpose at one place (a step, a sample in an
epoch), so a resumed run draws exactly what the uninterrupted run would have drawn without
saving any generator state, whatever the number of data-loader workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dsmix_cli.errors import DsmixError


def resolve_device(spec: str | None = "auto") -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a `torch.device`.

    `auto` is CUDA when available, else CPU. Under `torchrun` with CUDA, the local rank picks the
    GPU. Raises `DsmixError` when CUDA is asked for but missing.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DsmixError(f"--device {spec}: CUDA is not available on this machine (try --device cpu)")
        if spec == "cuda" and "LOCAL_RANK" in os.environ:
            spec = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DsmixError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DsmixError("--device mps: MPS is not available on this machine")
        return torch.device("mps")
    raise DsmixError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed derived from a base seed and keys (stable across machines and runs)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(seed)).encode())
    for k in keys:
        h.update(b"/")
        h.update(str(k).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A `torch.Generator` on `device` seeded with `derive_seed(seed, *keys)`."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally ask for deterministic kernels.

    Determinism is opt-in: with it, cuDNN autotuning is off and torch raises on kernels that
    have no deterministic implementation. Without it, cuDNN benchmark mode is on (fast).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context for `amp` in {"off", "bf16", "fp16"} on `device`."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_amp(amp: str | None, device: torch.device) -> str:
    """`auto` means bf16 on CUDA and off elsewhere; fp16 needs CUDA."""
    amp = (amp or "auto").lower()
    if amp in ("auto", "on", "true"):
        return "bf16" if device.type == "cuda" else "off"
    if amp in ("off", "none", "false", "no"):
        return "off"
    if amp not in ("bf16", "fp16"):
        raise DsmixError(f"--amp {amp!r}: expected auto, off, bf16 or fp16")
    if amp == "fp16" and device.type != "cuda":
        raise DsmixError("--amp fp16 needs a CUDA device (use bf16 or off)")
    return amp


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly) distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1); else a no-op.

    NCCL on CUDA, gloo on CPU. Safe to call twice.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over all ranks (identity without DDP)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc `malloc_trim`; a no-op elsewhere).

    Long loops of large, short-lived CPU tensors between small long-lived ones (distorting whole
    images to keep a few crops) fragment glibc's heap: without this, the resident size of such a
    loop grows by hundreds of MB per image instead of staying flat.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None
