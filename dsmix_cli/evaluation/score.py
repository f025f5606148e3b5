"""Scoring images with a probed model (`dsmix score`) and evaluating it on a dataset (`dsmix evaluate`).

The model is loaded once; images go through a DataLoader in batches; every image's score is the
average of the head's predictions over its five test crops (4 corners + centre, see
docs/probing.md), after resizing images smaller than the crop up to it. Only the five crops are
copied out of the decoded image (never a float copy of the whole image), so an image costs its
decoded size (4 bytes a pixel in Pillow) and no more; the pixel limit (`--max-pixels`) bounds
that.

Scores are in the model's normalised scale: higher is better, 0 and 1 are the worst and best
labels the head was trained on. Values outside [0, 1] are possible (the head extrapolates); they
are not clipped, which would tie their ranks, but marked with a note ("below/above the training
labels' range") in the table, the CSV and the JSON. An image that cannot be read gets no score
and its reason; the others are scored.

Names that are not valid UTF-8 are written in the `paths.path_text` form (`\\xNN` for each such
byte), in the CSV and the JSON alike; `paths.text_path` gives the name back.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from dsmix_cli.data.catalog import Dataset
from dsmix_cli.data.splits import ScoreNormaliser
from dsmix_cli.errors import DsmixError, ImageReadError
from dsmix_cli.evaluation.bundle import ProbedModel
from dsmix_cli.evaluation.metrics import MetricWarning, correlations
from dsmix_cli.evaluation.views import collate_views, five_crops, resize_exact, resize_min_side
from dsmix_cli.fileio import atomic_open, write_json, write_stdout
from dsmix_cli.imageio import crops_uint8, is_image_file, load_rgb, pil_to_tensor
from dsmix_cli.paths import glob_files, has_magic, path_text, walk_files

CSV_COLUMNS = ("path", "score", "note")
BELOW = "below the training labels' range"  # under 0: worse than the worst training image
ABOVE = "above the training labels' range"  # over 1: better than the best training image


def range_note(score: float | None) -> str:
    """Why a normalised score is flagged: below 0 or above 1 ("" inside [0, 1] or without a score)."""
    if score is None or not math.isfinite(score):
        return ""
    return BELOW if score < 0.0 else ABOVE if score > 1.0 else ""


@dataclass
class ScoredImage:
    """One input image: its score (None when unreadable) and, if so, why."""

    path: Path
    score: float | None
    error: str = ""

    @property
    def note(self) -> str:
        """The out-of-range note of the score ("" when it lies in [0, 1])."""
        return range_note(self.score)


@dataclass
class Inputs:
    """What `score`'s arguments name: the image files in input order, the arguments that gave
    none (`problems`), and what the folder walks and globs skipped (`skipped`: link loops,
    links out of the folder, dangling links, special files), one line each."""

    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def expand_inputs(inputs: Sequence[str | Path]) -> Inputs:
    """Files, folders (searched recursively, sorted) and glob patterns -> image paths in input order.

    A named file is kept whatever its extension (it is reported if it cannot be decoded); a
    folder contributes the image files under it; a pattern (`*`, `?`, `[...]`, `**` for any
    depth) the image files it matches. Walks and patterns list each real file once and never
    follow a link to a folder (`paths.walk_files`), so a link loop or a link out of the folder
    adds nothing; what they skip is listed in `skipped`.
    """
    found = Inputs()
    for raw in inputs:
        text = str(raw)
        p = Path(text).expanduser()
        if p.is_dir():
            walk = walk_files(p, is_image_file)
            if not walk.files:
                found.problems.append(f"{path_text(p)}: folder holds no image files")
        elif p.exists() or p.is_symlink() or not has_magic(text):
            found.paths.append(p)  # a missing plain path is reported when it is read
            continue
        else:
            walk = glob_files(str(p), is_image_file)
            if not walk.files:
                found.problems.append(f"{path_text(text)}: no image file matches this pattern")
        found.paths.extend(walk.files)
        found.skipped.extend(walk.skipped)
    return found


def five_crop_boxes(width: int, height: int, size: int) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes of the five test crops: top-left, top-right,
    bottom-left, bottom-right, centre (the order and offsets of `views.five_crops`)."""
    top_c, left_c = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top_c, left_c)]
    return [(left, top, left + size, top + size) for top, left in corners]


