"""The denoiser of KADID type 15 (`imdenoise`).

MATLAB adds Gaussian noise and runs its pretrained grayscale DnCNN (`denoisingNetwork('DnCNN')`)
on each channel. Those weights are not available in PyTorch, so by default a documented
substitute runs instead: MATLAB's `wiener2` adaptive filter with the *known* noise variance,
on each channel, with a window that grows with the noise level. A real DnCNN can be plugged in
with `set_denoiser(path)`: a state dict (`.safetensors`, or `.pth`/`.pt` read with
`weights_only=True`) of a plain DnCNN (convolutions with biases, BatchNorm merged, ReLU between
them, residual output = input - network(input)), e.g. KAIR's `dncnn_25.pth` (1 channel, applied
per channel as MATLAB does) or `dncnn_color_blind.pth` (3 channels).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsmix_cli.distortions import _filters
from dsmix_cli.engine.checkpoint import load_state_dict_file
from dsmix_cli.errors import CheckpointError

_STATE: dict = {"path": None, "state": None, "nets": {}}


def wiener_denoise(x: torch.Tensor, noise_var: torch.Tensor, radius: int) -> torch.Tensor:
    """MATLAB `wiener2(I, [2r+1 2r+1], noise)` on every channel (replicate border).

    out = μ + max(σ² - ν, 0) / max(σ², ν) * (I - μ), μ and σ² the local mean and variance in
    the window, ν the noise variance (per image, shape (B,)). The two window means are one
    separable box filter over the stacked image and its square (`_filters`).
    """
    b, c, h, w = x.shape
    k = 2 * radius + 1
    stats = _filters.correlate_separable(torch.cat([x, x * x], dim=1), np.full(k, 1.0 / k))
    mean, mean_sq = stats[:, :c], stats[:, c:]
    var = mean_sq.sub_(mean * mean).clamp_min_(0)
    nv = noise_var.to(x.dtype).view(b, 1, 1, 1)
    gain = (var - nv).clamp_min_(0).div_(torch.maximum(var, nv).clamp_min_(1e-12))
    return gain.mul_(x - mean).add_(mean)


def substitute_radius(noise_var: float) -> int:
    """Window radius of the substitute: ceil(10σ) (3x3 at σ = 0.1 up to 9x9 at σ ≈ 0.39)."""
    return max(1, math.ceil(10 * math.sqrt(noise_var) - 1e-9))


class DnCNN(nn.Module):
    """A plain DnCNN: conv-ReLU-...-conv predicting the noise; forward returns the clean image."""

    def __init__(self, weights: list[tuple[torch.Tensor, torch.Tensor | None]]):
        super().__init__()
        self.convs = nn.ModuleList()
        for wt, bias in weights:
            out_c, in_c, kh, kw = wt.shape
            conv = nn.Conv2d(in_c, out_c, (kh, kw), padding=(kh // 2, kw // 2), bias=bias is not None)
            with torch.no_grad():
                conv.weight.copy_(wt)
                if bias is not None:
                    conv.bias.copy_(bias)
            self.convs.append(conv)
        self.in_channels = weights[0][0].shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i < len(self.convs) - 1:
                y = F.relu(y)
        return x - y


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return load_state_dict_file(path, "DnCNN")


def _weights_from_state(state: dict[str, torch.Tensor], path: Path) -> list:
    if any("running_mean" in k for k in state):
        raise CheckpointError("has BatchNorm layers: merge them into the convolutions first", path)
    convs = {}
    for key, t in state.items():
        m = re.match(r"(.*?)(\d+)\.(weight|bias)$", key)
        if m is None:
            raise CheckpointError(f"unexpected key {key!r} for a plain DnCNN", path)
        convs.setdefault(int(m.group(2)), {})[m.group(3)] = t.float()
    layers = [convs[i] for i in sorted(convs)]
    if not layers or any("weight" not in layer or layer["weight"].dim() != 4 for layer in layers):
        raise CheckpointError("expected 4-D convolution weights", path)
    in_c = layers[0]["weight"].shape[1]
    if in_c not in (1, 3) or layers[-1]["weight"].shape[0] != in_c:
        raise CheckpointError(f"expected 1 or 3 image channels in and out, got {in_c}", path)
    return [(layer["weight"], layer.get("bias")) for layer in layers]


def set_denoiser(checkpoint: str | Path | None) -> None:
    """Use a DnCNN checkpoint for type 15 (None restores the built-in substitute).

    Raises:
        CheckpointError: the file is missing, unreadable or not a plain DnCNN state dict.
    """
    if checkpoint is None:
        _STATE.update(path=None, state=None, nets={})
        return
    path = Path(checkpoint)
    weights = _weights_from_state(_load_state(path), path)
    DnCNN(weights)  # fail now, not in the middle of a run
    _STATE.update(path=path, state=weights, nets={})


def denoiser_name() -> str:
    """What type 15 uses now: `wiener2-substitute` or `dncnn:<file>`."""
    return "wiener2-substitute" if _STATE["path"] is None else f"dncnn:{_STATE['path'].name}"


def _network(device: torch.device) -> DnCNN:
    key = str(device)
    if key not in _STATE["nets"]:
        _STATE["nets"][key] = DnCNN(_STATE["state"]).to(device).eval()
    return _STATE["nets"][key]


@torch.no_grad()
def denoise(x: torch.Tensor, noise_var: torch.Tensor, radius: int) -> torch.Tensor:
    """Denoise a noisy batch with the plugged DnCNN, else the `wiener2` substitute."""
    if _STATE["state"] is None:
        return wiener_denoise(x, noise_var, radius)
    net = _network(x.device)
    b, c, h, w = x.shape
    if net.in_channels == 1:
        return net(x.reshape(b * c, 1, h, w).float()).reshape(b, c, h, w).to(x.dtype)
    return net(x.float()).to(x.dtype)
