"""Linear probing (METHOD.md section 5): a frozen encoder, an MLP head per split, median SRCC/PLCC.

Because the encoder is frozen (eval mode, BN statistics fixed), its features are computed once:
`train_views` random crop+flip views and the five test crops of every image go through it a
single time, and every head of every split trains on that cache (each epoch draws one of the
cached views per image, which stands in for a fresh random crop). `fresh_crops=True` instead
encodes a new random crop+flip of every training image every epoch: the paper's literal protocol,
(epochs x splits) times the encoder work.

Each split: `ScoreNormaliser` fitted on the training labels (min-max to [0, 1], DMOS flipped),
head `feature_dim -> 1024 -> ReLU -> 1`, Smooth L1 (beta 1), AdamW (lr 7e-4, wd 0.01), batch 64,
one cosine over the run; the result is the final epoch's, or with `val_ratio > 0` the epoch with
the best validation SRCC (never selected on the test split). The bundle saved for `dsmix score`
holds one more head trained the same way on every image of the dataset.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from dsmix_cli.data.catalog import DATASETS, Dataset, canonical_name, load_dataset
from dsmix_cli.data.splits import ScoreNormaliser, make_splits
from dsmix_cli.defaults import record_default
from dsmix_cli.engine import schedules
from dsmix_cli.engine.runtime import derive_seed, generator, resolve_device, seed_everything
from dsmix_cli.errors import DatasetError, DsmixError, TrainingError
from dsmix_cli.evaluation.bundle import QualityHead, save_bundle
from dsmix_cli.evaluation.metrics import MetricWarning, correlations, srcc, summarize
from dsmix_cli.evaluation.views import NUM_TEST_VIEWS, ViewDataset, ViewFeatures, encode_views
from dsmix_cli.fileio import write_json
from dsmix_cli.models.encoders import Encoder, load_encoder

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)
DEFAULT_TRAIN_VIEWS = 4


@dataclass
class ProbeConfig:
    """Everything `dsmix probe` resolves (saved as `config.json` and inside the bundle)."""

    encoder: str
    dataset: str
    out: str
    root: str | None = None
    csv: str | None = None
    lower_better: bool | None = None  # direction of a csv/pyiqa label file (None: the layout's default)
    splits: int = 10
    train_ratio: float = 0.8
    val_ratio: float = 0.0
    epochs: int | None = None  # None: the paper's for the dataset (DATASETS[name].epochs)
    skip_missing: bool = False
    train_views: int = DEFAULT_TRAIN_VIEWS
    fresh_crops: bool = False
    batch_size: int = 64
    lr: float = 7e-4
    weight_decay: float = 0.01
    hidden: int = 1024
    image_size: int = 224
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    feature_norm: bool = True  # standardise the head's input with training-feature statistics
    final_head: bool = True  # train the bundle's head on all images
    record: bool = True  # record the bundle as the default model
    allow_outside_root: bool = False  # accept label entries that resolve outside the dataset folder


def default_epochs(dataset: str) -> int:
    """The paper's probe epochs for a dataset (100 LIVE/CSIQ/CLIVE, 200 others); 100 if unknown."""
    return DATASETS[canonical_name(dataset)].epochs or 100


def correlation_row(pred: np.ndarray, target: np.ndarray) -> dict:
    """SRCC, raw PLCC, KRCC, RMSE and the logistic PLCC of predictions vs (normalised) labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # a degenerate split gives NaN, shown as such
        return correlations(pred, target, logistic=True)


def cached_view_sampler(features: torch.Tensor, seed: int, *key) -> Callable[[int], torch.Tensor]:
    """Epoch -> one cached training view per image, (n, K, D) -> (n, D), drawn from (seed, key, epoch)."""
    n, k = features.shape[:2]

    def pick(epoch: int) -> torch.Tensor:
        choice = torch.randint(0, k, (n,), generator=generator(seed, *key, "view", epoch))
        return features[torch.arange(n, device=features.device), choice.to(features.device)]

    return pick


@contextlib.contextmanager
def _head_threads(device: torch.device):
    """One CPU thread for the head's small matrices: with 2+ threads, a busy machine makes each
    AdamW step 10-30x slower (threads waiting on each other), and one thread is as fast when idle."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    _OUTER_THREADS.append(before)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        _OUTER_THREADS.pop()
        torch.set_num_threads(before)


_OUTER_THREADS: list[int] = []


@contextlib.contextmanager
def _encoder_threads():
    """Inside head training, give the encoder back the threads it had outside (fresh crops)."""
    if not _OUTER_THREADS:
        yield
        return
    torch.set_num_threads(_OUTER_THREADS[-1])
    try:
        yield
    finally:
        torch.set_num_threads(1)


