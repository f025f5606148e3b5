"""The peers' released quality encoders (ARNIQA, CONTRIQUE, Re-IQA) as frozen feature extractors.

Each peer saves a ResNet trunk under its own key names; the trunk is mapped onto our
`ResNetBackbone` (torchvision names) with the exact missing/unexpected key check, and the rest
of the file must be the peer's projection head, or the file is refused with the keys named.

| `--encoder` | file | trunk keys | other keys | input | feature |
|---|---|---|---|---|---|
| `arniqa:FILE` | `ARNIQA.pth` (or a training checkpoint) | `[encoder.]model.{0,1,4-7}.*` (nn.Sequential of the trunk) | `[encoder.]projector.{0,2}.*` | ImageNet mean/std | GAP, L2-normalised |
| `contrique:FILE` | `CONTRIQUE_checkpoint25.tar` | `[module.]encoder.{0,1,4-7}.*` | `projector.{0,1,3,4}.*` | [0, 1], no mean/std | GAP, L2-normalised |
| `reiqa-quality:FILE` | `quality_aware_r50.pth` | `{"model": module.encoder.<torchvision>}` | `module.head.*` | [0, 1], no mean/std | GAP |
| `reiqa-content:FILE` | `content_aware_r50.pth` | as above | as above | ImageNet mean/std | GAP |
| `reiqa:CONTENT,QUALITY` | both | | | each its own | both, concatenated (content first) |

A bare `FILE` is recognised from its keys (ARNIQA, CONTRIQUE); a Re-IQA file holds no mark of
which of its two encoders it is, so it must be named. The architecture (ResNet-18 ... 152) is
read from the trunk's keys. Files are read with `torch.load(weights_only=True)`: a file that
needs pickle to load is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsmix_cli.errors import CheckpointError
from dsmix_cli.models.resnet import RESNET_ARCHS, ResNetBackbone

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PLAIN = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
PEER_KINDS = ("arniqa", "contrique", "reiqa-quality", "reiqa-content", "reiqa")
# nn.Sequential(*list(resnet.children())[:-1 or -2]) numbers the trunk: conv1, bn1, relu, maxpool, layer1..4
_SEQ = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_BLOCKS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
           ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
           ("bottleneck", (3, 8, 36, 3)): "resnet152"}


@dataclass(frozen=True)
class Layout:
    """Where a peer keeps its trunk: under `root + trunk`, numbered as an nn.Sequential or not."""

    name: str
    roots: tuple[str, ...]
    trunk: str
    sequential: bool
    aux: tuple[str, ...]  # the projection head's prefixes (under the same root), ignored
    container: str | None  # the checkpoint dict key holding the state dict
    stats: tuple
    l2: bool
    example: str


LAYOUTS = {
    "arniqa": Layout("ARNIQA", ("", "encoder.", "module.", "module.encoder."), "model.", True, ("projector.",),
                     None, IMAGENET, True, "model.0.weight"),
    "contrique": Layout("CONTRIQUE", ("", "module."), "encoder.", True, ("projector.",), None, PLAIN, True,
                        "encoder.0.weight"),
    "reiqa-quality": Layout("Re-IQA quality-aware", ("module.", ""), "encoder.", False, ("head.", "head_jig."),
                            "model", PLAIN, False, "module.encoder.conv1.weight"),
    "reiqa-content": Layout("Re-IQA content-aware", ("module.", ""), "encoder.", False, ("head.", "head_jig."),
                            "model", IMAGENET, False, "module.encoder.conv1.weight"),
}


def read_torch_file(path: Path) -> object:
    """`torch.load(weights_only=True)`; a file that needs pickle (or is no torch file) is refused."""
    if not path.is_file():
        raise CheckpointError("encoder file not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure: not a file of tensors we can read safely
        text = str(exc)
        if "weights_only" in text or "Unpickl" in type(exc).__name__ or "GLOBAL" in text:
            raise CheckpointError("holds Python objects beside its tensors and would need pickle to load, which "
                                  "dsmix never does; save its state_dict alone (torch.save(model.state_dict(), "
                                  "FILE))", path) from None
        raise CheckpointError(f"not a readable torch file ({type(exc).__name__})", path) from None


def _state_of(payload: object, layout: Layout, path: Path) -> dict:
    state = payload
    if isinstance(payload, dict) and layout.container and isinstance(payload.get(layout.container), dict):
        state = payload[layout.container]
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state = payload["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"holds no state dict of tensors (expected an {layout.name} checkpoint)", path)
    return state


def _split(state: dict, layout: Layout) -> tuple[str, dict, list[str]] | None:
    """(root, trunk keys in torchvision names, keys that are neither trunk nor head), or None."""
    for root in layout.roots:
        base = root + layout.trunk
        trunk = {k[len(base):]: v for k, v in state.items() if k.startswith(base)}
        if not trunk:
            continue
        if layout.sequential:
            mapped = {}
            for k, v in trunk.items():
                first, _, rest = k.partition(".")
                if first not in _SEQ:
                    mapped = None
                    break
                mapped[f"{_SEQ[first]}.{rest}"] = v
            if mapped is None:
                continue
            trunk = mapped
        if "conv1.weight" not in trunk:
            continue
        other = [k for k in state if not k.startswith(base) and not any(k.startswith(root + a) for a in layout.aux)]
        return root, trunk, other
    return None


def infer_arch(trunk: dict) -> str | None:
    """The torchvision ResNet whose blocks the trunk's keys describe, or None."""
    kind = "bottleneck" if "layer1.0.conv3.weight" in trunk else "basic"
    counts = []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in trunk if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        counts.append(max(blocks) + 1 if blocks else 0)
    return _BLOCKS.get((kind, tuple(counts)))


