"""Split files: export the exact splits a probe used, and read splits that others ship.

Three forms are read (`read_splits`):

* **our export** (`.json`, written by `dsmix data splits NAME --out FILE` and by every probe run
  as `RUN/splits*.json`): the image names of each split's train, val and test parts, as the
  label file names them;
* **a CSV with split columns** (`.csv`): a name column (`name`, `img_name`, `image_name`,
  `dist_name`, `dist_img` or the first column) and one column per split with cells
  `train`/`val`/`test` (empty: in no part). Columns are taken in this order of preference:
  pyiqa's `ratio802_seed123_split_NN` (any `ratio*_split_NN`), our export's `split_NN`, then the
  single `official_split` or `split`; `column=` picks one column or a column prefix;
* **ARNIQA-style index files**: a folder holding `train.npy`, `val.npy` and `test.npy` (or one of
  those files), each an integer array (splits x images) of row numbers of the label file, padded
  with -1. Rows count the label file's images in order, so they need every listed image present.

Names are matched exactly, then by file name alone where that is unique. Names of the file that
the dataset does not have (missing or unreadable images) are dropped from the splits and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsmix_cli.data.catalog import Dataset
from dsmix_cli.data.layouts import parse_split_tag, read_table
from dsmix_cli.data.splits import Split
from dsmix_cli.errors import DatasetError
from dsmix_cli.fileio import write_json, write_text

FORMAT = "dsmix-splits"
_PARTS = ("train", "val", "test")
_NAME_COLUMNS = ("name", "img_name", "image_name", "dist_name", "dist_img", "image", "path")


@dataclass
class SplitFile:
    """Splits read from a file, as indices into `Dataset.items`."""

    splits: list[Split]
    source: str          # what was read, for reports and results.json
    dropped: int = 0     # names in the file the dataset does not have
    meta: dict | None = None


def splits_record(dataset: Dataset, splits: list[Split], meta: dict | None = None) -> dict:
    """The JSON record of `splits` (image names per part), as `dsmix data splits` writes it."""
    names = [it.name for it in dataset.items]
    unit = "reference" if dataset.synthetic and all(it.ref is not None for it in dataset.items) else "image"
    return {
        "format": FORMAT, "version": 1, "dataset": dataset.name,
        "label_file": str(dataset.label_file) if dataset.label_file else None,
        "images": len(dataset.items), "unit": unit, **(meta or {}),
        "splits": [{"index": s.index, **{p: [names[i] for i in getattr(s, p)] for p in _PARTS}} for s in splits],
    }


def write_splits(path: str | Path, dataset: Dataset, splits: list[Split], meta: dict | None = None) -> None:
    """Write `splits` as our JSON (any suffix but .csv) or as a CSV with `split_NN` columns."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        tag = [{} for _ in splits]
        for k, s in enumerate(splits):
            for part in _PARTS:
                for i in getattr(s, part):
                    tag[k][i] = part
        lines = ["name," + ",".join(f"split_{s.index + 1:02d}" for s in splits)]
        for i, it in enumerate(dataset.items):
            lines.append(_csv_cell(it.name) + "," + ",".join(t.get(i, "") for t in tag))
        write_text(path, "\n".join(lines) + "\n")
    else:
        write_json(path, splits_record(dataset, splits, meta))


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


class _Names:
    """Name -> item index: exact, then by file name where unique."""

    def __init__(self, dataset: Dataset):
        self.exact = {it.name: i for i, it in enumerate(dataset.items)}
        base: dict[str, list[int]] = {}
        for i, it in enumerate(dataset.items):
            base.setdefault(_base(it.name), []).append(i)
        self.base = {k: v[0] for k, v in base.items() if len(v) == 1}

    def find(self, name: str) -> int | None:
        hit = self.exact.get(name)
        return hit if hit is not None else self.base.get(_base(name))


