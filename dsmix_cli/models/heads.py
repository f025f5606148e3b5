"""Classification heads and the quality-encoder network trained by QEP (docs/method.md, section 4).

`QualityEncoderNet` is a `ResNetBackbone` (the quality encoder, exported alone after
pre-training) with MLP heads on its global-average-pooled layer4 feature: a 26-way type head
(0 = pristine + 25 types), a 6-way level head (0 = pristine + 5 levels) and, optionally, a
126-way joint head (`qep --joint-head`; why two heads by default: docs/method.md section 4).
"""

from __future__ import annotations

import torch
from torch import nn

from dsmix_cli.models.resnet import ResNetBackbone


class MLPHead(nn.Sequential):
    """in_dim -> hidden -> BatchNorm -> ReLU -> num_classes (ours: SaTQA's projector pattern, docs/method.md 4)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 1024):
        super().__init__(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )


class QualityEncoderNet(nn.Module):
    """Quality encoder + classification heads.

    Args:
        backbone: the ResNet student.
        num_types: distortion types (the type head has num_types + 1 classes).
        num_levels: levels per type (the level head has num_levels + 1 classes).
        joint_head: also add the (num_types * num_levels + 1)-way joint head.
        hidden: hidden width of every head (2048 -> 1024 for ResNet-50).
    """

    def __init__(self, backbone: ResNetBackbone, num_types: int = 25, num_levels: int = 5,
                 joint_head: bool = False, hidden: int = 1024):
        super().__init__()
        self.backbone = backbone
        dim = backbone.feature_dim
        # Attributes, not a ModuleDict: "type" is a reserved nn.Module attribute name.
        self.type_head = MLPHead(dim, num_types + 1, hidden)
        self.level_head = MLPHead(dim, num_levels + 1, hidden)
        self.joint_head = MLPHead(dim, num_types * num_levels + 1, hidden) if joint_head else None

    @property
    def heads(self) -> dict[str, nn.Module]:
        """The heads by target name (`type`, `level`[, `joint`]), as `dsmix.soft_targets` names them."""
        heads = {"type": self.type_head, "level": self.level_head}
        if self.joint_head is not None:
            heads["joint"] = self.joint_head
        return heads

    def forward(self, x: torch.Tensor, return_stages: bool = False):
        """Logits of every head, as a dict; with `return_stages`, also the layer1..4 outputs.

        Returns:
            `{"type": (B, 26), "level": (B, 6)[, "joint": (B, 126)]}`, or
            `(logits, [layer1, ..., layer4])` with `return_stages`.
        """
        stages = self.backbone.forward_stages(x)
        feature = torch.flatten(nn.functional.adaptive_avg_pool2d(stages[-1], 1), 1)
        logits = {name: head(feature) for name, head in self.heads.items()}
        return (logits, stages) if return_stages else logits
