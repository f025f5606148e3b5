"""Readers for each dataset's label files, in its native release layout (docs/datasets.md, "Native layouts").
The pyiqa meta-info CSV and the generic CSV are in `csv_layouts`.

A reader parses label files only: it turns each labelled image into an `Entry` (the name as in
the label file, the raw score, the reference id, an official split tag) together with the
places the image may sit on disk, tried in order (e.g. KADID-10k's `distorted_images/` or the
official archive's flat `images/`). Looking those places up on disk, and deciding what is
missing, is `catalog.load_dataset`'s job. Every problem with a label file raises `DatasetError`
naming the file (and the line, where there is one).
"""

from __future__ import annotations

import csv as _csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dsmix_cli.data.entries import Unique, name_key
from dsmix_cli.errors import DatasetError

# LIVE release 2: the five distortion folders, in the order `dmos_realigned.mat` lists them.
LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
LIVE_ENTRIES = sum(n for _, n in LIVE_FOLDERS)  # 982

SPLIT_TAGS = {"train": "train", "training": "train", "val": "val", "valid": "val",
              "validation": "val", "test": "test", "testing": "test"}


class Entry(NamedTuple):
    """One labelled image as the label file describes it.

    `candidates` are (folder, name) places where the image may be, tried in order; the first
    one is what a report calls the expected path when none exists.
    """

    name: str
    score: float
    candidates: tuple[tuple[Path, str], ...]
    ref: str | None = None
    ref_path: Path | None = None
    split: str | None = None
    split_tags: tuple[str | None, ...] = ()
    line: int | None = None  # where the label file lists it (line, or entry of a .mat file)


@dataclass
class Labels:
    """What a reader found: the entries and anything that overrides the catalog's defaults."""

    root: Path
    label_file: Path
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)
    score_range: tuple[float, float] | None = None
    lower_better: bool | None = None
    synthetic: bool | None = None
    split_columns: list[str] = field(default_factory=list)
    unit: str = "line"  # what `Entry.line` counts: "line" (text files) or "entry" (.mat files)


# ---------------------------------------------------------------------------------------------
# Helpers: label files


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what} not found (is --root the dataset folder? see `dsmix data list`)", path)
    return path


def _load_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Variables `keys` of a MATLAB v5 .mat file, read with scipy."""
    import scipy.io

    _require(path, "label file")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, ... on bad files
        raise DatasetError(f"not a MATLAB .mat file scipy can read ({exc})", path) from None
    found = sorted(k for k in mat if not k.startswith("__"))
    out = {}
    for key in keys:
        if key not in mat:
            raise DatasetError(f"has no variable {key!r} (found: {', '.join(found) or 'none'})", path)
        out[key] = np.asarray(mat[key])
    return out


def _mat_strings(arr: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings (as scipy loads it) as a flat list of str."""
    out = []
    for cell in arr.ravel():
        while isinstance(cell, np.ndarray) and cell.dtype == object and cell.size == 1:
            cell = cell.ravel()[0]
        if isinstance(cell, np.ndarray):
            cell = "".join(str(c) for c in cell.ravel())
        out.append(str(cell).strip())
    return out


