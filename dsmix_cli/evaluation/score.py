"""Scoring images with a probed model (`dsmix score`) and evaluating it on a dataset (`dsmix evaluate`).

The model is loaded once; images go through a DataLoader in batches; every image's score is the
average of the head's predictions over its five test crops (4 corners + centre, METHOD.md
section 5), after resizing images smaller than the crop up to it. Scores are in the model's
normalised scale: higher is better, 0 and 1 are the worst and best labels the head was trained
on (values a little outside [0, 1] are possible and are not clipped). An image that cannot be
read gets no score and its reason; the others are scored.
"""

from __future__ import annotations

import csv
import glob
import io
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import DataLoader

from dsmix_cli.data.catalog import Dataset
from dsmix_cli.data.splits import ScoreNormaliser
from dsmix_cli.errors import DsmixError
from dsmix_cli.evaluation.bundle import ProbedModel
from dsmix_cli.evaluation.metrics import MetricWarning, correlations
from dsmix_cli.evaluation.views import ViewDataset, collate_views
from dsmix_cli.fileio import atomic_open, write_json
from dsmix_cli.imageio import is_image_file

_GLOB_CHARS = set("*?[")


@dataclass
class ScoredImage:
    """One input image: its score (None when unreadable) and, if so, why."""

    path: Path
    score: float | None
    error: str = ""


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively, sorted) and glob patterns -> image paths in input order.

    A named file is kept whatever its extension (it is reported if it cannot be decoded); a
    folder contributes the image files under it; a pattern the images it matches.

    Returns:
        (paths, problems): problems name inputs that yielded nothing (a pattern that matches
        no image, an empty folder).
    """
    paths: list[Path] = []
    problems: list[str] = []
    for raw in inputs:
        text = str(raw)
        p = Path(text).expanduser()
        if p.is_dir():
            found = sorted((f for f in p.rglob("*") if f.is_file() and is_image_file(f)), key=lambda f: str(f))
            if not found:
                problems.append(f"{p}: folder holds no image files")
            paths.extend(found)
        elif p.exists() or not (_GLOB_CHARS & set(text)):
            paths.append(p)  # a missing plain path is reported when it is read
        else:
            found = sorted((Path(f) for f in glob.glob(str(p), recursive=True)
                            if Path(f).is_file() and is_image_file(f)), key=lambda f: str(f))
            if not found:
                problems.append(f"{text}: no image file matches this pattern")
            paths.extend(found)
    return paths, problems


def score_images(model: ProbedModel, paths: Sequence[Path], *, batch_size: int = 32, workers: int = 0,
                 on_progress: Callable[[int], None] | None = None) -> list[ScoredImage]:
    """Score every image (5-crop average), in input order.

    Args:
        model: the probed model (`bundle.load_bundle`).
        paths: image files.
        batch_size: images per encoder batch (x5 crops).
        workers: data-loading processes.
        on_progress: called with the number of images done after each batch.
    """
    if batch_size < 1:
        raise DsmixError("--batch-size must be at least 1")
    ds = ViewDataset(paths, model.image_size, train_views=0, test_views=True)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_views)
    results: list[ScoredImage | None] = [None] * len(ds)
    for indices, crops, errors in loader:
        good = [i for i, e in zip(indices.tolist(), errors) if not e]
        for i, e in zip(indices.tolist(), errors):
            if e:
                results[i] = ScoredImage(ds.paths[i], None, e)
        if good:
            feats = model.encoder.features(crops.flatten(0, 1)).view(len(good), crops.shape[1], -1)
            scores = model.score_features(feats).tolist()
            for i, s in zip(good, scores):
                results[i] = ScoredImage(ds.paths[i], float(s))
        if on_progress is not None:
            on_progress(len(indices))
    return [r for r in results if r is not None]


def scores_table(scored: Sequence[ScoredImage], model: ProbedModel) -> dict:
    """The `score --json` record: model, scale, one entry per image (with the raw-units score)."""
    images = []
    for r in scored:
        if r.error:
            images.append({"path": str(r.path), "score": None, "error": r.error})
        else:
            raw = float(model.normaliser.invert(np.float64(r.score)))
            images.append({"path": str(r.path), "score": r.score, "raw_score": raw})
    return {
        "model": str(model.path.parent if model.path else ""),
        "encoder": model.encoder.spec,
        "trained_on": model.meta.get("dataset"),
        "scale": "normalised to the training labels: 0 = worst, 1 = best; higher is better. raw_score "
                 "is in the training dataset's units" + (" (DMOS: lower is better)" if model.normaliser.lower_better else ""),
        "images": images,
        "scored": sum(1 for r in scored if not r.error),
        "unreadable": sum(1 for r in scored if r.error),
    }


def write_scores_csv(path: str | Path, scored: Sequence[ScoredImage]) -> None:
    """`path,score` with a header, one row per readable image in input order ('-' = stdout)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "score"])
    for r in scored:
        if not r.error:
            writer.writerow([str(r.path), f"{r.score:.6f}"])
    if str(path) == "-":
        sys.stdout.write(buf.getvalue())
        sys.stdout.flush()
        return
    with atomic_open(path, "w") as fh:
        fh.write(buf.getvalue())


def write_scores_json(path: str | Path, scored: Sequence[ScoredImage], model: ProbedModel) -> None:
    write_json(path, scores_table(scored, model))


def evaluate_model(model: ProbedModel, dataset: Dataset, *, batch_size: int = 32, workers: int = 0,
                   on_progress: Callable[[int], None] | None = None) -> dict:
    """Score every image of `dataset` and correlate with its labels (oriented higher = better).

    Returns:
        `{"srcc", "plcc", "krcc", "plcc_logistic", "n", "dataset", "model", "encoder",
        "unreadable", "unreadable_examples", "same_dataset"}`.

    Raises:
        DsmixError: fewer than two readable images.
    """
    scored = score_images(model, dataset.paths(), batch_size=batch_size, workers=workers, on_progress=on_progress)
    ok = [i for i, r in enumerate(scored) if not r.error]
    if len(ok) < 2:
        raise DsmixError(f"{dataset.name}: fewer than two readable images to evaluate on", dataset.root)
    raw = dataset.scores()[ok]
    target = ScoreNormaliser.fit(raw, dataset.lower_better).apply(raw)
    pred = np.array([scored[i].score for i in ok])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        corr = correlations(pred, target, logistic=True)
    bad = [r.error for r in scored if r.error]
    return {
        "srcc": corr["srcc"], "plcc": corr["plcc"], "krcc": corr["krcc"],
        "plcc_logistic": corr["plcc_logistic"], "n": len(ok),
        "dataset": dataset.name, "root": str(dataset.root),
        "model": str(model.path.parent if model.path else ""), "encoder": model.encoder.spec,
        "trained_on": model.meta.get("dataset"),
        "same_dataset": model.meta.get("dataset") == dataset.name and (
            model.meta.get("label_file") is None or dataset.label_file is None
            or Path(model.meta["label_file"]) == Path(dataset.label_file)),
        "missing": len(dataset.missing), "unreadable": len(bad), "unreadable_examples": bad[:5],
        "mean_score": float(pred.mean()) if len(pred) else math.nan,
    }
