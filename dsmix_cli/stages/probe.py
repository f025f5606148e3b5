"""`dsmix probe`: a frozen encoder measured under one or several probing protocols.

The stage resolves the protocols (`evaluation.protocols`: DSMix's MLP probe by default, ARNIQA's
and CONTRIQUE's ridge probes), loads the dataset and the splits (random, per protocol, or one
split file for all), encodes the union of the view components the protocols need once (read
from the on-disk feature cache when it holds them, `evaluation.features`), runs each protocol's
heads over its splits, and writes the run folder: `results.json`, `config.json`, `metrics.jsonl`,
the splits used (`splits.json`, or `splits-<protocol>.json` per protocol) and, when an MLP on
the paper views was run, the bundle `model.safetensors` (its head trained on every image) that
`dsmix score` and `dsmix evaluate` use.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from dsmix_cli.data.catalog import Dataset, load_dataset
from dsmix_cli.data.split_files import read_splits, write_splits
from dsmix_cli.data.splits import Split, make_splits
from dsmix_cli.defaults import record_default
from dsmix_cli.engine.runtime import resolve_device, seed_everything
from dsmix_cli.errors import DsmixError, TrainingError
from dsmix_cli.evaluation.bundle import save_bundle
from dsmix_cli.evaluation.features import (FeatureCache, components_for, default_cache_dir, drop_unreadable,
                                           extract_features, fresh_view_sampler)
from dsmix_cli.evaluation.protocols import (MLPRecipe, Protocol, default_epochs, head_units, protocol_summary_row,
                                            resolve_protocols, resolve_resize, run_protocol, train_final_head)
from dsmix_cli.evaluation.views import NUM_TEST_VIEWS, count_other_sizes
from dsmix_cli.fileio import write_json
from dsmix_cli.models.encoders import load_encoder

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)
DEFAULT_TRAIN_VIEWS = 4


@dataclass
class ProbeConfig:
    """Everything `dsmix probe` resolves (saved as `config.json` and inside the bundle).

    `head`, `views`, `train_ratio` and `val_ratio` left at None take the protocol's values.
    """

    encoder: str
    dataset: str
    out: str
    root: str | None = None
    csv: str | None = None
    lower_better: bool | None = None  # direction of a csv/pyiqa label file (None: the layout's default)
    protocol: str = "dsmix"
    head: str | None = None
    views: str | None = None
    splits: int = 10
    train_ratio: float | None = None
    val_ratio: float | None = None
    splits_from: str | None = None
    splits_column: str | None = None
    epochs: int | None = None  # None: the paper's for the dataset (DATASETS[name].epochs)
    skip_missing: bool = False
    train_views: int = DEFAULT_TRAIN_VIEWS
    fresh_crops: bool = False
    batch_size: int = 64
    lr: float = 7e-4
    weight_decay: float = 0.01
    hidden: int = 1024
    image_size: int = 224
    resize: str = "auto"  # auto: the size the dataset's protocol fixes; none; or WxH
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    feature_norm: bool = True  # standardise the MLP's input with training-feature statistics
    feature_cache: bool = True
    cache_dir: str | None = None  # None: $DSMIX_HOME/feature-cache
    final_head: bool = True  # train the bundle's head on all images
    record: bool = True  # record the bundle as the default model
    allow_outside_root: bool = False  # accept label entries that resolve outside the dataset folder


def split_plan(dataset: Dataset, protocols: list[Protocol], cfg: ProbeConfig,
               warn: Callable[[str], None] | None = None) -> tuple[dict[str, list[Split]], dict[str, str]]:
    """The splits of each protocol and where they come from (`--splits-from`, else random)."""
    if cfg.splits_from:
        sf = read_splits(cfg.splits_from, dataset, cfg.splits_column)
        if sf.dropped and warn:
            warn(f"{sf.dropped} images named in {cfg.splits_from} are not in the dataset (missing or unreadable); "
                 "left out of the splits")
        return ({p.name: sf.splits for p in protocols}, {p.name: sf.source for p in protocols})
    plan, source = {}, {}
    for p in protocols:
        plan[p.name] = make_splits(dataset, cfg.splits, p.train_ratio, p.val_ratio, cfg.seed)
        unit = "references" if dataset.synthetic and dataset.references else "images"
        source[p.name] = (f"{cfg.splits} random {p.train_ratio:g}/{p.val_ratio:g}/"
                          f"{1 - p.train_ratio - p.val_ratio:g} splits of the {unit}, seed {cfg.seed}")
    return plan, source


def _log(run_dir: Path, record: dict) -> None:
    with (run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _bundle_protocol(protocols: list[Protocol]) -> Protocol | None:
    return next((p for p in protocols if p.head == "mlp" and p.views == "paper"), None)


def run_probe(cfg: ProbeConfig, on_progress: ProgressFn | None = None,
              on_info: Callable[[str], None] | None = None,
              on_warn: Callable[[str], None] | None = None) -> dict:
    """Probe `cfg.encoder` on `cfg.dataset`: returns (and writes to `out/results.json`) the results.

    Raises:
        DsmixError: bad options, a dataset or split file that does not load, an unknown encoder.
        TrainingError: the encoder's weights changed during probing (they must not).
    """
    say = on_info or (lambda _m: None)
    warn = on_warn or say
    tick = on_progress or (lambda *_a: None)
    if cfg.train_views < 1 and not cfg.fresh_crops:
        raise DsmixError("--train-views must be at least 1 (or use --fresh-crops)")
    protocols = resolve_protocols(cfg.protocol, head=cfg.head, views=cfg.views, train_ratio=cfg.train_ratio,
                                  val_ratio=cfg.val_ratio)
    cfg = replace(cfg, epochs=cfg.epochs or default_epochs(cfg.dataset))
    if cfg.epochs < 1:
        raise DsmixError("--epochs must be at least 1")
    if cfg.fresh_crops and not any(p.head == "mlp" and p.views == "paper" for p in protocols):
        raise DsmixError("--fresh-crops applies to an MLP head on the paper views (the dsmix protocol)")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    resize_to = resolve_resize(cfg.resize, cfg.dataset)
    dataset = load_dataset(cfg.dataset, Path(cfg.root) if cfg.root else None, skip_missing=cfg.skip_missing,
                           csv=Path(cfg.csv) if cfg.csv else None, lower_better=cfg.lower_better,
                           allow_outside_root=cfg.allow_outside_root)
    split_plan(dataset, protocols, cfg)  # fail early on bad ratios or a bad split file
    encoder = load_encoder(cfg.encoder, device, seed=cfg.seed)
    say(f"encoder: {encoder.description}; dataset: {dataset.name} ({len(dataset.items)} images) from {dataset.root}")
    if dataset.missing:
        warn(f"{len(dataset.missing)} of {dataset.total} images are missing and skipped (--skip-missing)")
    resized = count_other_sizes(dataset.paths(), resize_to) if resize_to else 0
    if resized:
        say(f"{resized} of {len(dataset.items)} images are resized to {resize_to[0]}x{resize_to[1]} (W x H) on "
            f"load, the size the {dataset.name} protocol fixes")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    write_json(out / "config.json", asdict(cfg))
    digest_before = encoder.digest()
    t0 = time.perf_counter()

    components: dict[str, int] = {}
    for p in protocols:
        components.update(components_for(p.views, cfg.train_views,
                                         fresh_crops=cfg.fresh_crops and p.head == "mlp"))
    cache = FeatureCache((cfg.cache_dir or default_cache_dir()) if cfg.feature_cache else None, on_info=say)
    n_all, done = len(dataset.items), [0]

    def extracted(n: int) -> None:
        done[0] += n
        tick("features", done[0], n_all)

    tick("features", 0, n_all)
    feats = extract_features(encoder, dataset.paths(), components, image_size=cfg.image_size, seed=cfg.seed,
                             workers=cfg.workers, resize_to=resize_to, cache=cache, encoder_digest=digest_before,
                             on_progress=extracted)
    if feats.cached:
        say(f"features of {', '.join(feats.cached)} views read from the feature cache ({cache.folder})")
    dataset, feats, bad = drop_unreadable(dataset, feats, cfg.skip_missing)
    for e in bad:
        warn(f"skipped unreadable image: {e}")
    t_features = time.perf_counter() - t0

    plan, sources = split_plan(dataset, protocols, cfg, warn)
    bundled = _bundle_protocol(protocols) if cfg.final_head else None
    recipe = MLPRecipe(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       hidden=cfg.hidden, feature_norm=cfg.feature_norm, seed=cfg.seed, device=device)
    paths = dataset.paths()

    def fresh_crops(index, key):
        return fresh_view_sampler(encoder, [paths[i] for i in index], image_size=cfg.image_size, seed=cfg.seed,
                                  workers=cfg.workers, key=key, resize_to=resize_to)

    fresh = fresh_crops if cfg.fresh_crops else None
    total = sum(head_units(p, len(plan[p.name]), recipe) for p in protocols) + (cfg.epochs if bundled else 0)
    units = [0]

    def advance(n: int) -> None:
        units[0] += n
        tick("heads", units[0], total)

    tick("heads", 0, total)
    results_by, split_files = {}, {}
    for p in protocols:
        name = "splits.json" if len(protocols) == 1 else f"splits-{p.name.rstrip('*')}.json"
        write_splits(out / name, dataset, plan[p.name], {"protocol": p.name, "source": sources[p.name],
                                                        "seed": cfg.seed, "train_ratio": p.train_ratio,
                                                        "val_ratio": p.val_ratio})
        split_files[p.name] = str((out / name).resolve())
        results_by[p.name] = run_protocol(p, feats, dataset, plan[p.name], recipe, fresh_sampler=fresh,
                                          log=lambda r: _log(out, r), advance=advance)
    head_normaliser = None
    if bundled is not None:
        head_normaliser = train_final_head(bundled, feats, dataset, recipe, fresh_sampler=fresh,
                                           log=lambda r: _log(out, r), advance=advance)
    else:
        first = next((r.first for r in results_by.values() if r.first is not None and r.protocol.views == "paper"), None)
        head_normaliser = first
        bundled = _bundle_protocol(protocols) if first is not None else None

    digest_after = encoder.digest()
    if digest_after != digest_before:
        raise TrainingError("the encoder's weights changed during probing (they must stay frozen): "
                            f"digest {digest_before[:12]} before, {digest_after[:12]} after; this is a bug")
    image_size_record = {"protocol": list(resize_to) if resize_to else None, "resized_on_load": resized,
                         "note": (f"{resized} images resized to {resize_to[0]}x{resize_to[1]} (W x H) on load"
                                  if resized else "images used at their own size")}
    per_protocol = {name: _protocol_record(r, cfg, sources[name], split_files[name]) for name, r in results_by.items()}
    main = results_by[protocols[0].name]
    results = {
        "dataset": dataset.name,
        "encoder": encoder.spec,
        "encoder_description": encoder.description,
        **per_protocol[main.protocol.name],
        "n_images": len(dataset.items),
        "missing": len(dataset.missing),
        "unreadable": len(bad),
        "test_views": NUM_TEST_VIEWS,
        "image_size": image_size_record,
        "model_head": ("trained on all images" if cfg.final_head else "split 0") if head_normaliser else None,
        "encoder_unchanged": True,
        "encoder_digest": digest_before,
        "epochs": cfg.epochs,
        "feature_cache": {"folder": str(cache.folder) if cache.folder else None, "read": feats.cached,
                          "encoded": feats.encoded},
        "seconds": {"features": round(t_features, 2), "total": round(time.perf_counter() - t0, 2)},
        "model": None,
        "config": asdict(cfg),
    }
    if len(protocols) > 1:
        results["protocols"] = per_protocol
        results["table"] = [protocol_summary_row(r) for r in results_by.values()]
    if head_normaliser is not None:
        head, normaliser = head_normaliser
        stats = results_by[bundled.name].stats
        save_bundle(out, head, encoder, normaliser, dataset=dataset.name, image_size=cfg.image_size,
                    config=asdict(cfg), encoder_digest=digest_before,
                    extra={"median": stats["median"], "protocol": bundled.name,
                           "trained_on": "all images" if cfg.final_head else "split 0 train",
                           "head_split": None if cfg.final_head else plan[bundled.name][0].index,
                           "splits_file": split_files[bundled.name], "protocol_size": image_size_record["protocol"],
                           "label_file": str(dataset.label_file) if dataset.label_file else None})
        results["model"] = str(out.resolve())
    write_json(out / "results.json", results)
    if cfg.record and results["model"]:
        record_default("model", out)
    return results


def _protocol_record(result, cfg: ProbeConfig, source: str, split_file: str) -> dict:
    p = result.protocol
    if p.head == "mlp":
        selection = "best validation SRCC" if any(r.get("n_val") for r in result.rows) else "final epoch"
    else:
        selection = "alpha by validation SRCC"
    if p.views == "paper":
        train_views = "fresh crops every epoch" if cfg.fresh_crops and p.head == "mlp" else cfg.train_views
    else:
        train_views = f"{NUM_TEST_VIEWS} crops x 2 scales"
    return {"protocol": p.record(), "splits": result.rows, **{k: v for k, v in result.stats.items()},
            "train_views": train_views, "selection": selection, "splits_source": source, "splits_file": split_file}


def export_probe_splits(cfg: ProbeConfig, path: str | Path) -> dict:
    """Write the splits `dsmix probe` would use with `cfg` (one protocol) to `path`; returns a summary.

    The same function draws them as in a probe run (`split_plan`). A probe drops images that turn
    out unreadable before drawing its splits; its own `RUN/splits.json` is then the exact record.

    Raises:
        DsmixError: `--protocol all` (export one protocol at a time), bad ratios, a bad split file.
    """
    if cfg.protocol == "all":
        raise DsmixError("dsmix data splits exports one protocol's splits: pick dsmix, arniqa or contrique")
    protocol = resolve_protocols(cfg.protocol, train_ratio=cfg.train_ratio, val_ratio=cfg.val_ratio)[0]
    dataset = load_dataset(cfg.dataset, Path(cfg.root) if cfg.root else None, skip_missing=cfg.skip_missing,
                           csv=Path(cfg.csv) if cfg.csv else None, lower_better=cfg.lower_better,
                           allow_outside_root=cfg.allow_outside_root)
    plan, sources = split_plan(dataset, [protocol], cfg)
    splits = plan[protocol.name]
    write_splits(path, dataset, splits, {"protocol": protocol.name, "source": sources[protocol.name],
                                         "seed": cfg.seed, "train_ratio": protocol.train_ratio,
                                         "val_ratio": protocol.val_ratio})
    return {"dataset": dataset.name, "images": len(dataset.items), "missing": len(dataset.missing),
            "protocol": protocol.name, "source": sources[protocol.name], "file": str(Path(path).resolve()),
            "splits": [{"split": s.index, "n_train": len(s.train), "n_val": len(s.val), "n_test": len(s.test)}
                       for s in splits]}
