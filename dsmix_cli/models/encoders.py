"""Frozen image encoders for probing and scoring: a `dsmix qep` run, timm ImageNet weights, a
peer's released encoder, or a random initialisation (the baseline).

`load_encoder(spec, device)` understands these kinds of `--encoder`:

* a `dsmix qep` run folder, its `encoder.safetensors` (exported weights, kind `qep-encoder`) or its
  `last.pt` / `best.pt` training checkpoint (kind `qep`);
* `timm:<model>`: `timm.create_model(<model>, pretrained=True, num_classes=0)` (ImageNet weights,
  downloaded or from the Hugging Face cache);
* a peer's released checkpoint (ARNIQA, CONTRIQUE, Re-IQA), mapped onto our ResNet (`models.peers`);
* `random:<model>`: random initialisation; `resnet*` through `models.resnet.build_resnet`, any
  other name through timm with `pretrained=False`. The initialisation is seeded, so the same spec
  and seed rebuild the same weights (a probed bundle records both and checks a digest).

Loading asserts the exact expected state-dict keys (MAE / MoCo v3 `main_lincls.py` practice). The
returned `Encoder` is in eval mode with every parameter frozen; its `digest()` lets the probe
check afterwards that the weights are bit-identical (MoCo v3's sanity check).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsmix_cli.engine.checkpoint import load_checkpoint, load_state_dict_strict, load_weights
from dsmix_cli.engine.runtime import derive_seed
from dsmix_cli.errors import CheckpointError, DsmixError
from dsmix_cli.models.hub import hub_unreachable, timm_hub_id
from dsmix_cli.models.resnet import RESNET_ARCHS, ResNetBackbone, input_stats

# Where a qep training checkpoint may keep the student backbone inside its `model` state dict.
_QEP_PREFIXES = ("encoder.", "student.", "backbone.", "module.encoder.", "module.student.", "")


@dataclass
class Encoder:
    """A frozen feature extractor and how to feed it.

    Attributes:
        module: the network, eval mode, `requires_grad=False`; `module(x)` -> (B, feature_dim).
        feature_dim: width of the pooled feature.
        mean, std: per-channel input normalisation of the weights (applied to [0, 1] pixels).
        spec: the reference a bundle records to rebuild it (an absolute path for files).
        description: a human-readable line recorded in results (kind, arch, source).
        image_size: the crop size the weights were trained at, when known.
        seed: the initialisation seed (only meaningful for `random:` encoders).
    """

    module: nn.Module
    feature_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spec: str
    description: str
    image_size: int | None = None
    seed: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) images (B, 3, H, W) -> normalised float input on the encoder's device."""
        x = images.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, feature_dim), float32, of uint8 images (B, 3, H, W)."""
        return self.module(self.normalize(images)).float()

    def digest(self) -> str:
        """SHA-256 of every parameter and buffer (names, shapes, dtypes, values)."""
        return weights_digest(self.module)


def weights_digest(module: nn.Module) -> str:
    """A bit-exact fingerprint of a module's state dict, independent of memory format and device."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _freeze(module: nn.Module, device: torch.device) -> nn.Module:
    module = module.to(device).eval()
    if device.type == "cpu":
        module = module.to(memory_format=torch.channels_last)  # ~25% faster convolutions on CPU
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _timm():
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is a dependency
        raise DsmixError("timm is not installed; `pip install timm` to use timm: encoders") from None
    return timm


def _timm_feature_dim(model: nn.Module) -> int:
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _timm_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    cfg = _timm().data.resolve_model_data_config(model)
    size = cfg.get("input_size")
    return tuple(cfg["mean"]), tuple(cfg["std"]), (int(size[-1]) if size else None)


