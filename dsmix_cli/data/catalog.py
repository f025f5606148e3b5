"""The dataset catalog: what each benchmark is, where it lives, and loading it from disk.

`load_dataset(name, root)` reads a dataset in its native release layout (or a pyiqa / generic
CSV), looks every labelled image up on disk, and returns a `Dataset` of `Item`s: absolute image
path, raw score as in the label file, reference id for synthetic sets. Missing images are
named, counted and refused (unless `skip_missing`) before any long run starts; with
`check_readable` every image is decoded once and the unreadable ones are set aside.

Scores stay raw here; `splits.ScoreNormaliser` maps them to [0, 1], higher is better, with
training-split statistics (docs/method.md section 7).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dsmix_cli.data import csv_layouts, layouts
from dsmix_cli.data.entries import Confinement, Unique, name_key
from dsmix_cli.errors import DatasetError

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Item:
    """One scored image.

    Attributes:
        path: absolute image path.
        score: raw label as in the label file (NaN for unscored sets like KADIS-700k).
        ref: reference id for synthetic sets (LIVE/CSIQ/TID/KADID/KADIS), else None.
        name: the name as in the label file (for reports).
        split: official split tag ("train"/"val"/"test") where the data carries one.
        ref_path: where the reference image is expected (synthetic sets; not checked).
    """

    path: Path
    score: float
    ref: str | None
    name: str
    split: str | None = None
    ref_path: Path | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A catalog entry: what a dataset is and how to read it.

    Attributes:
        name: canonical name (`dsmix data list`).
        description: one line.
        layout: the files expected under the root, in short.
        label: what the score is (MOS, DMOS, ...).
        lower_better: True for DMOS-like labels (the tool flips them for training).
        score_range: nominal range of the raw labels (None: taken from the data).
        synthetic: split by reference (True) or by image (False).
        epochs: linear-probing epochs (the paper's, docs/method.md section 7), None where not a probe set.
        images: images in the complete release (None where it depends on the file).
        aliases: other names accepted on the command line.
        probe_size: (W, H) the probing protocol fixes for this dataset's images (KonIQ-10k's
            512x384): images of another size are resized to it on load. None: used as they are
            (images smaller than the crop are resized up to it, FLIVE's shorter side to 224).
    """

    name: str
    description: str
    layout: str
    label: str
    lower_better: bool
    score_range: tuple[float, float] | None
    synthetic: bool
    epochs: int | None
    images: int | None
    aliases: tuple[str, ...] = ()
    probe_size: tuple[int, int] | None = None


DATASETS: dict[str, DatasetInfo] = {
    info.name: info for info in (
        DatasetInfo("live", "LIVE IQA release 2 (synthetic, 29 references)",
                    "refimgs/, jp2k/ jpeg/ wn/ gblur/ fastfading/ (img<N>.bmp), dmos_realigned.mat, "
                    "refnames_all.mat", "DMOS", True, (0.0, 100.0), True, 100, 779, ("live2", "liveiqa")),
        DatasetInfo("csiq", "CSIQ (synthetic, 30 references)",
                    "src_imgs/, dst_imgs_all/ (or dst_imgs/<type>/), csiq_label.txt",
                    "DMOS", True, (0.0, 1.0), True, 100, 866),
        DatasetInfo("tid2013", "TID2013 (synthetic, 25 references)",
                    "reference_images/, distorted_images/, mos_with_names.txt",
                    "MOS", False, (0.0, 9.0), True, 200, 3000, ("tid",)),
        DatasetInfo("kadid10k", "KADID-10k (synthetic, 81 references)",
                    "reference_images/ + distorted_images/ (or images/), dmos.csv",
                    "MOS (column dmos)", False, (1.0, 5.0), True, 200, 10125, ("kadid", "kadid-10k")),
        DatasetInfo("clive", "LIVE In the Wild Challenge (authentic; 7 training images left out)",
                    "ChallengeDB_release/: Data/AllImages_release.mat, Data/AllMOS_release.mat, Images/",
                    "MOS", False, (0.0, 100.0), False, 100, 1162, ("livec", "live-c", "challengedb")),
        DatasetInfo("koniq10k", "KonIQ-10k (authentic; official split from a 'set' column)",
                    "koniq10k_scores_and_distributions.csv, 512x384/ or 1024x768/",
                    "MOS_zscore", False, (0.0, 100.0), False, 200, 10073, ("koniq", "koniq-10k"),
                    probe_size=(512, 384)),
        DatasetInfo("flive", "FLIVE / PaQ-2-PiQ images (authentic)",
                    "labels_image.csv, FLIVE/<basename> (or database/<subset>/<file>)",
                    "MOS", False, (0.0, 100.0), False, 200, 39810, ("paq2piq", "livefb")),
        DatasetInfo("kadis700k", "KADIS-700k distorted images (no scores; pre-training)",
                    "kadis700k_ref_imgs.csv, ref_imgs/, dist_imgs/<stem>_<tt>_<ll>.bmp",
                    "none (type, level)", False, None, True, None, 700000, ("kadis", "kadis-700k")),
        DatasetInfo("pyiqa", "a pyiqa meta-info CSV (--csv; NR or FR, split columns)",
                    "--csv meta_info_*.csv, images under --root (default: the CSV's folder)",
                    "score column", False, None, False, None, None),
        DatasetInfo("csv", "a generic CSV (--csv): name,score[,ref][,split]",
                    "--csv FILE, images under --root (default: the CSV's folder)",
                    "score column", False, None, False, None, None),
    )
}