def _base(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower()


def _from_names(dataset: Dataset, parts: list[dict[str, list[str]]], indices: list[int]) -> tuple[list[Split], int]:
    lookup = _Names(dataset)
    splits, dropped = [], set()
    for k, part in zip(indices, parts):
        found = {}
        for p in _PARTS:
            hits = []
            for name in part.get(p, []):
                i = lookup.find(name)
                if i is None:
                    dropped.add(name)
                else:
                    hits.append(i)
            found[p] = sorted(set(hits))
        splits.append(Split(k, found["train"], found["val"], found["test"]))
    return splits, len(dropped)


def read_splits(path: str | Path, dataset: Dataset, column: str | None = None) -> SplitFile:
    """Splits from our JSON export, a CSV with split columns, or ARNIQA-style index files.

    Raises:
        DatasetError: an unreadable or malformed file, no split in it, splits that leave no
            training or test image in this dataset, or index files for a partial dataset.
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".npy":
        out = _read_index_files(path, dataset)
    elif path.suffix.lower() in (".csv", ".txt", ".tsv"):
        out = _read_columns(path, dataset, column)
    else:
        out = _read_json(path, dataset)
    for s in out.splits:
        if not s.train or not s.test:
            raise DatasetError(f"split {s.index + 1} leaves {len(s.train)} training and {len(s.test)} test images "
                               f"of {dataset.name} (do the names match this dataset?)", path)
        overlap = (set(s.train) & set(s.test)) | (set(s.train) & set(s.val)) | (set(s.val) & set(s.test))
        if overlap:
            name = dataset.items[min(overlap)].name
            raise DatasetError(f"split {s.index + 1} puts {len(overlap)} images in two parts (e.g. {name})", path)
    return out


def _read_json(path: Path, dataset: Dataset) -> SplitFile:
    import json

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError("split file not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"not a readable split file ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("splits"), list):
        raise DatasetError(f"not a {FORMAT} file (expected the JSON `dsmix data splits` writes, a CSV with split "
                           "columns, or a folder of train/val/test .npy index files)", path)
    try:
        parts = [{p: [str(n) for n in s.get(p, [])] for p in _PARTS} for s in record["splits"]]
        indices = [int(s.get("index", k)) for k, s in enumerate(record["splits"])]
    except (AttributeError, TypeError, ValueError):
        raise DatasetError("malformed splits list", path) from None
    if not parts:
        raise DatasetError("the file holds no split", path)
    splits, dropped = _from_names(dataset, parts, indices)
    meta = {k: v for k, v in record.items() if k != "splits"}
    return SplitFile(splits, f"{path} ({len(splits)} splits, our export)", dropped, meta)


_RATIO = re.compile(r"ratio\d+_seed\d+_split_\d+$", re.IGNORECASE)
_OURS = re.compile(r"split_\d+$", re.IGNORECASE)


def _read_columns(path: Path, dataset: Dataset, column: str | None) -> SplitFile:
    header, rows = read_table(path)
    lower = [h.strip().lower() for h in header]
    c_name = next((lower.index(n) for n in _NAME_COLUMNS if n in lower), 0)
    if column:
        cols = [i for i, h in enumerate(lower) if h == column.lower()] or \
               [i for i, h in enumerate(lower) if h.startswith(column.lower())]
        if not cols:
            raise DatasetError(f"no split column {column!r} (found: {', '.join(header)})", path)
    else:
        cols = ([i for i, h in enumerate(lower) if _RATIO.match(h)] or [i for i, h in enumerate(lower) if _OURS.match(h)]
                or [i for i, h in enumerate(lower) if h in ("official_split", "split", "set")][:1])
    if not cols:
        raise DatasetError("no split column (ratio*_split_NN, split_NN, official_split or split) in the header "
                           f"(found: {', '.join(header)})", path)
    parts: list[dict[str, list[str]]] = [{p: [] for p in _PARTS} for _ in cols]
    for line, cells in rows:
        if c_name >= len(cells):
            continue
        name = cells[c_name]
        for k, c in enumerate(cols):
            tag = parse_split_tag(cells[c] if c < len(cells) else None, path, line)
            if tag is not None:
                parts[k][tag].append(name)
    splits, dropped = _from_names(dataset, parts, list(range(len(cols))))
    return SplitFile(splits, f"{path} (columns {', '.join(header[c] for c in cols)})", dropped)


def _read_index_files(path: Path, dataset: Dataset) -> SplitFile:
    folder = path if path.is_dir() else path.parent
    arrays = {}
    for part in _PARTS:
        f = folder / f"{part}.npy"
        if not f.is_file():
            if part == "val":
                continue
            raise DatasetError(f"no {part}.npy here (ARNIQA-style split files are train.npy, val.npy, test.npy)",
                               folder)
        try:
            a = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"not a readable .npy index file ({exc})", f) from None
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
            raise DatasetError(f"expected a 2-D integer array (splits x images), got {a.dtype} {a.shape}", f)
        arrays[part] = a
    n_splits = arrays["train"].shape[0]
    if any(a.shape[0] != n_splits for a in arrays.values()):
        raise DatasetError("train/val/test index files hold different numbers of splits", folder)
    if dataset.total != len(dataset.items):
        raise DatasetError(f"index files number the label file's rows, but {dataset.total - len(dataset.items)} of "
                           f"its {dataset.total} images are not in the dataset here (missing); export the splits "
                           "by name instead (dsmix data splits, on the complete dataset)", folder)
    n = len(dataset.items)
    splits = []
    for k in range(n_splits):
        parts = {}
        for p in _PARTS:
            idx = arrays[p][k][arrays[p][k] >= 0] if p in arrays else np.zeros(0, dtype=np.int64)
            if len(idx) and idx.max() >= n:
                raise DatasetError(f"split {k + 1}: row {int(idx.max())} is past the {n} images of "
                                   f"{dataset.name}", folder / f"{p}.npy")
            parts[p] = sorted({int(i) for i in idx})
        splits.append(Split(k, parts["train"], parts["val"], parts["test"]))
    return SplitFile(splits, f"{folder} ({n_splits} splits, index files)", 0)