class PeerTrunk(nn.Module):
    """A peer's ResNet trunk: its own input normalisation, GAP, optionally L2-normalised."""

    def __init__(self, arch: str, stats: tuple, l2: bool):
        super().__init__()
        self.backbone = ResNetBackbone(arch)
        self.register_buffer("in_mean", torch.tensor(stats[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(stats[1]).view(1, 3, 1, 1), persistent=False)
        self.l2 = l2
        self.feature_dim = self.backbone.feature_dim
        self.feature_spec = f"{arch}|mean={stats[0]}|std={stats[1]}|l2={l2}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, 3, H, W) -> (B, feature_dim)."""
        f = self.backbone((x - self.in_mean) / self.in_std)
        return nn.functional.normalize(f, dim=1) if self.l2 else f


class PeerConcat(nn.Module):
    """Several trunks on the same input, features concatenated (Re-IQA: content, then quality)."""

    def __init__(self, trunks: list[PeerTrunk]):
        super().__init__()
        self.trunks = nn.ModuleList(trunks)
        self.feature_dim = sum(t.feature_dim for t in trunks)
        self.feature_spec = " + ".join(t.feature_spec for t in trunks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(x) for t in self.trunks], dim=1)


def load_trunk(kind: str, path: Path, payload: object | None = None) -> PeerTrunk:
    """One peer trunk from its file, with the exact key check.

    Raises:
        CheckpointError: not readable without pickle, not that peer's layout (the keys named),
            an unknown architecture, or trunk keys missing or extra.
    """
    layout = LAYOUTS[kind]
    state = _state_of(read_torch_file(path) if payload is None else payload, layout, path)
    found = _split(state, layout)
    if found is None:
        raise CheckpointError(f"is not {_an(layout.name)} checkpoint: no ResNet trunk under the expected keys "
                              f"(e.g. {layout.example}); its keys start {_first_keys(state)}", path)
    root, trunk, other = found
    arch = infer_arch(trunk)
    if arch is None:
        raise CheckpointError(f"its {layout.name} trunk is no torchvision ResNet ({', '.join(RESNET_ARCHS)}): "
                              f"keys {_first_keys(trunk)}", path)
    module = PeerTrunk(arch, layout.stats, layout.l2)
    expected = set(module.backbone.state_dict())
    missing = sorted(expected - set(trunk))
    extra = sorted(set(trunk) - expected) + sorted(other)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing trunk keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        raise CheckpointError(f"does not match {_an(layout.name)} {arch} checkpoint: " + "; ".join(parts), path)
    try:
        module.backbone.load_state_dict(trunk, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("\n")[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(f"its {layout.name} weights do not fit a {arch}: {first}", path) from None
    return module


def _first_keys(state: dict, n: int = 4) -> str:
    keys = list(state)[:n]
    return ", ".join(keys) + (", ..." if len(state) > n else "")


def detect_kind(path: Path, payload: object) -> str | None:
    """The peer layout a file's keys match (ARNIQA or CONTRIQUE), "reiqa" when it is a Re-IQA
    file (which of its two encoders cannot be told from the keys), or None."""
    for kind in ("arniqa", "contrique", "reiqa-quality"):
        try:
            state = _state_of(payload, LAYOUTS[kind], path)
        except CheckpointError:
            continue
        if _split(state, LAYOUTS[kind]) is not None:
            return "reiqa" if kind == "reiqa-quality" else kind
    return None


def load_peer(kind: str, files: list[Path]) -> tuple[nn.Module, str]:
    """(module, description) of `kind:FILE[,FILE]`; the module maps [0, 1] pixels to features."""
    if kind == "reiqa":
        if len(files) != 2:
            raise CheckpointError("reiqa: needs the content-aware and the quality-aware files, "
                                  "as reiqa:CONTENT.pth,QUALITY.pth", files[0] if files else None)
        trunks = [load_trunk("reiqa-content", files[0]), load_trunk("reiqa-quality", files[1])]
        return PeerConcat(trunks), (f"Re-IQA content + quality encoders ({trunks[0].backbone.arch}, features "
                                    f"concatenated; {files[0]}, {files[1]})")
    if len(files) != 1:
        raise CheckpointError(f"{kind}: takes one file", files[0] if files else None)
    trunk = load_trunk(kind, files[0])
    layout = LAYOUTS[kind]
    return trunk, f"{layout.name} encoder {trunk.backbone.arch} ({files[0]})"


def _an(name: str) -> str:
    return ("an " if name[0] in "AEIOU" else "a ") + name