def train_head(epoch_features: Callable[[int], torch.Tensor], targets: torch.Tensor, *, feature_dim: int,
               epochs: int, batch_size: int = 64, lr: float = 7e-4, weight_decay: float = 0.01,
               hidden: int = 1024, seed: int = 0, key: tuple = (), device: torch.device | str = "cpu",
               validate: Callable[[QualityHead], float] | None = None,
               on_epoch: Callable[[dict], None] | None = None,
               standardize: bool = True) -> tuple[QualityHead, dict]:
    """Train one quality head on features (METHOD.md Eq. 9: Smooth L1, AdamW, cosine annealing).

    Args:
        epoch_features: `epoch -> (n, feature_dim)` training features of that epoch (a cached view
            per image, or freshly encoded crops), row i for `targets[i]`.
        targets: (n,) normalised labels, higher = better.
        epochs: passes over the training images; the cosine anneals once over all their steps.
        batch_size: images per step (the last, smaller batch of an epoch is kept).
        validate: optional `head -> validation SRCC`; the head of the best epoch is returned.
        on_epoch: called with `{"epoch", "loss", "lr", "step"[, "val_srcc"]}` after each epoch.
        standardize: standardise the head's input with the mean/std of the first epoch's
            training features (see `QualityHead`).

    Returns:
        (head in eval mode, {"epoch": the epoch returned (1-based), "loss": its mean loss[, "val_srcc"]}).
    """
    device = torch.device(device)
    n = int(targets.shape[0])
    if n < 2:
        raise DsmixError(f"a head needs at least 2 training images, got {n}")
    with _head_threads(device):
        return _train_head(epoch_features, targets, feature_dim=feature_dim, epochs=epochs, batch_size=batch_size,
                           lr=lr, weight_decay=weight_decay, hidden=hidden, seed=seed, key=key, device=device,
                           validate=validate, on_epoch=on_epoch, standardize=standardize)


def _train_head(epoch_features, targets, *, feature_dim, epochs, batch_size, lr, weight_decay, hidden, seed, key,
                device, validate, on_epoch, standardize):
    n = int(targets.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head-init", *key))
        head = QualityHead(feature_dim, hidden).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay,
                                  fused=True if device.type == "cuda" else None)
    steps_per_epoch = math.ceil(n / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules.cosine(epochs * steps_per_epoch))
    targets = targets.to(device, torch.float32)
    loss_fn = nn.SmoothL1Loss(beta=1.0)
    best: dict = {}
    best_state = None
    step = 0
    first = epoch_features(0).to(device, torch.float32)
    if standardize:
        head.set_feature_stats(first)
    for epoch in range(epochs):
        head.train()
        feats = first if epoch == 0 else epoch_features(epoch).to(device, torch.float32)
        order = torch.randperm(n, generator=generator(seed, *key, "order", epoch)).to(device)
        total, lr_now = 0.0, optimizer.param_groups[0]["lr"]
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = loss_fn(head(feats[idx]), targets[idx])
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite head loss at epoch {epoch + 1}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        record = {"epoch": epoch + 1, "loss": total / n, "lr": lr_now, "step": step}
        if validate is not None:
            head.eval()
            record["val_srcc"] = float(validate(head))
            if not best or (math.isfinite(record["val_srcc"]) and record["val_srcc"] > best.get("val_srcc", -2)):
                best = {"epoch": epoch + 1, "loss": record["loss"], "val_srcc": record["val_srcc"]}
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if on_epoch is not None:
            on_epoch(record)
        if validate is None:
            best = {"epoch": epoch + 1, "loss": record["loss"]}
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, best


def extract(encoder: Encoder, paths: list, *, image_size: int, train_views: int, test_views: bool,
            seed: int, workers: int, on_progress: Callable[[int], None] | None = None) -> ViewFeatures:
    """Features of `train_views` random views (+ the 5 test crops) of each image, once."""
    ds = ViewDataset(paths, image_size, train_views=train_views, test_views=test_views, seed=seed)
    big = len(paths) * ds.views_per_image * encoder.feature_dim * 4 > (1 << 30)
    return encode_views(encoder, ds, workers=workers, dtype=torch.float16 if big else torch.float32,
                        on_progress=on_progress)


