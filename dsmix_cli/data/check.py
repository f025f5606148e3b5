"""Checking a loaded dataset: decode every image once, and the `dsmix data check` report."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from dsmix_cli.data.catalog import Dataset, ProgressFn, count_refs
from dsmix_cli.errors import ImageReadError


def _try_decode(path: Path) -> str | None:
    from dsmix_cli.imageio import load_rgb

    try:
        load_rgb(path)
    except ImageReadError as exc:
        text = str(exc)
        prefix = f"{exc.path}: " if exc.path is not None else ""
        return text[len(prefix):] if text.startswith(prefix) else text
    return None


def check_images(dataset: Dataset, on_progress: ProgressFn | None = None, workers: int = 4) -> Dataset:
    """Decode every image of `dataset` once; return a copy without the unreadable ones.

    Pillow releases the GIL while decoding, so a few threads speed this up.

    Args:
        dataset: the dataset to check.
        on_progress: called as `on_progress(done, total)`.
        workers: decoding threads (1: in this thread).
    """
    total = len(dataset.items)
    paths = [it.path for it in dataset.items]
    reasons: list[str | None] = []
    if workers <= 1:
        for i, p in enumerate(paths):
            reasons.append(_try_decode(p))
            if on_progress:
                on_progress(i + 1, total)
    else:
        chunk = 64 * workers  # Executor.map submits eagerly: bound the futures in flight
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, total, chunk):
                for reason in pool.map(_try_decode, paths[start:start + chunk]):
                    reasons.append(reason)
                    if on_progress:
                        on_progress(len(reasons), total)
    keep = [i for i, r in enumerate(reasons) if r is None]
    bad = [i for i, r in enumerate(reasons) if r is not None]
    out = replace(
        dataset,
        items=[dataset.items[i] for i in keep],
        unreadable=dataset.unreadable + [paths[i] for i in bad],
        unreadable_reasons=dataset.unreadable_reasons + [reasons[i] for i in bad],
        split_columns={k: [v[i] for i in keep] for k, v in dataset.split_columns.items()},
        notes=list(dataset.notes),
    )
    out.references = count_refs(out)
    return out


def describe(dataset: Dataset, decoded: bool = False, examples: int = 10) -> dict:
    """The `dsmix data check --json` report of a loaded dataset.

    Keys: dataset, root, label_file, images (usable count), total, references, score_min,
    score_max (raw labels of the usable images), lower_better, score_range, synthetic, missing,
    missing_examples, unreadable, unreadable_examples, decoded, official_split, notes.
    """
    scores = dataset.scores()
    finite = scores[np.isfinite(scores)]
    split_counts = {}
    for it in dataset.items:
        if it.split is not None:
            split_counts[it.split] = split_counts.get(it.split, 0) + 1

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(dataset.root))
        except ValueError:
            return str(p)

    return {
        "dataset": dataset.name,
        "root": str(dataset.root),
        "label_file": str(dataset.label_file) if dataset.label_file else None,
        "images": len(dataset.items),
        "total": dataset.total,
        "references": dataset.references,
        "score_min": float(finite.min()) if finite.size else None,
        "score_max": float(finite.max()) if finite.size else None,
        "lower_better": dataset.lower_better,
        "score_range": list(dataset.score_range),
        "synthetic": dataset.synthetic,
        "missing": len(dataset.missing),
        "missing_examples": [rel(p) for p in dataset.missing[:examples]],
        "unreadable": len(dataset.unreadable),
        "unreadable_examples": [{"path": rel(p), "reason": r} for p, r in
                                zip(dataset.unreadable[:examples], dataset.unreadable_reasons[:examples])],
        "decoded": decoded,
        "official_split": {k: split_counts[k] for k in ("train", "val", "test") if k in split_counts} or None,
        "notes": list(dataset.notes),
    }