def read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A CSV file with a header: (header, [(line number, cells), ...]); blank lines skipped."""
    _require(path, "label file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(_csv.reader(fh))
    except UnicodeDecodeError:
        raise DatasetError("not a UTF-8 text CSV file", path) from None
    except _csv.Error as exc:  # a NUL byte, a field past the csv module's size limit, ...
        raise DatasetError(f"not a readable CSV file ({exc})", path) from None
    numbered = [(i + 1, [c.strip() for c in r]) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise DatasetError("empty label file", path)
    header = numbered[0][1]
    return header, numbered[1:]


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """A whitespace (or comma) separated text file: [(line number, tokens), ...]."""
    _require(path, "label file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError("not a text file", path) from None
    out = []
    for i, line in enumerate(text.splitlines()):
        tokens = line.replace(",", " ").replace(";", " ").split()
        if tokens:
            out.append((i + 1, tokens))
    if not out:
        raise DatasetError("empty label file", path)
    return out


def parse_float(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"line {line}: {what} {text!r} is not a number", path) from None
    if not math.isfinite(value):
        raise DatasetError(f"line {line}: {what} is {text!r}, not a finite number", path)
    return value


def find_column(header: list[str], names: tuple[str, ...], path: Path, required: bool = True) -> int | None:
    lower = [h.strip().lower() for h in header]
    for name in names:
        if name.lower() in lower:
            return lower.index(name.lower())
    if required:
        raise DatasetError(f"no column {' or '.join(repr(n) for n in names)} in the header "
                           f"(found: {', '.join(header)})", path)
    return None


def get_cell(cells: list[str], index: int, path: Path, line: int) -> str:
    if index >= len(cells):
        raise DatasetError(f"line {line}: expected at least {index + 1} columns, found {len(cells)}", path)
    return cells[index]


def parse_split_tag(text: str | None, path: Path, line: int) -> str | None:
    if text is None or text.strip() == "" or text.strip().lower() in ("none", "nan", "-"):
        return None
    tag = SPLIT_TAGS.get(text.strip().lower())
    if tag is None:
        raise DatasetError(f"line {line}: split tag {text!r} is not train, val or test", path)
    return tag


def _at(root: Path, label: Path | None, default: str) -> Path:
    return Path(os.path.abspath(Path(label).expanduser())) if label is not None else root / default


def _no_csv(name: str, label: Path | None) -> None:
    if label is not None:
        raise DatasetError(f"{name} reads its .mat label files; --csv does not apply "
                           f"(use the dataset name 'pyiqa' or 'csv' for a CSV label file)", label)


# ---------------------------------------------------------------------------------------------
# Native layouts


def read_live(root: Path, label: Path | None) -> Labels:
    """LIVE release 2: `dmos_realigned.mat` (`dmos_new`, `orgs`), `refnames_all.mat`.

    The 982 entries are `jp2k/img1.bmp`... `fastfading/img174.bmp` in that order; entries with
    `orgs == 1` are the undistorted references and are left out (779 distorted images remain).
    """
    _no_csv("live", label)
    dmos_file = root / "dmos_realigned.mat"
    refs_file = root / "refnames_all.mat"
    d = _load_mat(dmos_file, ("dmos_new", "orgs"))
    dmos, orgs = d["dmos_new"].ravel().astype(np.float64), d["orgs"].ravel()
    refnames = _mat_strings(_load_mat(refs_file, ("refnames_all",))["refnames_all"])
    for arr, file, what in ((dmos, dmos_file, "dmos_new"), (orgs, dmos_file, "orgs"),
                            (refnames, refs_file, "refnames_all")):
        if len(arr) != LIVE_ENTRIES:
            raise DatasetError(f"{what} has {len(arr)} entries, expected {LIVE_ENTRIES} "
                               "(227 jp2k + 233 jpeg + 174 wn + 174 gblur + 174 fastfading)", file)
    entries, i = [], 0
    for folder, count in LIVE_FOLDERS:
        for k in range(1, count + 1):
            if not orgs[i]:
                name = f"img{k}.bmp"
                entries.append(Entry(f"{folder}/{name}", float(dmos[i]), ((root / folder, name),),
                                     ref=refnames[i], ref_path=root / "refimgs" / refnames[i]))
            i += 1
    return Labels(root, dmos_file, entries)


def read_csiq(root: Path, label: Path | None) -> Labels:
    """CSIQ: `csiq_label.txt` lines `<name> <dmos>`; images in `dst_imgs_all/` (or the original
    release's `dst_imgs/<type>/`); ref id = first dot-token + extension (`1600.png`)."""
    file = _at(root, label, "csiq_label.txt")
    entries = []
    for line, tokens in _read_lines(file):
        if len(tokens) != 2:
            raise DatasetError(f"line {line}: expected '<name> <dmos>', found {' '.join(tokens)!r}", file)
        name, score = tokens[0], parse_float(tokens[1], file, line, "DMOS")
        parts = name.split(".")
        if len(parts) < 3:
            raise DatasetError(f"line {line}: name {name!r} is not <ref>.<TYPE>.<level>.<ext>", file)
        ref = parts[0] + Path(name).suffix
        entries.append(Entry(name, score, ((root / "dst_imgs_all", name),
                                           (root / "dst_imgs" / parts[1].lower(), name)),
                             ref=ref, ref_path=root / "src_imgs" / ref, line=line))
    return Labels(root, file, entries)


def read_tid2013(root: Path, label: Path | None) -> Labels:
    """TID2013: `mos_with_names.txt` lines `<mos> <name>`, images in `distorted_images/`;
    ref id = the two digits after the leading letter (`i01_01_1.bmp` -> `01`)."""
    file = _at(root, label, "mos_with_names.txt")
    entries = []
    for line, tokens in _read_lines(file):
        if len(tokens) != 2:
            raise DatasetError(f"line {line}: expected '<mos> <name>', found {' '.join(tokens)!r}", file)
        score, name = parse_float(tokens[0], file, line, "MOS"), tokens[1]
        ref = name[1:3]
        if not ref.isdigit():
            raise DatasetError(f"line {line}: name {name!r} is not iXX_TT_L.bmp", file)
        entries.append(Entry(name, score, ((root / "distorted_images", name),),
                             ref=ref, ref_path=root / "reference_images" / f"I{ref}.BMP", line=line))
    return Labels(root, file, entries)


def read_kadid10k(root: Path, label: Path | None) -> Labels:
    """KADID-10k: `dmos.csv` (`dist_img, ref_img, dmos, var`); images in `distorted_images/`
    (or the official archive's flat `images/`); ref id = `ref_img[1:3]`, all 81 references."""
    file = _at(root, label, "dmos.csv")
    header, rows = read_table(file)
    c_dist, c_ref, c_score = (find_column(header, (n,), file) for n in ("dist_img", "ref_img", "dmos"))
    entries = []
    for line, cells in rows:
        name, ref_img = get_cell(cells, c_dist, file, line), get_cell(cells, c_ref, file, line)
        score = parse_float(get_cell(cells, c_score, file, line), file, line, "dmos")
        ref = ref_img[1:3]
        entries.append(Entry(name, score, ((root / "distorted_images", name), (root / "images", name)),
                             ref=ref, ref_path=root / "reference_images" / ref_img, line=line))
    return Labels(root, file, entries)


def clive_base(root: Path) -> Path:
    """`ChallengeDB_release` itself, whether `root` names it or its parent."""
    if (root / "Data").is_dir() or not (root / "ChallengeDB_release").is_dir():
        return root
    return root / "ChallengeDB_release"


def read_clive(root: Path, label: Path | None) -> Labels:
    """CLIVE: `Data/AllImages_release.mat` and `Data/AllMOS_release.mat`, images in `Images/`.

    The 7 training images (`t1.bmp`... `t7.bmp`, the first 7 entries) are left out: 1,162
    test images remain.
    """
    _no_csv("clive", label)
    base = clive_base(root)
    names_file, mos_file = base / "Data" / "AllImages_release.mat", base / "Data" / "AllMOS_release.mat"
    names = _mat_strings(_load_mat(names_file, ("AllImages_release",))["AllImages_release"])
    mos = _load_mat(mos_file, ("AllMOS_release",))["AllMOS_release"].ravel().astype(np.float64)
    if len(names) != len(mos):
        raise DatasetError(f"{len(names)} names in {names_file.name} but {len(mos)} scores", mos_file)
    training = re.compile(r"t\d+\.bmp", re.IGNORECASE)
    entries, once = [], Unique(names_file, unit="entry")
    for k, (n, s) in enumerate(zip(names, mos)):
        if not training.fullmatch(n):
            once.add(name_key(n), k + 1, repr(n), detail=f"MOS {s:g}")  # the names file, by entry
            entries.append(Entry(n, float(s), ((base / "Images", n),), line=k + 1))
    return Labels(base, mos_file, entries, unit="entry")


def read_koniq10k(root: Path, label: Path | None) -> Labels:
    """KonIQ-10k: `koniq10k_scores_and_distributions.csv` (`image_name`, `MOS_zscore`), images
    in `512x384/` when present, else `1024x768/`. The official split comes from a `set` column
    (training/validation/test), read from the label file or from `koniq10k_distributions_sets.csv`
    beside it."""
    sets_file = root / "koniq10k_distributions_sets.csv"
    if label is None and not (root / "koniq10k_scores_and_distributions.csv").is_file() and sets_file.is_file():
        label = sets_file
    file = _at(root, label, "koniq10k_scores_and_distributions.csv")
    header, rows = read_table(file)
    c_name = find_column(header, ("image_name",), file)
    c_score = find_column(header, ("MOS_zscore",), file, required=False)
    notes, score_range = [], None
    if c_score is None:
        c_score = find_column(header, ("MOS",), file)
        notes.append(f"{file.name} has no MOS_zscore column: using MOS (1-5)")
        score_range = (1.0, 5.0)
    c_set = find_column(header, ("set",), file, required=False)
    split_of: dict[str, str | None] = {}
    if c_set is None and sets_file.is_file() and sets_file != file:
        s_header, s_rows = read_table(sets_file)
        s_name, s_set = find_column(s_header, ("image_name",), sets_file), find_column(s_header, ("set",), sets_file)
        for line, cells in s_rows:
            split_of[get_cell(cells, s_name, sets_file, line)] = parse_split_tag(
                get_cell(cells, s_set, sets_file, line), sets_file, line)
    images = "512x384" if (root / "512x384").is_dir() else "1024x768"
    notes.append(f"images from {images}/")
    entries = []
    for line, cells in rows:
        name = get_cell(cells, c_name, file, line)
        score = parse_float(get_cell(cells, c_score, file, line), file, line, header[c_score])
        split = parse_split_tag(get_cell(cells, c_set, file, line), file, line) if c_set is not None else split_of.get(name)
        entries.append(Entry(name, score, ((root / images, name),), split=split, line=line))
    return Labels(root, file, entries, notes=notes, score_range=score_range)


def read_flive(root: Path, label: Path | None) -> Labels:
    """FLIVE (PaQ-2-PiQ): `labels_image.csv` (`name` = `subset/file.jpg`, `mos`); images
    flattened into `FLIVE/<basename>` (the TReS layout), or under `database/<name>` or
    `<root>/<name>` as unpacked."""
    file = _at(root, label, "labels_image.csv")
    header, rows = read_table(file)
    c_name = find_column(header, ("name", "name_image"), file)
    c_score = find_column(header, ("mos", "mos_image"), file)
    entries = []
    for line, cells in rows:
        name = get_cell(cells, c_name, file, line)
        score = parse_float(get_cell(cells, c_score, file, line), file, line, "mos")
        entries.append(Entry(name, score, ((root / "FLIVE", name.rsplit("/", 1)[-1]),
                                           (root / "database", name), (root, name)), line=line))
    return Labels(root, file, entries)


def read_kadis700k(root: Path, label: Path | None) -> Labels:
    """KADIS-700k: `kadis700k_ref_imgs.csv` (`ref_im, dist_type_1, dist_type_2`), references in
    `ref_imgs/`, distorted images `dist_imgs/<stem>_<tt>_<ll>.bmp` (ll = 01..05). No scores.

    As `dsmix synthesize --csv` does by default (docs/distortions.md, "The type-8 decision"), a
    row with a `dist_type_2` (7,8) names type `dist_type_2`; the official generator's
    `dist_type_1` file is accepted in its place, and `.png` in place of `.bmp` (as
    `dsmix synthesize --format png` writes).
    """
    file = _at(root, label, "kadis700k_ref_imgs.csv")
    header, rows = read_table(file)
    c_ref = find_column(header, ("ref_im",), file)
    c_t1 = find_column(header, ("dist_type_1",), file)
    c_t2 = find_column(header, ("dist_type_2",), file, required=False)
    dist, ref_dir = root / "dist_imgs", root / "ref_imgs"
    nan = float("nan")
    entries = []
    once = Unique(file, "reference")
    for line, cells in rows:
        ref_im = get_cell(cells, c_ref, file, line)
        once.add(name_key(ref_im), line, repr(ref_im))
        types = []
        for c in (c_t2, c_t1):
            text = cells[c] if c is not None and c < len(cells) else ""
            if text:
                if not text.isdigit() or not 1 <= int(text) <= 25:
                    raise DatasetError(f"line {line}: distortion type {text!r} is not 1..25", file)
                if int(text) not in types:
                    types.append(int(text))
        if not types:
            raise DatasetError(f"line {line}: no distortion type for {ref_im!r}", file)
        stem = ref_im.rsplit(".", 1)[0]
        ref_path = ref_dir / ref_im
        prefixes = [f"{stem}_{t:02d}_" for t in types]
        for level in ("01", "02", "03", "04", "05"):
            cands = []
            for prefix in prefixes:
                cands.append((dist, f"{prefix}{level}.bmp"))
                cands.append((dist, f"{prefix}{level}.png"))
            entries.append(Entry(cands[0][1], nan, tuple(cands), ref=stem, ref_path=ref_path, line=line))
    return Labels(root, file, entries, notes=["no quality scores (labels are type and level)"])


NATIVE_READERS = {
    "live": read_live, "csiq": read_csiq, "tid2013": read_tid2013, "kadid10k": read_kadid10k,
    "clive": read_clive, "koniq10k": read_koniq10k, "flive": read_flive, "kadis700k": read_kadis700k,
}
