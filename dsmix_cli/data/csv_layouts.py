"""Readers for the CSV forms: the pyiqa meta-info CSV and a generic CSV (docs/datasets.md).

Like the native readers in `layouts`, they parse label files into `Entry` rows and leave the
disk to `catalog.load_dataset`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from dsmix_cli.data.layouts import (Entry, Labels, find_column, get_cell, parse_float, parse_split_tag,
                                     read_table)
from dsmix_cli.errors import DatasetError


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _pyiqa_direction(file: Path) -> bool:
    """pyiqa meta files whose scores are DMOS (lower is better), known by file name."""
    lower = file.name.lower()
    return any(key in lower for key in ("liveiqa", "csiq", "livemd", "livem_"))


_PATCH = re.compile(r"^(?P<image>.+)_patch_\d+$", re.IGNORECASE)


def _image_key(name: str) -> str:
    """The image a patch row belongs to (`sub/AVA__149_patch_2.jpg` -> `AVA__149`)."""
    m = _PATCH.match(PurePosixPath(name).stem)
    return m.group("image") if m else PurePosixPath(name).stem


def image_rows(entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Split the rows of a meta file that lists patches beside their images (pyiqa's FLIVE file:
    `<subset>/<image>.jpg` rows, then `<folder>/<image>_patch_<k>.jpg` rows) into (image rows,
    patch rows).

    A row is a patch row when its file stem ends in `_patch_<k>` and the file also lists the
    image it was cut from (same stem without the suffix, or that stem with its extension).
    When the file lists any such patch, every `_patch_<k>` row is a patch row. Files without
    patches come back unchanged.
    """
    images: set[str] = set()
    for e in entries:
        p = PurePosixPath(e.name)
        if not _PATCH.match(p.stem):
            images.update((p.stem, p.name))
    is_patch = [bool(_PATCH.match(PurePosixPath(e.name).stem)) for e in entries]
    if not any(flag and _image_key(e.name) in images for e, flag in zip(entries, is_patch)):
        return entries, []
    return ([e for e, flag in zip(entries, is_patch) if not flag],
            [e for e, flag in zip(entries, is_patch) if flag])


def read_pyiqa(root: Path, label: Path | None) -> Labels:
    """A pyiqa meta-info CSV, columns by position: NR `name, score, ...` or FR
    `ref_name, dist_name, score, ...` (told apart by whether the second column holds numbers).
    Split columns `official_split` and `ratio802_seed123_split_NN` are read by name.
    Names are relative to `--root` (default: the CSV's folder). A file that lists patches beside
    their images (pyiqa's FLIVE meta file) gives its image rows only (`image_rows`)."""
    if label is None:
        raise DatasetError("the pyiqa layout needs --csv META_INFO.csv")
    file = Path(os.path.abspath(Path(label).expanduser()))
    header, rows = read_table(file)
    if not rows:
        raise DatasetError("no rows below the header", file)
    fr = len(header) >= 3 and not _is_number(rows[0][1][1] if len(rows[0][1]) > 1 else "")
    c_ref, c_name, c_score = (0, 1, 2) if fr else (None, 0, 1)
    c_official = find_column(header, ("official_split",), file, required=False)
    split_cols = [i for i, h in enumerate(header) if h.lower().startswith("ratio")]
    livec = "livechallenge" in file.name.lower()
    training = re.compile(r"(.*/)?t\d+\.bmp", re.IGNORECASE)
    entries = []
    for line, cells in rows:
        name = get_cell(cells, c_name, file, line)
        if livec and training.fullmatch(name):
            continue  # pyiqa's LIVEChallengeDataset drops the 7 training images too
        score = parse_float(get_cell(cells, c_score, file, line), file, line, header[c_score] or "score")
        ref = get_cell(cells, c_ref, file, line) if fr else None
        split = parse_split_tag(cells[c_official] if c_official is not None and c_official < len(cells) else None,
                           file, line)
        tags = tuple(parse_split_tag(cells[c] if c < len(cells) else None, file, line) for c in split_cols)
        entries.append(Entry(name, score, ((root, name),), ref=ref,
                             ref_path=root / ref if ref else None, split=split, split_tags=tags, line=line))
    notes = [f"pyiqa {'FR' if fr else 'NR'} meta-info CSV"]
    if not fr:
        entries, patches = image_rows(entries)
        if patches:
            n_images = len({_image_key(e.name) for e in patches})
            notes.append(f"{len(patches)} patch rows (of {n_images} images) left out: images only, so no "
                         f"image has patches on both sides of a split")
    return Labels(root, file, entries, notes=notes, lower_better=_pyiqa_direction(file), synthetic=fr,
                  split_columns=[header[c] for c in split_cols])


def read_csv(root: Path, label: Path | None) -> Labels:
    """A generic CSV with a header: `name,score`, optional `ref` and `split` (train/val/test).

    Names are relative to `--root` (default: the CSV's folder). Scores are read as higher is
    better unless the caller says otherwise (`--lower-better`).
    """
    if label is None:
        raise DatasetError("the csv layout needs --csv FILE (columns name,score and optional ref,split)")
    file = Path(os.path.abspath(Path(label).expanduser()))
    header, rows = read_table(file)
    c_name = find_column(header, ("name", "image", "image_name", "img_name", "dist_name", "dist_img", "path"), file)
    c_score = find_column(header, ("score", "mos", "dmos", "mos_zscore"), file)
    c_ref = find_column(header, ("ref", "ref_name", "ref_img", "reference"), file, required=False)
    c_split = find_column(header, ("split", "set", "official_split"), file, required=False)
    entries = []
    for line, cells in rows:
        name = get_cell(cells, c_name, file, line)
        score = parse_float(get_cell(cells, c_score, file, line), file, line, header[c_score])
        ref = (cells[c_ref] or None) if c_ref is not None and c_ref < len(cells) else None
        split = parse_split_tag(cells[c_split] if c_split is not None and c_split < len(cells) else None, file, line)
        entries.append(Entry(name, score, ((root, name),), ref=ref, split=split, line=line))
    synthetic = c_ref is not None and all(e.ref for e in entries)
    return Labels(root, file, entries, synthetic=synthetic)
