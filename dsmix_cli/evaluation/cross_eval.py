"""Cross-dataset evaluation (the Re-IQA protocol, as the DSMix paper's Tab. 4 uses it).

The head is trained with the probe's recipe on the *whole* source dataset (no split; the
source's epochs by default), then tested on the *whole* target dataset with the 5-crop average,
with no selection on the target. SRCC is the paper's number; PLCC and KRCC come along.
Correlations are taken against the target's labels oriented higher = better (DMOS flipped).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from dsmix_cli.data.catalog import load_dataset
from dsmix_cli.data.splits import ScoreNormaliser
from dsmix_cli.engine.runtime import resolve_device, seed_everything
from dsmix_cli.errors import DsmixError, TrainingError
from dsmix_cli.evaluation.bundle import save_bundle
from dsmix_cli.evaluation.features import (FeatureCache, default_cache_dir, drop_unreadable, extract_features,
                                           fresh_view_sampler)
from dsmix_cli.evaluation.heads import cached_view_sampler, correlation_row, train_head
from dsmix_cli.evaluation.protocols import default_epochs, resolve_resize
from dsmix_cli.fileio import write_json
from dsmix_cli.models.encoders import load_encoder

DEFAULT_TRAIN_VIEWS = 4


@dataclass
class CrossEvalConfig:
    """Everything `dsmix cross-eval` resolves (saved as `config.json`)."""

    encoder: str
    train: str
    test: str
    out: str
    train_root: str | None = None
    test_root: str | None = None
    train_csv: str | None = None
    test_csv: str | None = None
    epochs: int | None = None  # None: the paper's for the source dataset
    skip_missing: bool = False
    train_views: int = DEFAULT_TRAIN_VIEWS
    fresh_crops: bool = False
    batch_size: int = 64
    lr: float = 7e-4
    weight_decay: float = 0.01
    hidden: int = 1024
    feature_norm: bool = True
    image_size: int = 224
    resize: str = "auto"  # auto: each dataset's protocol size (KonIQ 512x384); none; or WxH
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    allow_outside_root: bool = False  # accept label entries that resolve outside the dataset folders
    feature_cache: bool = True
    cache_dir: str | None = None  # None: $DSMIX_HOME/feature-cache


def run_cross_eval(cfg: CrossEvalConfig, on_progress: Callable[[str, int, int], None] | None = None,
                   on_info: Callable[[str], None] | None = None,
                   on_warn: Callable[[str], None] | None = None) -> dict:
    """Train a head on all of `cfg.train`, test it on all of `cfg.test`; write `out/results.json`.

    Returns:
        `{"srcc", "plcc", "krcc", "plcc_logistic", "n", "train", "test", "n_train", "encoder", ...}`.
    """
    say = on_info or (lambda _m: None)
    warn = on_warn or say
    tick = on_progress or (lambda *_a: None)
    if cfg.train_views < 1 and not cfg.fresh_crops:
        raise DsmixError("--train-views must be at least 1 (or use --fresh-crops)")
    cfg = replace(cfg, epochs=cfg.epochs or default_epochs(cfg.train))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    def load(name, root, csv):
        return load_dataset(name, Path(root) if root else None, skip_missing=cfg.skip_missing,
                            csv=Path(csv) if csv else None, allow_outside_root=cfg.allow_outside_root)

    source, target = load(cfg.train, cfg.train_root, cfg.train_csv), load(cfg.test, cfg.test_root, cfg.test_csv)
    encoder = load_encoder(cfg.encoder, device, seed=cfg.seed)
    say(f"encoder: {encoder.description}; train on all {len(source.items)} images of {source.name}, "
        f"test on all {len(target.items)} images of {target.name}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", asdict(cfg))
    digest_before = encoder.digest()
    t0 = time.perf_counter()

    cache = FeatureCache((cfg.cache_dir or default_cache_dir()) if cfg.feature_cache else None, on_info=say)
    resize = {"train": resolve_resize(cfg.resize, cfg.train), "test": resolve_resize(cfg.resize, cfg.test)}
    feats = {}
    for role, ds, components in (("train", source, {} if cfg.fresh_crops else {"train": cfg.train_views}),
                                 ("test", target, {"five": 5})):
        done = [0]

        def tick_images(n, _role=role, _total=len(ds.items)):
            done[0] += n
            tick(f"features ({_role})", done[0], _total)

        tick(f"features ({role})", 0, len(ds.items))
        vf = extract_features(encoder, ds.paths(), components, image_size=cfg.image_size, seed=cfg.seed,
                              workers=cfg.workers, resize_to=resize[role], cache=cache, encoder_digest=digest_before,
                              on_progress=tick_images)
        kept, f, bad = drop_unreadable(ds, vf, cfg.skip_missing)
        for e in bad:
            warn(f"skipped unreadable image: {e}")
        feats[role] = (kept, f)
    source, source_feats = feats["train"]
    target, target_feats = feats["test"]
    train_feats = source_feats.parts["train"].to(device) if not cfg.fresh_crops else None
    test_feats = target_feats.parts["five"].to(device)

    normaliser = ScoreNormaliser.fit(source.scores(), source.lower_better, source=source.label_file)
    targets = torch.as_tensor(normaliser.apply(source.scores()), dtype=torch.float32)
    if cfg.fresh_crops:
        sampler = fresh_view_sampler(encoder, source.paths(), image_size=cfg.image_size, seed=cfg.seed,
                                     workers=cfg.workers, key=("cross",), resize_to=resize["train"])
    else:
        sampler = cached_view_sampler(train_feats, cfg.seed, "cross")
    metrics = (out / "metrics.jsonl").open("w", encoding="utf-8")

    def on_epoch(rec):
        metrics.write(json.dumps(rec) + "\n")
        tick("head", rec["epoch"], cfg.epochs)

    tick("head", 0, cfg.epochs)
    with metrics:
        head, info = train_head(sampler, targets, feature_dim=encoder.feature_dim, epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                hidden=cfg.hidden, seed=cfg.seed, key=("cross",), device=device,
                                on_epoch=on_epoch, standardize=cfg.feature_norm)
    pred = head.predict_views(test_feats).cpu().numpy()
    raw_test = target.scores()
    corr = correlation_row(pred, ScoreNormaliser.fit(raw_test, target.lower_better,
                                                     source=target.label_file).apply(raw_test))
    if encoder.digest() != digest_before:
        raise TrainingError("the encoder's weights changed during cross-evaluation (they must stay frozen); "
                            "this is a bug")
    results = {
        "srcc": corr["srcc"], "plcc": corr["plcc"], "krcc": corr["krcc"],
        "plcc_logistic": corr["plcc_logistic"], "n": len(target.items),
        "train": source.name, "test": target.name, "n_train": len(source.items),
        "encoder": encoder.spec, "encoder_description": encoder.description,
        "epochs": cfg.epochs, "final_loss": info["loss"],
        "train_views": "fresh crops every epoch" if cfg.fresh_crops else cfg.train_views,
        "protocol": "head trained on all of the source set, tested on all of the target set (Re-IQA)",
        "encoder_unchanged": True,
        "seconds": round(time.perf_counter() - t0, 2),
        "model": str(out.resolve()),
        "config": asdict(cfg),
    }
    save_bundle(out, head, encoder, normaliser, dataset=source.name, image_size=cfg.image_size,
                config=asdict(cfg), encoder_digest=digest_before, extra={"trained_on": f"all of {source.name}"})
    write_json(out / "results.json", results)
    return results
