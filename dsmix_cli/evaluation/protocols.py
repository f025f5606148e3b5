"""The peers' probing protocols as presets, and one harness that runs any of them on cached features.

A protocol sets the head, the view set, the splits and what is reported:

| preset | head | views | splits | reported |
|---|---|---|---|---|
| `dsmix` | MLP (Smooth L1, AdamW, cosine), final epoch | `paper`: a cached random crop per epoch, 5 test crops | 10 random 80/20 | median SRCC, raw PLCC |
| `arniqa` | ridge, alpha by validation SRCC, every crop a training row | `arniqa`: 5 crops at full and half scale, concatenated | 10 random 70/10/20 | median SRCC, raw PLCC |
| `contrique` | ridge, alpha by validation SRCC, one row per image (mean of its crops) | `arniqa` | 10 random 70/10/20 | median SRCC, raw PLCC |

Synthetic sets are split by reference in every protocol. A ridge head's alpha is searched on the
split's validation part; a split without one (80/20, or a file without `val`) gets one carved
from its training side (`data.splits.carve_validation`), never from its test side, and the fit
then uses the rest of the training side. The features of a ridge head are L2-normalised per
scale (ARNIQA's and CONTRIQUE's encoders output unit vectors; the alpha grid assumes that scale).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch

from dsmix_cli.data.catalog import DATASETS, Dataset, canonical_name
from dsmix_cli.data.splits import ScoreNormaliser, Split, carve_validation
from dsmix_cli.errors import DsmixError
from dsmix_cli.evaluation.features import VIEW_SETS, ImageFeatures
from dsmix_cli.evaluation.heads import (QualityHead, cached_view_sampler, correlation_row, summary, train_head,
                                        val_srcc)
from dsmix_cli.evaluation.ridge import ALPHAS, fit_ridge

HEADS = ("mlp", "ridge")


def default_epochs(dataset: str) -> int:
    """The paper's probe epochs for a dataset (100 LIVE/CSIQ/CLIVE, 200 others); 100 if unknown."""
    return DATASETS[canonical_name(dataset)].epochs or 100


