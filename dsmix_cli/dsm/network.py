"""The DSM network F_theta (docs/method.md section 2, Eq. 1): a ViT without its class token and a
per-token decoder to one value, reshaped to the token grid.

DSM_hat = R(MLP(E(x_p + E_pos))): the patch embedding, the *patch part* of the position
embedding (timm's index 0, the class token's, is dropped), the L blocks and the final LayerNorm
(kept, ours), then Linear(D, 1) per token (ours; "mlp" = D -> D -> GELU -> 1), reshaped row-major
to (H / p, W / p), the order timm's patch embedding flattens in.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dsmix_cli.engine.checkpoint import load_state_dict_strict, load_weights
from dsmix_cli.errors import CheckpointError, DsmixError
from dsmix_cli.models.hub import hub_unreachable

DEFAULT_ARCH = "vit_base_patch8_224"
DECODERS = ("linear", "mlp")
WEIGHTS_FILE = "dsm.safetensors"
KIND = "dsm-net"


def _decoder(name: str, dim: int) -> nn.Module:
    if name == "linear":
        return nn.Linear(dim, 1)
    if name == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
    raise DsmixError(f"--decoder {name!r}: expected one of {', '.join(DECODERS)}")


class DSMNet(nn.Module):
    """A ViT encoder without class token + a per-token decoder: images -> one value per patch.

    Attributes:
        vit: the timm `VisionTransformer` (no class token, no head).
        decoder: the per-token map D -> 1.
        patch_size: p; the output is (H // p, W // p) and the GT pool must equal it.
        arch, image_size, decoder_name, vit_kwargs: what rebuilds the model (saved with weights).
    """

    def __init__(self, vit: nn.Module, decoder: str, arch: str, image_size: int, vit_kwargs: dict | None = None):
        super().__init__()
        import timm.data

        self.vit = vit
        self.decoder = _decoder(decoder, vit.embed_dim)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.arch, self.image_size, self.decoder_name = arch, int(image_size), decoder
        self.vit_kwargs = dict(vit_kwargs or {})
        cfg = timm.data.resolve_model_data_config(vit)
        # Input normalisation of the pretrained weights (ours, docs/method.md section 2): 0.5/0.5 for augreg ViTs.
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Raw (unclamped) maps of images in [0, 1].

        Args:
            x01: (B, 3, H, W) float images in [0, 1]; H and W multiples of `patch_size`.

        Returns:
            (B, H // p, W // p) maps (in the autocast dtype when under autocast).
        """
        b, _, h, w = x01.shape
        x = (x01 - self.mean) / self.std
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]  # (B, N, D), N = (H/p)(W/p)
        return self.decoder(tokens).squeeze(-1).reshape(b, h // self.patch_size, w // self.patch_size)

    @torch.no_grad()
    def predict(self, x01: torch.Tensor) -> torch.Tensor:
        """The map DSMix uses: `forward` without gradients, clamped at 0 (docs/method.md 3.1)."""
        return self.forward(x01).float().clamp(min=0)

    def meta(self) -> dict:
        """The record saved with exported weights; `load_dsm_model` rebuilds the model from it."""
        return {"kind": KIND, "arch": self.arch, "image_size": self.image_size, "decoder": self.decoder_name,
                "patch_size": self.patch_size, "vit_kwargs": self.vit_kwargs,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


def _create_vit(arch: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        vit = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise DsmixError(f"--arch {arch!r}: not a timm model (try vit_base_patch8_224)") from None
        raise
    except TypeError as exc:  # a non-ViT builder rejects the ViT options (class_token, img_size, ...)
        raise DsmixError(f"--arch {arch!r} is not a timm VisionTransformer ({exc})") from None
    if not isinstance(vit, VisionTransformer):
        raise DsmixError(f"--arch {arch!r} is a {type(vit).__name__}, not a timm VisionTransformer")
    return vit


def _pretrained_state(arch: str, image_size: int, pretrained: bool | str | Path, vit_kwargs: dict) -> dict:
    """The timm ViT's pretrained weights, converted for the class-token-free model.

    The standard model (with class token) is built by timm from its hub cache or a local file
    (read with weights_only), then: `cls_token` dropped, `pos_embed[:, prefix:]` kept and
    resampled to this image size's grid, the classifier head dropped.
    """
    import timm.models as timm_models
    from timm.layers import resample_abs_pos_embed

    overlay = {}
    if not isinstance(pretrained, bool):
        path = Path(pretrained)
        if not path.is_file():
            raise CheckpointError("pretrained ViT weights file not found", path)
        overlay = {"pretrained_cfg_overlay": {"file": str(path)}}
    try:
        hub_id = timm_models.get_pretrained_cfg(arch).hf_hub_id or f"timm/{arch}"
    except Exception:  # noqa: BLE001 - only for the message and the cache look-up
        hub_id = f"timm/{arch}"
    try:
        if not overlay and hub_unreachable(hub_id):
            # fail at once instead of after the hub client's retries (about a minute offline)
            raise OSError("not in the local Hugging Face cache and the hub cannot be reached (offline?)")
        std = _create_vit(arch, True, num_classes=0, **vit_kwargs, **overlay)
    except DsmixError:
        raise
    except Exception as exc:  # noqa: BLE001 - no network, bad cache, foreign file ...
        source = f"the file {pretrained}" if overlay else "the Hugging Face hub (or its local cache)"
        raise DsmixError(
            f"could not load the pretrained {arch} weights from {source} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Without internet, download model.safetensors from "
            f"https://huggingface.co/{hub_id} on a connected machine and pass it with --weights FILE, or copy "
            f"the Hugging Face cache (HF_HOME) over, or train from scratch with --no-pretrained") from None
    state = std.state_dict()
    state.pop("cls_token", None)
    pos = state["pos_embed"]
    if not getattr(std, "no_embed_class", False) and std.num_prefix_tokens:
        pos = pos[:, std.num_prefix_tokens:]  # keep E_pos of the patches only
    grid = (image_size // std.patch_embed.patch_size[0], image_size // std.patch_embed.patch_size[1])
    if pos.shape[1] != grid[0] * grid[1]:
        pos = resample_abs_pos_embed(pos, new_size=list(grid), num_prefix_tokens=0)
    state["pos_embed"] = pos
    return {k: v for k, v in state.items() if not k.startswith("head")}


def build_dsm_net(arch: str = DEFAULT_ARCH, image_size: int = 224, pretrained: bool | str | Path = True,
                  decoder: str = "linear", **vit_kwargs) -> DSMNet:
    """The DSM network: a timm ViT created without class token, plus the decoder.

    Args:
        arch: any timm VisionTransformer name (default ViT-B/8, the paper's).
        image_size: the training crop; any multiple of the patch size (other sizes work at
            inference too: the position embedding is resampled on the fly).
        pretrained: True (timm's default weights for `arch`, from the hub or its cache), False
            (random initialisation) or a local weights file in timm's format.
        decoder: "linear" (Linear(D, 1), the default, ours) or "mlp" (D -> D -> GELU -> 1).
        **vit_kwargs: extra timm model arguments (e.g. `depth=2` for tests); `None` values are
            dropped by timm.

    Raises:
        DsmixError: unknown arch, not a ViT, image size not a multiple of the patch, or pretrained
            weights that cannot be had (with what to do about it).
    """
    vit_kwargs = {k: v for k, v in vit_kwargs.items() if v is not None}
    vit = _create_vit(arch, False, img_size=image_size, class_token=False, global_pool="", num_classes=0,
                      dynamic_img_size=True, **vit_kwargs)
    p = vit.patch_embed.patch_size[0]
    if image_size % p:
        raise DsmixError(f"--image-size {image_size} is not a multiple of {arch}'s patch size {p}")
    if pretrained:
        state = _pretrained_state(arch, image_size, pretrained, vit_kwargs)
        load_state_dict_strict(vit, state, str(pretrained) if not isinstance(pretrained, bool) else arch)
    return DSMNet(vit, decoder, arch, image_size, vit_kwargs)


def load_dsm_model(source: str | Path, device: torch.device | str = "cpu") -> DSMNet:
    """A trained DSM network, frozen and in eval mode.

    Args:
        source: a `pretrain-dsm` run folder (reads `RUN/dsm.safetensors`) or that file itself.
        device: where to put it.

    Raises:
        CheckpointError: missing file, not DSM-network weights, or weights that do not fit.
    """
    source = Path(source)
    path = source / WEIGHTS_FILE if source.is_dir() else source
    if source.is_dir() and not path.is_file():
        raise CheckpointError(f"no {WEIGHTS_FILE} in this folder (is it a finished `dsmix pretrain-dsm` run?)",
                              source)
    state, meta = load_weights(path, kind=KIND)
    try:
        model = build_dsm_net(meta["arch"], int(meta["image_size"]), pretrained=False, decoder=meta["decoder"],
                              **meta.get("vit_kwargs", {}))
    except KeyError as exc:
        raise CheckpointError(f"DSM weights metadata lacks {exc}", path) from None
    except DsmixError as exc:
        raise CheckpointError(f"cannot rebuild the DSM network ({exc})", path) from None
    if model.patch_size != int(meta.get("patch_size", model.patch_size)):
        raise CheckpointError(f"patch size {meta['patch_size']} in the metadata, {model.patch_size} in the model",
                              path)
    load_state_dict_strict(model, state, path)
    model.requires_grad_(False)
    return model.eval().to(device)