READERS = {**layouts.NATIVE_READERS, "pyiqa": csv_layouts.read_pyiqa, "csv": csv_layouts.read_csv}
ALIASES: dict[str, str] = {alias: info.name for info in DATASETS.values() for alias in info.aliases}
CSV_LAYOUTS = ("pyiqa", "csv")


def canonical_name(name: str) -> str:
    """The catalog name for `name` or one of its aliases (case-insensitive).

    Raises:
        DatasetError: an unknown name; the message lists the known ones.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
                           f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def resolve_root(name: str, root: Path | None) -> Path:
    """The dataset folder: `root`, else `$DSMIX_DATA/<name>`, else `./datasets/<name>`."""
    if root is not None:
        return _abs(root)
    key = canonical_name(name)
    env = os.environ.get("DSMIX_DATA")
    base = Path(env).expanduser() if env else Path("datasets")
    return _abs(base / key)


def _abs(path: str | Path) -> Path:
    """Absolute, with `..` collapsed, symlinks kept."""
    return Path(os.path.abspath(Path(path).expanduser()))


@dataclass
class Dataset:
    """A dataset as found on disk.

    Attributes:
        name: canonical catalog name.
        root: the folder the images were looked up under.
        items: the usable images (present and, when checked, readable), in label-file order.
        lower_better: True when the raw label is DMOS-like.
        score_range: nominal range of the raw labels.
        synthetic: split by reference (True) or by image.
        missing: expected paths of labelled images not found.
        unreadable: images found but not decodable (only with `check_readable`).
        references: number of distinct references among `items` (None for authentic sets).
        label_file: the label file read.
        total: labelled images in the label file (usable + missing + unreadable).
        notes: facts a report should show (e.g. which image folder was used).
        unreadable_reasons: one reason per `unreadable` path.
        split_columns: extra split columns (pyiqa `ratio802_seed123_split_NN`), one tag per item.
    """

    name: str
    root: Path
    items: list[Item]
    lower_better: bool
    score_range: tuple[float, float]
    synthetic: bool
    missing: list[Path]
    unreadable: list[Path]
    references: int | None
    label_file: Path | None = None
    total: int = 0
    notes: list[str] = field(default_factory=list)
    unreadable_reasons: list[str] = field(default_factory=list)
    split_columns: dict[str, list[str | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def scores(self) -> np.ndarray:
        """Raw scores of the usable items, float64, in item order."""
        return np.array([it.score for it in self.items], dtype=np.float64)

    def paths(self) -> list[Path]:
        return [it.path for it in self.items]


class _Finder:
    """Looks names up with one directory listing per folder (fast on folders of 100k files),
    falling back to a case-insensitive match (`I01.BMP` for `i01.bmp`)."""

    def __init__(self) -> None:
        self._names: dict[Path, set[str]] = {}
        self._lower: dict[Path, dict[str, str]] = {}

    def _listing(self, folder: Path) -> set[str]:
        names = self._names.get(folder)
        if names is None:
            try:
                names = set(os.listdir(folder))
            except OSError:
                names = set()
            self._names[folder] = names
        return names

    def find(self, folder: Path, name: str) -> Path | None:
        if "/" in name:
            sub, name = name.rsplit("/", 1)
            folder = folder / sub
        names = self._listing(folder)
        if name in names:
            return folder / name
        lower = self._lower.get(folder)
        if lower is None:
            lower = self._lower[folder] = {n.lower(): n for n in names}
        hit = lower.get(name.lower())
        return folder / hit if hit is not None else None


def format_examples(paths: list[Path], root: Path, n: int = 3) -> str:
    shown = []
    for p in paths[:n]:
        try:
            shown.append(str(p.relative_to(root)))
        except ValueError:
            shown.append(str(p))
    return ", ".join(shown) + (", ..." if len(paths) > n else "")


def load_dataset(name: str, root: Path | None = None, *, skip_missing: bool = False,
                 check_readable: bool = False, csv: Path | None = None,
                 lower_better: bool | None = None, on_progress: ProgressFn | None = None,
                 workers: int = 4, allow_outside_root: bool = False) -> Dataset:
    """Read a dataset's labels and find its images on disk.

    Args:
        name: a catalog name or alias (`dsmix data list`).
        root: the dataset folder (default: `resolve_root`; for `pyiqa`/`csv`: the CSV's folder).
        skip_missing: go on with the images present instead of refusing when some are missing.
        check_readable: decode every image once and set aside the unreadable ones.
        csv: the label file, for `pyiqa`/`csv` (required) or in place of a native CSV/text
            label file (e.g. KADIS-700k's `kadis700k_ref_imgs.csv` kept elsewhere).
        lower_better: score direction of a `pyiqa`/`csv` label file (default: higher is better,
            except pyiqa's LIVE/CSIQ/LIVE-MD meta files).
        on_progress: called as `on_progress(done, total)` while decoding.
        workers: decoding threads for `check_readable`.
        allow_outside_root: accept entries that lie or resolve (symbolic links followed)
            outside `root`; refused by default.

    Returns:
        The `Dataset`.

    Raises:
        DatasetError: unknown name, missing folder, missing or malformed label file, an image
            listed twice or outside `root` (naming the file and the line), or images missing
            without `skip_missing` ("N of M images are missing (e.g. ...)").
    """
    key = canonical_name(name)
    info = DATASETS[key]
    if key in CSV_LAYOUTS:
        if csv is None:
            raise DatasetError(f"the {key} layout needs --csv FILE")
        csv = _abs(csv)
        if not csv.is_file():
            raise DatasetError("label file not found" if not csv.exists() else "label file is not a file", csv)
        root = _abs(root) if root is not None else csv.parent
    else:
        root = resolve_root(key, root)
        if lower_better is not None and lower_better != info.lower_better:
            raise DatasetError(f"{key} scores are {'lower' if info.lower_better else 'higher'} "
                               "is better; the direction cannot be changed for a native layout")
    if not root.is_dir():
        raise DatasetError(f"dataset folder for {key} not found (pass --root DIR or set $DSMIX_DATA)", root)
    labels = READERS[key](root, csv)
    if not labels.entries:
        raise DatasetError("the label file lists no images", labels.label_file)

    _check_entries(labels, root, allow_outside_root)
    confine = Confinement(root, allow=allow_outside_root)
    same_file = Unique(labels.label_file, unit=labels.unit)
    finder = _Finder()
    items: list[Item] = []
    missing: list[Path] = []
    kept: list[int] = []
    for i, e in enumerate(labels.entries):
        path = None
        for folder, rel in e.candidates:
            path = finder.find(folder, rel)
            if path is not None:
                break
        if path is None:
            folder, rel = e.candidates[0]
            missing.append(folder / rel)
            continue
        confine.check(path, labels.label_file, e.line, e.name, labels.unit)  # symbolic links followed
        same_file.add(confine.real_path(path), e.line, f"{e.name!r} (the file {path})")
        items.append(Item(path, e.score, e.ref, e.name, e.split, e.ref_path))
        kept.append(i)
    total = len(labels.entries)
    if missing and not skip_missing:
        raise DatasetError(
            f"{len(missing)} of {total} images are missing (e.g. {format_examples(missing, labels.root)}); "
            f"pass --skip-missing to go on with the {len(items)} present", labels.root)
    if not items:
        raise DatasetError(f"none of the {total} images listed in {labels.label_file.name} were found "
                           f"(e.g. {format_examples(missing, labels.root)})", labels.root)

    if lower_better is None:
        lower_better = labels.lower_better if labels.lower_better is not None else info.lower_better
    synthetic = labels.synthetic if labels.synthetic is not None else info.synthetic
    score_range = labels.score_range or info.score_range
    if score_range is None:
        finite = [it.score for it in items if math.isfinite(it.score)]
        score_range = (min(finite), max(finite)) if finite else (math.nan, math.nan)
    split_columns = {col: [labels.entries[i].split_tags[c] for i in kept]
                     for c, col in enumerate(labels.split_columns)}
    dataset = Dataset(
        name=key, root=labels.root, items=items, lower_better=bool(lower_better),
        score_range=(float(score_range[0]), float(score_range[1])), synthetic=bool(synthetic),
        missing=missing, unreadable=[], references=None, label_file=labels.label_file, total=total,
        notes=list(labels.notes), split_columns=split_columns)
    if check_readable:
        from dsmix_cli.data.check import check_images

        dataset = check_images(dataset, on_progress=on_progress, workers=workers)
    dataset.references = count_refs(dataset)
    return dataset


def _check_entries(labels: layouts.Labels, root: Path, allow_outside_root: bool) -> None:
    """Before looking at the disk: every name listed once, and every place an entry may sit
    (and its reference) inside `root` as written (`..` collapsed, absolute paths refused)."""
    once = Unique(labels.label_file, unit=labels.unit)
    confine = Confinement(root, allow=allow_outside_root)
    for e in labels.entries:
        once.add(name_key(e.name), e.line, repr(e.name), detail=f"score {e.score:g}" if math.isfinite(e.score) else "")
        for folder, rel in e.candidates:
            confine.check_entry(folder, rel, labels.label_file, e.line, e.name, labels.unit)
        if e.ref_path is not None:
            confine.check(e.ref_path, labels.label_file, e.line, str(e.ref_path), labels.unit, resolve=False)


def count_refs(dataset: Dataset) -> int | None:
    """Distinct references among the usable items of a synthetic set (None for authentic)."""
    if not dataset.synthetic:
        return None
    return len({it.ref for it in dataset.items if it.ref is not None})
