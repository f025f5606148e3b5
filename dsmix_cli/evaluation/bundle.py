"""The probed model: a frozen encoder, the MLP quality head, and the score normaliser.

`dsmix probe` saves one bundle in its run folder, `model.safetensors` (kind `probe-model`): the
head's weights, and as metadata the encoder reference (`--encoder` as resolved: an absolute path
for a qep run, else `timm:`/`random:` with its seed), a SHA-256 digest of the encoder's weights,
the score normaliser and the probe config. `load_bundle` rebuilds the encoder from its reference,
refuses it when the digest differs (the qep run was overwritten, another timm version), and
returns a `ProbedModel` that `dsmix score` and `dsmix evaluate` use.

Scores are in the normalised scale of the training labels: 0 = the worst, 1 = the best label of
the data the head was trained on, higher is better; `ScoreNormaliser.invert` gives the dataset's
raw units (for DMOS sets lower is better there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsmix_cli.data.splits import ScoreNormaliser
from dsmix_cli.engine.checkpoint import export_weights, load_state_dict_strict, load_weights
from dsmix_cli.errors import CheckpointError
from dsmix_cli.evaluation.heads import QualityHead
from dsmix_cli.models.encoders import Encoder, load_encoder

BUNDLE_FILE = "model.safetensors"
BUNDLE_KIND = "probe-model"
__all__ = ["BUNDLE_FILE", "BUNDLE_KIND", "ProbedModel", "QualityHead", "bundle_path", "load_bundle", "save_bundle"]


@dataclass
class ProbedModel:
    """What `score` and `evaluate` need: encoder, head, normaliser and the bundle's record."""

    encoder: Encoder
    head: QualityHead
    normaliser: ScoreNormaliser
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def image_size(self) -> int:
        return int(self.meta.get("image_size", 224))

    @torch.no_grad()
    def score_features(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised quality (higher = better) of images from their test-view features (B, V, D)."""
        return self.head.predict_views(features).cpu()


def bundle_path(run: str | Path) -> Path:
    """`run/model.safetensors` for a run folder, else the file itself."""
    run = Path(run)
    return run / BUNDLE_FILE if run.is_dir() else run


def save_bundle(run_dir: str | Path, head: QualityHead, encoder: Encoder, normaliser: ScoreNormaliser,
                *, dataset: str, image_size: int, config: dict, encoder_digest: str,
                extra: dict | None = None) -> Path:
    """Write `run_dir/model.safetensors` atomically and return its path."""
    path = Path(run_dir) / BUNDLE_FILE
    meta = {
        "kind": BUNDLE_KIND,
        "encoder": encoder.spec,
        "encoder_seed": encoder.seed,
        "encoder_description": encoder.description,
        "encoder_digest": encoder_digest,
        "feature_dim": head.feature_dim,
        "hidden": head.hidden,
        "image_size": int(image_size),
        "normaliser": normaliser.to_dict(),
        "dataset": dataset,
        "score_scale": "normalised: 0 = worst, 1 = best training label; higher is better",
        "config": config,
        **(extra or {}),
    }
    export_weights(path, head.state_dict(), meta)
    return path


def load_bundle(run: str | Path, device: torch.device | str = "cpu", *, check_digest: bool = True) -> ProbedModel:
    """Rebuild a probed model from its run folder (or `model.safetensors`).

    Raises:
        CheckpointError: no bundle, wrong kind, head weights that do not fit, or an encoder whose
            weights differ from those the head was trained on.
    """
    path = bundle_path(run)
    if not path.is_file():
        raise CheckpointError(f"no {BUNDLE_FILE} here: not a dsmix probe run", Path(run))
    state, meta = load_weights(path, kind=BUNDLE_KIND)
    try:
        feature_dim, hidden = int(meta["feature_dim"]), int(meta["hidden"])
        normaliser = ScoreNormaliser.from_dict(meta["normaliser"])
        encoder_spec = meta["encoder"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"incomplete probe-model metadata ({exc})", path) from None
    head = QualityHead(feature_dim, hidden)
    load_state_dict_strict(head, state, path)
    device = torch.device(device)
    encoder = load_encoder(encoder_spec, device, seed=int(meta.get("encoder_seed", 0)))
    if encoder.feature_dim != feature_dim:
        raise CheckpointError(f"its encoder {encoder_spec} gives {encoder.feature_dim}-d features, "
                              f"the head expects {feature_dim}", path)
    if check_digest and meta.get("encoder_digest") and encoder.digest() != meta["encoder_digest"]:
        raise CheckpointError(f"the weights of its encoder {encoder_spec} differ from those the head "
                              "was trained on (was the encoder run overwritten?); probe again", path)
    head = head.to(device).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return ProbedModel(encoder, head, normaliser, meta, path)
