"""`dsmix compare`: several encoders under one protocol, on the same splits, in one table and chart.

Every encoder goes through the same harness as `dsmix probe` (`evaluation.protocols`), on the
same splits (random from `--seed`, or `--splits-from FILE`), with features from the on-disk
cache per (encoder, dataset, view components): a second comparison that adds an encoder, or
changes only the head settings, encodes only what the cache lacks. The run folder gets
`results.json` (one row per encoder and protocol: median and std over splits of SRCC and PLCC,
and the per-split rows), `compare.png` (median SRCC per encoder, std as error bars), `splits.json`
and `config.json`. No model is saved and no default is recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from dsmix_cli.data.catalog import load_dataset
from dsmix_cli.data.split_files import read_splits, write_splits
from dsmix_cli.data.splits import make_splits
from dsmix_cli.engine.runtime import resolve_device, seed_everything
from dsmix_cli.errors import DsmixError, TrainingError
from dsmix_cli.evaluation.features import (FeatureCache, components_for, default_cache_dir, drop_unreadable,
                                           extract_features)
from dsmix_cli.evaluation.protocols import (MLPRecipe, default_epochs, head_units, protocol_summary_row,
                                            resolve_protocols, resolve_resize, run_protocol)
from dsmix_cli.fileio import atomic_open, write_json
from dsmix_cli.models.encoders import load_encoder


@dataclass
class CompareConfig:
    """Everything `dsmix compare` resolves (saved as `config.json`)."""

    dataset: str
    encoders: list[str]
    out: str
    protocol: str = "dsmix"
    root: str | None = None
    csv: str | None = None
    lower_better: bool | None = None
    splits: int = 10
    splits_from: str | None = None
    splits_column: str | None = None
    epochs: int | None = None
    train_views: int = 4
    batch_size: int = 64
    lr: float = 7e-4
    weight_decay: float = 0.01
    hidden: int = 1024
    feature_norm: bool = True
    image_size: int = 224
    resize: str = "auto"
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    skip_missing: bool = False
    feature_cache: bool = True
    cache_dir: str | None = None
    allow_outside_root: bool = False  # accept label entries that resolve outside the dataset folder
    labels: list[str] = field(default_factory=list)  # short names for the table and chart


def short_names(specs: list[str]) -> list[str]:
    """A short, distinct label per encoder spec (the file or folder name for paths)."""
    out = []
    for spec in specs:
        kind, _, rest = spec.partition(":")
        if rest and kind in ("timm", "random"):
            label = spec
        elif rest:
            label = f"{kind}:" + "+".join(Path(p).name for p in rest.split(","))
        else:
            p = Path(spec)
            label = p.parent.name if p.name in ("encoder.safetensors", "last.pt", "best.pt") else p.name
        out.append(label)
    for i, label in enumerate(out):
        if out.count(label) > 1:
            out[i] = f"{label} #{i + 1}"
    return out


def run_compare(cfg: CompareConfig, on_progress: Callable[[str, int, int], None] | None = None,
                on_info: Callable[[str], None] | None = None,
                on_warn: Callable[[str], None] | None = None) -> dict:
    """Run `cfg.protocol` for each of `cfg.encoders` on the same splits of `cfg.dataset`.

    Raises:
        DsmixError: fewer than one encoder, bad options, a dataset or encoder that does not load.
    """
    say, tick = on_info or (lambda _m: None), on_progress or (lambda *_a: None)
    warn = on_warn or say
    if not cfg.encoders:
        raise DsmixError("--encoders: name at least one encoder")
    protocols = resolve_protocols(cfg.protocol)
    cfg = replace(cfg, epochs=cfg.epochs or default_epochs(cfg.dataset),
                  labels=cfg.labels or short_names(cfg.encoders))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    resize_to = resolve_resize(cfg.resize, cfg.dataset)
    dataset = load_dataset(cfg.dataset, Path(cfg.root) if cfg.root else None, skip_missing=cfg.skip_missing,
                           csv=Path(cfg.csv) if cfg.csv else None, lower_better=cfg.lower_better,
                           allow_outside_root=cfg.allow_outside_root)
    if dataset.missing:
        warn(f"{len(dataset.missing)} of {dataset.total} images are missing and skipped (--skip-missing)")
    _splits(dataset, protocols, cfg)  # fail early on bad ratios or a bad split file
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", asdict(cfg))
    cache = FeatureCache((cfg.cache_dir or default_cache_dir()) if cfg.feature_cache else None, on_info=say)
    components: dict[str, int] = {}
    for p in protocols:
        components.update(components_for(p.views, cfg.train_views))
    recipe = MLPRecipe(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       hidden=cfg.hidden, feature_norm=cfg.feature_norm, seed=cfg.seed, device=device)
    t0 = time.perf_counter()
    rows, per_encoder, plan, kept = [], {}, None, dataset
    for spec, label in zip(cfg.encoders, cfg.labels):
        encoder = load_encoder(spec, device, seed=cfg.seed)
        say(f"encoder {label}: {encoder.description}")
        digest = encoder.digest()
        done = [0]

        def extracted(n: int, _label=label) -> None:
            done[0] += n
            tick(f"features {_label}", done[0], len(dataset.items))

        feats = extract_features(encoder, dataset.paths(), components, image_size=cfg.image_size, seed=cfg.seed,
                                 workers=cfg.workers, resize_to=resize_to, cache=cache, encoder_digest=digest,
                                 on_progress=extracted)
        if plan is None:  # the first encoder's read pass fixes the images and the splits for all
            kept, feats, bad = drop_unreadable(dataset, feats, cfg.skip_missing)
            for e in bad:
                warn(f"skipped unreadable image: {e}")
            plan = _splits(kept, protocols, cfg)
            write_splits(out / "splits.json", kept, next(iter(plan.values())),
                         {"protocol": protocols[0].name, "seed": cfg.seed})
        else:
            readable = set(kept.paths())
            feats = feats.select(torch.tensor([p in readable for p in dataset.paths()], dtype=torch.bool))
        per_encoder[label] = {"encoder": encoder.spec, "description": encoder.description, "protocols": {},
                              "features": {"read": feats.cached, "encoded": feats.encoded}}
        for p in protocols:
            total = head_units(p, len(plan[p.name]), recipe)
            units = [0]

            def advance(n: int, _label=label, _total=total) -> None:
                units[0] += n
                tick(f"heads {_label}", units[0], _total)

            result = run_protocol(p, feats, kept, plan[p.name], recipe, advance=advance)
            rows.append({"encoder": label, **protocol_summary_row(result)})
            per_encoder[label]["protocols"][p.name] = {"protocol": p.record(), "splits": result.rows, **result.stats}
        if encoder.digest() != digest:
            raise TrainingError(f"the weights of encoder {label} changed during the comparison; this is a bug")
        del encoder, feats
    chart = out / "compare.png"
    _chart(chart, rows, dataset.name, len(protocols) > 1)
    results = {"dataset": kept.name, "protocol": cfg.protocol, "n_images": len(kept.items),
               "missing": len(dataset.missing), "unreadable": len(dataset.items) - len(kept.items),
               "table": rows, "encoders": per_encoder, "chart": str(chart.resolve()),
               "splits_file": str((out / "splits.json").resolve()),
               "seconds": round(time.perf_counter() - t0, 2), "config": asdict(cfg)}
    write_json(out / "results.json", results)
    return results


def _splits(dataset, protocols, cfg: CompareConfig) -> dict:
    if cfg.splits_from:
        sf = read_splits(cfg.splits_from, dataset, cfg.splits_column)
        return {p.name: sf.splits for p in protocols}
    return {p.name: make_splits(dataset, cfg.splits, p.train_ratio, p.val_ratio, cfg.seed) for p in protocols}


def _chart(path: Path, rows: list[dict], dataset: str, with_protocol: bool) -> None:
    from dsmix_cli.plots import bar_chart

    labels = [f"{r['encoder']} / {r['protocol']}" if with_protocol else r["encoder"] for r in rows]
    img = bar_chart(labels, [r["srcc"] for r in rows], errors=[r["srcc_std"] for r in rows],
                    title=f"{dataset}: median SRCC over splits (bars: std)", y_label="SRCC")
    with atomic_open(path, "wb") as fh:
        img.save(fh, format="PNG")