def resolve_resize(text: str, dataset_name: str) -> tuple[int, int] | None:
    """`--resize`: auto (the catalog's protocol size), none, or WxH -> (W, H) or None."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        return DATASETS[canonical_name(dataset_name)].probe_size
    if text == "none":
        return None
    try:
        w, h = (int(v) for v in text.split("x"))
    except ValueError:
        raise DsmixError(f"--resize {text!r}: expected auto, none or WxH (e.g. 512x384)") from None
    if w < 1 or h < 1:
        raise DsmixError(f"--resize {text!r}: sizes must be positive")
    return w, h


@dataclass(frozen=True)
class Protocol:
    """What a protocol fixes: head, view set, split ratios, and (for ridge) the regression rows."""

    name: str
    head: str
    views: str
    train_ratio: float
    val_ratio: float
    ridge_rows: str = "views"
    based_on: str | None = None
    description: str = ""

    @property
    def l2(self) -> bool:
        """Ridge heads see unit-length features per scale; the MLP standardises its own input."""
        return self.head == "ridge"

    def record(self) -> dict:
        out = asdict(self)
        out["l2_features"] = self.l2
        out["splits"] = f"{self.train_ratio:g}/{self.val_ratio:g}/{1 - self.train_ratio - self.val_ratio:g}"
        out["reporting"] = "median over splits of SRCC and of raw PLCC (plcc_logistic: after a 4-parameter fit)"
        if self.head == "ridge":
            out["alphas"] = f"{len(ALPHAS)} log-spaced values in [{ALPHAS[0]:g}, {ALPHAS[-1]:g}]"
        return out


PRESETS: dict[str, Protocol] = {
    "dsmix": Protocol("dsmix", "mlp", "paper", 0.8, 0.0, description=(
        "frozen encoder, MLP head (Smooth L1, AdamW 7e-4, cosine), final epoch; random 80/20 splits; a cached "
        "random crop+flip per epoch, 5 test crops averaged")),
    "arniqa": Protocol("arniqa", "ridge", "arniqa", 0.7, 0.1, "views", description=(
        "ridge regression, alpha from 100 log-spaced values in [1e-3, 1e3] by validation SRCC; random 70/10/20 "
        "splits; 5 crops at full and half scale, features concatenated, every crop a training row, "
        "predictions averaged over the crops")),
    "contrique": Protocol("contrique", "ridge", "arniqa", 0.7, 0.1, "image", description=(
        "ridge regression on one feature vector per image (its crops' two-scale features averaged), alpha "
        "searched on validation; random 70/10/20 splits")),
}
PROTOCOL_NAMES = (*PRESETS, "all")


def resolve_protocols(name: str, *, head: str | None = None, views: str | None = None,
                      train_ratio: float | None = None, val_ratio: float | None = None) -> list[Protocol]:
    """The protocols `--protocol NAME` runs, with explicit `--head/--views/--train-ratio/--val-ratio` applied.

    Raises:
        DsmixError: an unknown name, head or view set, or overrides with `all`.
    """
    if name not in PROTOCOL_NAMES:
        raise DsmixError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOL_NAMES)}")
    if head is not None and head not in HEADS:
        raise DsmixError(f"unknown head {head!r}; choose mlp or ridge")
    if views is not None and views not in VIEW_SETS:
        raise DsmixError(f"unknown view set {views!r}; choose one of {', '.join(VIEW_SETS)}")
    given = {k: v for k, v in (("head", head), ("views", views), ("train_ratio", train_ratio),
                                ("val_ratio", val_ratio)) if v is not None}
    if name == "all":
        if given:
            raise DsmixError(f"--protocol all runs each preset as it is; drop "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} (or pick one protocol)")
        return list(PRESETS.values())
    base = PRESETS[name]
    if train_ratio is not None and val_ratio is None:
        given["val_ratio"] = min(base.val_ratio, max(0.0, 1.0 - train_ratio - 0.05))
    custom = replace(base, **given)
    if custom != base:
        custom = replace(custom, name=f"{name}*", based_on=name,
                         description=f"{name} with {', '.join(f'{k}={v}' for k, v in given.items())}")
    return [custom]


@dataclass
class MLPRecipe:
    """The MLP head's training settings (the DSMix probe's unless the user changes them)."""

    epochs: int
    batch_size: int = 64
    lr: float = 7e-4
    weight_decay: float = 0.01
    hidden: int = 1024
    feature_norm: bool = True
    seed: int = 0
    device: torch.device | str = "cpu"


@dataclass
class ProtocolResult:
    """Per-split rows and their summary; `head`/`normaliser` of the first split (MLP only)."""

    protocol: Protocol
    rows: list[dict]
    stats: dict
    first: tuple | None = None


def head_units(protocol: Protocol, n_splits: int, recipe: MLPRecipe) -> int:
    """Progress units of a protocol's heads: epochs for the MLP, one per split for ridge."""
    return n_splits * (recipe.epochs if protocol.head == "mlp" else 1)