class ScoreCropDataset(TorchDataset):
    """The five test crops of each image, (index, uint8 (5, 3, S, S), error) per item.

    An image at least S on its shorter side is cropped in Pillow (only the crops are copied);
    a smaller one is first resized up so that its shorter side is S (`views.resize_min_side`).
    An unreadable image yields no crops and the reason, so one bad file never stops a batch.
    With `resize_to` (W, H), every image of another size is first resized to it, as `probe`
    does for a dataset whose protocol fixes the size (KonIQ-10k at 512x384).
    """

    def __init__(self, paths: Sequence[str | Path], size: int, resize_to: tuple[int, int] | None = None):
        self.paths = [Path(p) for p in paths]
        self.size = int(size)
        self.resize_to = tuple(int(v) for v in resize_to) if resize_to else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        try:
            im = load_rgb(self.paths[index])
        except ImageReadError as exc:
            return index, torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8), str(exc)
        if self.resize_to is not None and im.size != self.resize_to:
            t = resize_exact(pil_to_tensor(im), self.resize_to)
            if min(t.shape[-2:]) < self.size:
                t = resize_min_side(t, self.size)
            return index, five_crops(t, self.size).contiguous(), ""
        w, h = im.size
        if min(w, h) < self.size:
            crops = five_crops(resize_min_side(pil_to_tensor(im), self.size), self.size)
        else:
            crops = crops_uint8(im, five_crop_boxes(w, h, self.size))
        return index, crops.contiguous(), ""


def score_images(model: ProbedModel, paths: Sequence[Path], *, batch_size: int = 32, workers: int = 0,
                 on_progress: Callable[[int], None] | None = None,
                 resize_to: tuple[int, int] | None = None) -> list[ScoredImage]:
    """Score every image (5-crop average), in input order.

    Args:
        model: the probed model (`bundle.load_bundle`).
        paths: image files.
        batch_size: images per encoder batch (x5 crops).
        workers: data-loading processes.
        on_progress: called with the number of images done after each batch.
        resize_to: (W, H) to resize every image to first (a dataset protocol's size), or None.
    """
    if batch_size < 1:
        raise DsmixError("--batch-size must be at least 1")
    ds = ScoreCropDataset(paths, model.image_size, resize_to)
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


def scores_table(scored: Sequence[ScoredImage], model: ProbedModel, inputs: Inputs | None = None) -> dict:
    """The `score --json` record: model, scale, one entry per image (with the raw-units score),
    and the counts: `scored`, `unreadable` (images that could not be read, as on stderr),
    `out_of_range`, and the inputs that matched nothing or were skipped."""
    images = []
    for r in scored:
        if r.error:
            images.append({"path": path_text(r.path), "score": None, "error": r.error})
        else:
            raw = float(model.normaliser.invert(np.float64(r.score)))
            images.append({"path": path_text(r.path), "score": r.score, "raw_score": raw,
                           "in_range": not r.note, "note": r.note})
    return {
        "model": path_text(model.path.parent if model.path else ""),
        "encoder": model.encoder.spec,
        "trained_on": model.meta.get("dataset"),
        "scale": "normalised to the training labels: 0 = worst, 1 = best; higher is better; scores outside "
                 "[0, 1] are kept and marked (in_range false, note). raw_score is in the training dataset's "
                 "units" + (" (DMOS: lower is better)" if model.normaliser.lower_better else ""),
        "images": images,
        "scored": sum(1 for r in scored if not r.error),
        "unreadable": sum(1 for r in scored if r.error),
        "out_of_range": sum(1 for r in scored if not r.error and r.note),
        "unmatched_inputs": list(inputs.problems) if inputs else [],
        "skipped": list(inputs.skipped) if inputs else [],
    }


def scores_csv(scored: Sequence[ScoredImage]) -> str:
    """`path,score,note` with a header, one row per readable image in input order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in scored:
        if not r.error:
            writer.writerow([path_text(r.path), f"{r.score:.6f}", r.note])
    return buf.getvalue()


def write_scores_csv(path: str | Path, scored: Sequence[ScoredImage]) -> int:
    """Write `scores_csv` atomically ('-' = stdout); returns the number of rows."""
    text = scores_csv(scored)
    if str(path) == "-":
        write_stdout(text)
    else:
        with atomic_open(path, "w") as fh:
            fh.write(text)
    return sum(1 for r in scored if not r.error)


def write_scores_json(path: str | Path, scored: Sequence[ScoredImage], model: ProbedModel,
                      inputs: Inputs | None = None) -> None:
    write_json(path, scores_table(scored, model, inputs))


def evaluate_model(model: ProbedModel, dataset: Dataset, *, batch_size: int = 32, workers: int = 0,
                   on_progress: Callable[[int], None] | None = None,
                   resize_to: tuple[int, int] | None = None) -> dict:
    """Score every image of `dataset` and correlate with its labels (oriented higher = better).

    `resize_to` (W, H): the size the dataset's protocol fixes, applied before the crops (as
    `probe` does); recorded in the result as `resize_to`.

    Returns:
        `{"srcc", "plcc", "krcc", "plcc_logistic", "n", "dataset", "model", "encoder",
        "unreadable", "unreadable_examples", "unreadable_files", "same_dataset"}`.

    Raises:
        DsmixError: fewer than two readable images.
    """
    scored = score_images(model, dataset.paths(), batch_size=batch_size, workers=workers, on_progress=on_progress,
                          resize_to=resize_to)
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
        "unreadable_files": bad,
        "mean_score": float(pred.mean()) if len(pred) else math.nan,
        "resize_to": list(resize_to) if resize_to else None,
    }