def _load_timm(name: str, device: torch.device) -> Encoder:
    timm = _timm()
    try:
        hub_id = timm_hub_id(name)
        if hub_id is not None and hub_unreachable(hub_id):
            # fail at once instead of after the hub client's retries (about a minute offline)
            raise OSError("not in the local Hugging Face cache and the hub cannot be reached (offline?)")
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise DsmixError(f"--encoder timm:{name}: timm has no model {name!r} "
                             "(see timm.list_models())") from None
        raise DsmixError(f"--encoder timm:{name}: could not get its ImageNet weights ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - offline, proxy, missing cache, no pretrained cfg ...
        raise DsmixError(
            f"--encoder timm:{name}: could not get its ImageNet weights ({type(exc).__name__}: {exc}). "
            "timm downloads them from the Hugging Face hub into its cache (~/.cache/huggingface); "
            f"without internet, copy that cache from a connected machine, or pass --encoder random:{name} "
            "(random weights, a baseline) or --encoder RUN (a dsmix qep run)") from None
    mean, std, size = _timm_stats(model)
    return Encoder(_freeze(model, device), _timm_feature_dim(model), mean, std, f"timm:{name}",
                   f"timm:{name} (ImageNet weights)", size)


def _load_random(name: str, device: torch.device, seed: int) -> Encoder:
    # A seeded initialisation: the same (name, seed) rebuilds the same weights on this torch.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "random-encoder", name))
        if name in RESNET_ARCHS:
            model: nn.Module = ResNetBackbone(name)
            mean, std = input_stats(name)
            dim, size = model.feature_dim, 224
        else:
            timm = _timm()
            try:
                model = timm.create_model(name, pretrained=False, num_classes=0)
            except RuntimeError as exc:
                raise DsmixError(f"--encoder random:{name}: {exc}") from None
            mean, std, size = _timm_stats(model)
            dim = _timm_feature_dim(model)
    return Encoder(_freeze(model, device), dim, tuple(mean), tuple(std), f"random:{name}",
                   f"random:{name} (random initialisation, seed {seed})", size, seed)


def _backbone_from_meta(meta: dict, source: Path) -> ResNetBackbone:
    arch = meta.get("arch")
    if arch not in RESNET_ARCHS:
        raise CheckpointError(f"names no known ResNet architecture (arch={arch!r})", source)
    return ResNetBackbone(arch)


def _stats_from(meta: dict, arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = meta.get("input_mean"), meta.get("input_std")
    if mean is None or std is None:
        mean, std = input_stats(arch)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _load_exported(path: Path, device: torch.device) -> Encoder:
    state, meta = load_weights(path, kind="qep-encoder")
    model = _backbone_from_meta(meta, path)
    load_state_dict_strict(model, state, path)
    mean, std = _stats_from(meta, model.arch)
    size = meta.get("image_size")
    return Encoder(_freeze(model, device), model.feature_dim, mean, std, str(path.resolve()),
                   f"qep encoder {model.arch} ({path.resolve()})", int(size) if size else None)


def _load_qep_checkpoint(path: Path, device: torch.device) -> Encoder:
    payload = load_checkpoint(path, kind="qep")
    config = payload.get("config") or {}
    model = _backbone_from_meta(config, path)
    full = payload.get("model")
    if not isinstance(full, dict):
        raise CheckpointError("qep checkpoint holds no model state dict", path)
    expected = set(model.state_dict())
    for prefix in _QEP_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
        if expected <= set(sub):
            if prefix == "":
                sub = {k: v for k, v in sub.items() if k in expected}
            load_state_dict_strict(model, sub, path)
            break
    else:
        raise CheckpointError(f"no {model.arch} backbone found in the checkpoint's model weights "
                              f"(looked under prefixes {[p for p in _QEP_PREFIXES if p]})", path)
    mean, std = _stats_from(config, model.arch)
    size = config.get("image_size")
    return Encoder(_freeze(model, device), model.feature_dim, mean, std, str(path.resolve()),
                   f"qep checkpoint {model.arch} ({path.resolve()})", int(size) if size else None)


def load_encoder(spec: str | Path, device: torch.device | str = "cpu", *, seed: int = 0) -> Encoder:
    """Build the frozen encoder named by `spec`.

    Args:
        spec: a qep run folder, its `encoder.safetensors` or `last.pt`/`best.pt`, `timm:<model>`,
            `random:<model>`, or a peer's checkpoint (`arniqa:FILE`, `contrique:FILE`,
            `reiqa-quality:FILE`, `reiqa-content:FILE`, `reiqa:CONTENT,QUALITY`, or a bare
            ARNIQA/CONTRIQUE file; see `models.peers`).
        device: where the encoder runs.
        seed: the initialisation seed of `random:` encoders.

    Raises:
        DsmixError: unknown model, missing file, weights that do not fit, or timm weights that
            cannot be downloaded (offline).
    """
    device = torch.device(device)
    text = str(spec)
    kind, _, rest = text.partition(":")
    if rest and kind in _peer_kinds():
        return _load_peer(kind, [Path(p) for p in rest.split(",")], device)
    if text.startswith("timm:"):
        return _load_timm(text[5:], device)
    if text.startswith("random:"):
        return _load_random(text[7:], device, seed)
    path = Path(text)
    if path.is_dir():
        for name in ("encoder.safetensors", "last.pt", "best.pt"):
            if (path / name).is_file():
                return load_encoder(path / name, device, seed=seed)
        raise CheckpointError("is not a dsmix qep run folder (no encoder.safetensors or last.pt); "
                              "pass a qep run, timm:<model> or random:<model>", path)
    if not path.exists():
        raise CheckpointError("encoder not found (expected a qep run folder or checkpoint, "
                              "timm:<model> or random:<model>)", path)
    if path.suffix == ".safetensors":
        return _load_exported(path, device)
    if path.suffix in (".pt", ".pth", ".tar"):
        return _load_torch_file(path, device)
    raise CheckpointError("unknown encoder file type (expected .safetensors, a qep .pt checkpoint, or a peer's "
                          ".pth/.tar: arniqa:FILE, contrique:FILE, reiqa:CONTENT,QUALITY)", path)


def _peer_kinds() -> tuple[str, ...]:
    from dsmix_cli.models.peers import PEER_KINDS

    return PEER_KINDS


def _load_peer(kind: str, files: list[Path], device: torch.device) -> Encoder:
    from dsmix_cli.models.peers import load_peer

    files = [f.expanduser().resolve() for f in files]
    module, description = load_peer(kind, files)
    spec = f"{kind}:{','.join(str(f) for f in files)}"
    # the module normalises its own input (peers differ), so the Encoder feeds it [0, 1] pixels
    return Encoder(_freeze(module, device), module.feature_dim, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), spec,
                   description, 224)


def _load_torch_file(path: Path, device: torch.device) -> Encoder:
    """A dsmix qep checkpoint, or a peer's checkpoint recognised from its keys."""
    from dsmix_cli.models.peers import detect_kind, read_torch_file

    payload = read_torch_file(path)
    if isinstance(payload, dict) and "format_version" in payload:
        return _load_qep_checkpoint(path, device)
    kind = detect_kind(path, payload)
    if kind == "reiqa":
        raise CheckpointError("is a Re-IQA checkpoint, and its keys do not say which of its two encoders it is: "
                              "pass reiqa-quality:FILE or reiqa-content:FILE, or both as reiqa:CONTENT,QUALITY", path)
    if kind is None:
        keys = list(payload)[:4] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError("is neither a dsmix qep checkpoint nor an ARNIQA, CONTRIQUE or Re-IQA checkpoint "
                              f"(its keys start {keys}; expected format_version (dsmix), model.0.weight (ARNIQA), "
                              "encoder.0.weight (CONTRIQUE) or model/module.encoder.conv1.weight (Re-IQA))", path)
    return _load_peer(kind, [path], device)