def fresh_view_sampler(encoder: Encoder, paths: list, *, image_size: int, seed: int, workers: int,
                       key: tuple) -> Callable[[int], torch.Tensor]:
    """Epoch -> features of a new random crop+flip of every image (the paper's literal protocol)."""

    def encode(epoch: int) -> torch.Tensor:
        ds = ViewDataset(paths, image_size, train_views=1, test_views=False, seed=seed,
                         key=("fresh", *key, epoch))
        with _encoder_threads():
            out = encode_views(encoder, ds, workers=workers)
        bad = [e for e in out.errors if e]
        if bad:
            raise DatasetError(f"an image became unreadable during training: {bad[0]}")
        return out.features[:, 0]

    return encode


def drop_unreadable(dataset: Dataset, feats: ViewFeatures, skip_missing: bool) -> tuple[Dataset, torch.Tensor, list[str]]:
    """Remove images the encoder pass could not read (with `skip_missing`), else refuse."""
    bad = [e for e in feats.errors if e]
    if not bad:
        return dataset, feats.features, []
    if not skip_missing:
        raise DatasetError(f"{len(bad)} of {len(dataset.items)} images cannot be read (e.g. {bad[0]}); "
                           "pass --skip-missing to go on without them")
    keep = feats.ok
    idx = [i for i, k in enumerate(keep.tolist()) if k]
    out = replace(dataset, items=[dataset.items[i] for i in idx],
                  unreadable=list(dataset.unreadable) + [dataset.items[i].path for i, k in enumerate(keep.tolist()) if not k],
                  split_columns={k: [v[i] for i in idx] for k, v in dataset.split_columns.items()})
    return out, feats.features[keep], bad