def run_protocol(protocol: Protocol, feats: ImageFeatures, dataset: Dataset, splits: list[Split],
                 recipe: MLPRecipe, *, fresh_sampler: Callable | None = None,
                 log: Callable[[dict], None] | None = None,
                 advance: Callable[[int], None] | None = None) -> ProtocolResult:
    """Train and test one head per split on cached features.

    Args:
        protocol: what to run.
        feats: the dataset's features (every component the protocol's view set needs).
        dataset: the images (labels, direction, references for carving validation parts).
        splits: indices into `dataset.items`.
        recipe: the MLP's settings (and the seed of carved validation parts).
        fresh_sampler: `(indices, key) -> epoch sampler` encoding new crops each epoch (MLP, `paper`).
        log: called with one record per head epoch and one per split (metrics.jsonl).
        advance: called with progress units done (see `head_units`).
    """
    tick = advance or (lambda _n: None)
    write = log or (lambda _r: None)
    train_views, test_views = feats.view_set(protocol.views, l2=protocol.l2)
    device = torch.device(recipe.device)
    test_views = test_views.to(device)
    if train_views is not None:
        train_views = train_views.to(device)
    raw = dataset.scores()
    rows, first, step_base = [], None, 0
    for split in splits:
        normaliser = ScoreNormaliser.fit(raw[split.train], dataset.lower_better, source=dataset.label_file)
        target = lambda idx: normaliser.apply(raw[idx])  # noqa: E731
        key = (protocol.name, "split", split.index)
        if protocol.head == "mlp":
            validate = val_srcc(test_views[split.val], target(split.val)) if split.val else None
            if train_views is None:
                sampler = fresh_sampler(split.train, key[1:])
            else:
                sampler = cached_view_sampler(train_views[split.train], recipe.seed, *key[1:])

            def on_epoch(rec: dict, _base=step_base, _index=split.index) -> None:
                write({**rec, "step": _base + rec["step"], "protocol": protocol.name, "head": _index})
                tick(1)

            head, info = train_head(sampler, torch.as_tensor(target(split.train), dtype=torch.float32),
                                    feature_dim=test_views.shape[-1], epochs=recipe.epochs,
                                    batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    hidden=recipe.hidden, seed=recipe.seed, key=key[1:], device=device,
                                    validate=validate, on_epoch=on_epoch, standardize=recipe.feature_norm)
            step_base += recipe.epochs * math.ceil(len(split.train) / recipe.batch_size)
            if first is None:
                first = (head, normaliser)
            pred = head.predict_views(test_views[split.test]).cpu().numpy()
            extra = {"n_train": len(split.train), "n_val": len(split.val), "epoch": info["epoch"],
                     **({"val_srcc": info["val_srcc"]} if "val_srcc" in info else {})}
        else:
            fit_split = carve_validation(dataset, split, seed=recipe.seed)
            rows_from = train_views if train_views is not None else test_views
            head, info = fit_ridge(rows_from[fit_split.train], target(fit_split.train),
                                   test_views[fit_split.val], target(fit_split.val), rows=protocol.ridge_rows)
            tick(1)
            pred = head.predict_views(test_views[split.test]).cpu().numpy()
            extra = {"n_train": len(fit_split.train), "n_val": len(fit_split.val), "alpha": info["alpha"],
                     "val_srcc": info["val_srcc"], "alpha_at_edge": info["alpha_at_edge"],
                     "val_from": "the split" if split.val else "carved from the training side"}
        row = {"split": split.index, **correlation_row(pred, target(split.test)), **extra, "n_test": len(split.test)}
        rows.append(row)
        write({"step": step_base, "protocol": protocol.name, "split": split.index, "test_srcc": row["srcc"],
               "test_plcc": row["plcc"], **({"alpha": row["alpha"]} if "alpha" in row else {}),
               "loss": info.get("loss", float("nan"))})
    stats = summary(rows)
    if protocol.head == "ridge":
        alphas = [r["alpha"] for r in rows]
        stats["alpha"] = {"median": float(np.median(alphas)), "per_split": alphas}
    return ProtocolResult(protocol, rows, stats, first)


def train_final_head(protocol: Protocol, feats: ImageFeatures, dataset: Dataset, recipe: MLPRecipe, *,
                     fresh_sampler: Callable | None = None, log: Callable[[dict], None] | None = None,
                     advance: Callable[[int], None] | None = None) -> tuple[QualityHead, ScoreNormaliser]:
    """The bundle's head: the protocol's MLP trained on every image (normaliser fitted on all labels)."""
    if protocol.head != "mlp" or protocol.views != "paper":
        raise DsmixError("only an MLP head on the paper views can be saved as a model for `dsmix score`")
    train_views, _ = feats.view_set("paper")
    raw = dataset.scores()
    normaliser = ScoreNormaliser.fit(raw, dataset.lower_better, source=dataset.label_file)
    everything = list(range(len(dataset.items)))
    sampler = (fresh_sampler(everything, ("final",)) if train_views is None
               else cached_view_sampler(train_views.to(recipe.device), recipe.seed, "final"))

    def on_epoch(rec: dict) -> None:
        if log:
            log({**rec, "protocol": protocol.name, "head": "final"})
        if advance:
            advance(1)

    head, _ = train_head(sampler, torch.as_tensor(normaliser.apply(raw), dtype=torch.float32),
                         feature_dim=feats.parts["five"].shape[-1], epochs=recipe.epochs,
                         batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay,
                         hidden=recipe.hidden, seed=recipe.seed, key=("final",), device=recipe.device,
                         on_epoch=on_epoch, standardize=recipe.feature_norm)
    return head, normaliser


def protocol_summary_row(result: ProtocolResult) -> dict:
    """One line of the `--protocol all` / compare tables."""
    s = result.stats
    return {"protocol": result.protocol.name, "head": result.protocol.head, "views": result.protocol.views,
            "splits": len(result.rows), "srcc": s["median"]["srcc"], "srcc_std": s["std"]["srcc"],
            "plcc": s["median"]["plcc"], "plcc_std": s["std"]["plcc"],
            "alpha": s.get("alpha", {}).get("median")}
