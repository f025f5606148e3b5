"""ResNet backbones: the quality encoder (student), the frozen KD teacher, probing encoders.

A `ResNetBackbone` is a torchvision ResNet without its `fc` layer. Its state-dict keys are
torchvision's (`conv1.*`, `bn1.*`, `layer1.*` ... `layer4.*`), so torchvision ImageNet weights
load into it directly and an exported quality encoder loads back into a torchvision ResNet.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from dsmix_cli.engine.checkpoint import load_state_dict_file
from dsmix_cli.errors import CheckpointError, DsmixError

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# torchvision's ImageNet-V1 weights (the author's SaTQA used `resnet50(weights=IMAGENET1K_V1)`).
_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnet152": "ResNet152_Weights",
}


def imagenet_weights(arch: str):
    """The torchvision `IMAGENET1K_V1` weights enum of `arch`."""
    return getattr(torchvision.models, _WEIGHTS[arch]).IMAGENET1K_V1


def input_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input (mean, std) of `arch`'s pretrained weights, read from the weights' own transforms."""
    t = imagenet_weights(arch).transforms()
    return tuple(t.mean), tuple(t.std)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without `fc`: `forward` gives the global-average-pooled layer4 feature,
    `forward_stages` the outputs of layer1..layer4 (for semantic KD)."""

    def __init__(self, arch: str):
        super().__init__()
        if arch not in RESNET_ARCHS:
            raise DsmixError(f"unknown ResNet architecture {arch!r}; choose one of {', '.join(RESNET_ARCHS)}")
        net = getattr(torchvision.models, arch)(weights=None)
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features
        self.stage_dims = tuple(_stage_out_channels(getattr(net, f"layer{i}")) for i in range(1, 5))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (e.g. 256x56², 512x28², 1024x14², 2048x7² for RN50 at 224)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_stages(x)[-1], 1), 1)


def _stage_out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


def _load_pretrained_state(arch: str, pretrained: bool | str | Path) -> dict[str, torch.Tensor]:
    """ImageNet weights from torchvision (download or cache), or from a local file."""
    if isinstance(pretrained, (str, Path)) and str(pretrained) not in ("True", "true", "imagenet"):
        return load_state_dict_file(pretrained, f"{arch} weights")
    weights = imagenet_weights(arch)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - no network, proxy, bad cache ...
        raise DsmixError(
            f"could not get the ImageNet weights of {arch} ({type(exc).__name__}: {exc}). They are "
            f"downloaded from {weights.url} into the torch hub cache ({torch.hub.get_dir()}); without "
            f"internet, copy the file there, or give qep a local copy (--student-weights FILE for the student, "
            f"--teacher-weights FILE for the teacher), or train from random weights with --no-pretrained"
        ) from None


def build_resnet(arch: str, pretrained: bool | str | Path = False) -> ResNetBackbone:
    """A `ResNetBackbone`, optionally with ImageNet-V1 weights (or weights from a local file).

    Args:
        arch: resnet18/34/50/101/152.
        pretrained: False (random init), True (torchvision IMAGENET1K_V1), or a path to a
            torchvision-format state dict (`.pth` read with weights_only, or `.safetensors`).
    """
    model = ResNetBackbone(arch)
    if pretrained:
        state = _load_pretrained_state(arch, pretrained)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"weights do not fit {arch}: missing {result.missing_keys[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}", str(pretrained))
    return model
