"""Plugging a DnCNN for type 15, and CPU/CUDA agreement (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from dsmix_cli.distortions import NUM_TYPES, RANDOM_TYPES, denoiser_name, distort, set_denoiser
from dsmix_cli.errors import CheckpointError


def image(seed: int = 0, h: int = 48, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=True)
    x = x + 0.3 * (torch.rand(1, 1, h, w, generator=g) > 0.9)
    return (x - x.min()) / (x.max() - x.min())


def tiny_dncnn_state(channels: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(8, channels), (8, 8), (channels, 8)]
    state = {}
    for i, (o, c) in enumerate(shapes):
        state[f"model.{2 * i}.weight"] = 0.05 * torch.randn(o, c, 3, 3, generator=g)
        state[f"model.{2 * i}.bias"] = torch.zeros(o)
    return state


def test_plugged_dncnn_replaces_the_substitute(tmp_path):
    x = image()
    base = distort(x, 15, 3, torch.Generator().manual_seed(0))
    path = tmp_path / "dncnn.pth"
    torch.save(tiny_dncnn_state(), path)
    try:
        set_denoiser(path)
        assert denoiser_name() == "dncnn:dncnn.pth"
        plugged = distort(x, 15, 3, torch.Generator().manual_seed(0))
        assert plugged.shape == x.shape and 0 <= plugged.min() and plugged.max() <= 1
        assert not torch.allclose(plugged, base)
        # an all-zero network predicts no noise: the output is the noisy image itself
        torch.save({k: torch.zeros_like(v) for k, v in tiny_dncnn_state().items()}, path)
        set_denoiser(path)
        noisy_only = distort(x, 11, 1, mapmm=False)  # just to exercise another type meanwhile
        assert noisy_only.shape == x.shape
    finally:
        set_denoiser(None)
    assert denoiser_name() == "wiener2-substitute"


def test_bad_dncnn_files_are_refused(tmp_path):
    with pytest.raises(CheckpointError):
        set_denoiser(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        set_denoiser(bad)
    bn = tmp_path / "bn.pth"
    torch.save({**tiny_dncnn_state(), "model.1.running_mean": torch.zeros(8)}, bn)
    with pytest.raises(CheckpointError, match="BatchNorm"):
        set_denoiser(bn)
    assert denoiser_name() == "wiener2-substitute"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("t", range(1, NUM_TYPES + 1))
def test_cpu_and_cuda_agree(t):
    x = image(1, 96, 128).repeat(2, 1, 1, 1)
    for level in (1, 5):
        # CPU generators draw the same numbers whatever the images' device
        cpu = distort(x, t, level, torch.Generator().manual_seed(7))
        gpu = distort(x.cuda(), t, level, torch.Generator().manual_seed(7))
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        diff = (gpu.cpu() - cpu).abs()
        if t == 10:  # nvJPEG and libjpeg differ slightly
            assert diff.mean().item() < 0.01
        elif t in (19, 22):  # bicubic sampling / threshold ties can flip a few values
            assert diff.mean().item() < 1e-3
        else:
            assert diff.max().item() < 1e-3, (t, level, diff.max().item())
    if t in RANDOM_TYPES:
        g = torch.Generator(device="cuda").manual_seed(3)
        a = distort(x.cuda(), t, 5, g)
        assert torch.equal(a, distort(x.cuda(), t, 5, torch.Generator(device="cuda").manual_seed(3)))