def summary(rows: list[dict], keys=("srcc", "plcc", "krcc", "plcc_logistic", "rmse")) -> dict:
    """{"median": {...}, "mean": {...}, "std": {...}} of the split rows (NaN ignored, std ddof=0)."""
    out: dict = {"median": {}, "mean": {}, "std": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for k in keys:
            stats = summarize([r.get(k, math.nan) for r in rows])
            for part in out:
                out[part][k] = stats[part]
    return out


def val_srcc(features: torch.Tensor, target: np.ndarray) -> Callable[[QualityHead], float]:
    """head -> SRCC of its 5-crop predictions on validation features (model selection only)."""

    def score(head: QualityHead) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            return srcc(head.predict_views(features).cpu().numpy(), target)

    return score


def _log(run_dir: Path, record: dict) -> None:
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def run_probe(cfg: ProbeConfig, on_progress: ProgressFn | None = None,
              on_info: Callable[[str], None] | None = None) -> dict:
    """Probe `cfg.encoder` on `cfg.dataset`: returns (and writes to `out/results.json`) the results.

    Writes `out/config.json`, `out/metrics.jsonl` (one line per head epoch), `out/results.json`
    and the bundle `out/model.safetensors`; records it as the default model (`cfg.record`).

    Raises:
        DsmixError: bad options, a dataset that does not load, an unknown encoder.
        TrainingError: the encoder's weights changed during probing (they must not).
    """
    say = on_info or (lambda _m: None)
    tick = on_progress or (lambda *_a: None)
    if cfg.train_views < 1 and not cfg.fresh_crops:
        raise DsmixError("--train-views must be at least 1 (or use --fresh-crops)")
    cfg = replace(cfg, epochs=cfg.epochs or default_epochs(cfg.dataset))
    if cfg.epochs < 1:
        raise DsmixError("--epochs must be at least 1")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    dataset = load_dataset(cfg.dataset, Path(cfg.root) if cfg.root else None, skip_missing=cfg.skip_missing,
                           csv=Path(cfg.csv) if cfg.csv else None, lower_better=cfg.lower_better,
                           allow_outside_root=cfg.allow_outside_root)
    make_splits(dataset, cfg.splits, cfg.train_ratio, cfg.val_ratio, cfg.seed)  # fail early on bad ratios
    encoder = load_encoder(cfg.encoder, device, seed=cfg.seed)
    say(f"encoder: {encoder.description}; dataset: {dataset.name} ({len(dataset.items)} images"
        + (f", {len(dataset.missing)} missing and skipped" if dataset.missing else "") + f") from {dataset.root}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    write_json(out / "config.json", asdict(cfg))
    digest_before = encoder.digest()
    t0 = time.perf_counter()

    train_views = 0 if cfg.fresh_crops else cfg.train_views
    n_all = len(dataset.items)
    done = [0]

    def extracted(n: int) -> None:
        done[0] += n
        tick("features", done[0], n_all)

    tick("features", 0, n_all)
    feats = extract(encoder, dataset.paths(), image_size=cfg.image_size, train_views=train_views,
                    test_views=True, seed=cfg.seed, workers=cfg.workers, on_progress=extracted)
    dataset, features, bad = drop_unreadable(dataset, feats, cfg.skip_missing)
    for e in bad:
        say(f"skipped unreadable image: {e}")
    t_features = time.perf_counter() - t0
    features = features.to(device)
    train_part, test_part = features[:, :train_views], features[:, train_views:]
    raw = dataset.scores()
    splits = make_splits(dataset, cfg.splits, cfg.train_ratio, cfg.val_ratio, cfg.seed)
    n_heads = len(splits) + (1 if cfg.final_head else 0)
    step_base = [0]

    def sampler(index: list[int], key: tuple):
        if cfg.fresh_crops:
            return fresh_view_sampler(encoder, [dataset.items[i].path for i in index], image_size=cfg.image_size,
                                      seed=cfg.seed, workers=cfg.workers, key=key)
        return cached_view_sampler(train_part[index], cfg.seed, *key)

    def fit_head(index: list[int], normaliser: ScoreNormaliser, key: tuple, head_no: int, validate=None):
        def on_epoch(rec: dict) -> None:
            _log(out, {**rec, "step": step_base[0] + rec["step"], "head": key[-1] if key else "final"})
            tick("heads", head_no * cfg.epochs + rec["epoch"], n_heads * cfg.epochs)

        targets = torch.as_tensor(normaliser.apply(raw[index]), dtype=torch.float32)
        head, info = train_head(sampler(index, key), targets, feature_dim=encoder.feature_dim, epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                hidden=cfg.hidden, seed=cfg.seed, key=key, device=device,
                                validate=validate, on_epoch=on_epoch, standardize=cfg.feature_norm)
        step_base[0] += cfg.epochs * math.ceil(len(index) / cfg.batch_size)
        return head, info

    tick("heads", 0, n_heads * cfg.epochs)
    rows = []
    for k, split in enumerate(splits):
        normaliser = ScoreNormaliser.fit(raw[split.train], dataset.lower_better)
        validate = val_srcc(test_part[split.val], normaliser.apply(raw[split.val])) if split.val else None
        head, info = fit_head(split.train, normaliser, ("split", split.index), k, validate)
        if k == 0:
            first = (head, normaliser)
        pred = head.predict_views(test_part[split.test]).cpu().numpy()
        row = {"split": split.index, **correlation_row(pred, normaliser.apply(raw[split.test])),
               "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
               "epoch": info["epoch"], **({"val_srcc": info["val_srcc"]} if "val_srcc" in info else {})}
        rows.append(row)
        _log(out, {"step": step_base[0], "split": split.index, "loss": info["loss"], "test_srcc": row["srcc"],
                   "test_plcc": row["plcc"]})

    all_idx = list(range(len(dataset.items)))
    normaliser = ScoreNormaliser.fit(raw, dataset.lower_better)
    if cfg.final_head:
        final_head, _ = fit_head(all_idx, normaliser, ("final",), len(splits))
    else:  # the bundle keeps the first split's head and normaliser
        final_head, normaliser = first

    digest_after = encoder.digest()
    if digest_after != digest_before:
        raise TrainingError("the encoder's weights changed during probing (they must stay frozen): "
                            f"digest {digest_before[:12]} before, {digest_after[:12]} after; this is a bug")
    stats = summary(rows)
    results = {
        "dataset": dataset.name,
        "encoder": encoder.spec,
        "encoder_description": encoder.description,
        "splits": rows,
        **stats,
        "n_images": len(dataset.items),
        "missing": len(dataset.missing),
        "unreadable": len(bad),
        "train_views": "fresh crops every epoch" if cfg.fresh_crops else cfg.train_views,
        "test_views": NUM_TEST_VIEWS,
        "selection": "best validation SRCC" if cfg.val_ratio > 0 else "final epoch",
        "model_head": "trained on all images" if cfg.final_head else "split 0",
        "encoder_unchanged": True,
        "encoder_digest": digest_before,
        "epochs": cfg.epochs,
        "seconds": {"features": round(t_features, 2), "total": round(time.perf_counter() - t0, 2)},
        "model": str(out.resolve()),
        "config": asdict(cfg),
    }
    save_bundle(out, final_head, encoder, normaliser, dataset=dataset.name, image_size=cfg.image_size,
                config=asdict(cfg), encoder_digest=digest_before,
                extra={"median": stats["median"], "trained_on": "all images" if cfg.final_head else "split 0 train",
                       "label_file": str(dataset.label_file) if dataset.label_file else None})
    write_json(out / "results.json", results)
    if cfg.record:
        record_default("model", out)
    return results
