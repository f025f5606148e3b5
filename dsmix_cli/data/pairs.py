"""Distorted/reference image pairs: the three folder layouts that hold them, and the paired crops.

`load_pairs` reads, in this order of detection:

1. a folder written by `dsmix synthesize`: `D/dist_imgs.csv` with the header
   `dist_img,ref_img,type,level`, paths relative to `D`;
2. KADID-10k: `D/dmos.csv` (`dist_img,ref_img,dmos,var`) with the images under `images/` (the
   official archive) or `distorted_images/` + `reference_images/`; type and level come from the
   name `IXX_TT_LL.png`;
3. the official KADIS-700k layout: `D/kadis700k_ref_imgs.csv` (`ref_im,dist_type_1,dist_type_2`),
   `D/ref_imgs/`, `D/dist_imgs/<stem>_<tt>_<ll>.<ext>`. The archive ships no distorted images, so
   the pairs are the distorted files **present** in `dist_imgs/` whose name the CSV predicts from
   either type column (so both the official 24-type generation and this project's type-8 rows
   load); an absent distorted image is not an error, a missing reference is.

Every reader checks its label file before anything else: each distorted image (each KADIS
reference) listed once, types 1..25 and levels 1..5, and every entry inside the `--data` folder
once `..` and symbolic links are resolved (`data.entries`), unless `allow_outside_root`. The
references of a `dsmix synthesize` folder may also lie in the references folder that run
recorded in `D/synthesize.json`.

`PairCropDataset` gives the *same* random crop and flip to a distorted image and its reference
(docs/method.md section 1: without it the difference would be meaningless), drawn from
`generator(seed, "sample", epoch, index)`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from dsmix_cli.data.entries import Confinement, Unique, name_key
from dsmix_cli.dsm.gt import load_gt_map
from dsmix_cli.engine.data import split_keys
from dsmix_cli.engine.runtime import generator
from dsmix_cli.errors import DatasetError, DsmixError
from dsmix_cli.imageio import is_image_file, load_rgb_tensor

SYNTH_CSV = "dist_imgs.csv"
# Written by `dsmix synthesize` beside its manifest: {"refs": the references folder, ...}. The
# manifest's references may lie in that folder as well as in the dataset folder itself.
SYNTH_RECORD = "synthesize.json"
# The labels of a pair: KADIS/KADID type 1..25 and level 1..5 (the heads of QEP have 25 + 1 and
# 5 + 1 classes, class 0 being pristine).
NUM_TYPES, NUM_LEVELS = 25, 5
KADID_CSV = "dmos.csv"
KADIS_CSV = "kadis700k_ref_imgs.csv"
_KADID_NAME = re.compile(r"^I(\d+)_(\d+)_(\d+)$", re.IGNORECASE)
_KADIS_NAME = re.compile(r"^(.+)_(\d{2})_(\d{2})$")


@dataclass(frozen=True)
class Pair:
    """One distorted image, its reference, and its KADIS/KADID type (1-25) and level (1-5)."""

    dist: Path
    ref: Path
    type: int
    level: int


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(f"missing column(s) {', '.join(missing)} (header: {','.join(header)}; "
                                   f"expected {','.join(required)})", path)
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read the CSV ({exc})", path) from None


def _int_field(row: dict, key: str, path: Path, line: int) -> int:
    try:
        return int(row[key])
    except (KeyError, ValueError):
        raise DatasetError(f"line {line}: {key} {row.get(key)!r} is not an integer", path) from None


def _check_label(dist_type: int, level: int, path: Path, line: int) -> None:
    """A pair's type must be 1..25 and its level 1..5 (else training would fail mid-run)."""
    if not 1 <= dist_type <= NUM_TYPES:
        raise DatasetError(f"line {line}: distortion type {dist_type} is not in 1..{NUM_TYPES}", path)
    if not 1 <= level <= NUM_LEVELS:
        raise DatasetError(f"line {line}: level {level} is not in 1..{NUM_LEVELS}", path)


def _recorded_refs(root: Path) -> tuple[Path, ...]:
    """The references folder a `dsmix synthesize` run recorded for this folder (if any)."""
    try:
        record = json.loads((root / SYNTH_RECORD).read_text(encoding="utf-8"))
        refs = record.get("refs") if isinstance(record, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ()
    return (Path(refs),) if isinstance(refs, str) and refs else ()


def _check_missing(pairs: list[Pair], where: Path, skip_missing: bool) -> list[Pair]:
    """Drop pairs whose files are absent, or raise naming how many and a few examples."""
    exists: dict[Path, bool] = {}

    def present(p: Path) -> bool:
        if p not in exists:
            exists[p] = p.is_file()
        return exists[p]

    kept = [p for p in pairs if present(p.dist) and present(p.ref)]
    if len(kept) == len(pairs) or skip_missing:
        return kept
    gone = sorted({str(f) for p in pairs for f in (p.dist, p.ref) if not present(f)})
    n_bad = len(pairs) - len(kept)
    raise DatasetError(
        f"{n_bad} of {len(pairs)} pairs miss a file ({len(gone)} files missing, e.g. "
        f"{', '.join(gone[:3])}); restore them or pass --skip-missing to use the {len(kept)} complete pairs",
        where)


def _load_synthesized(root: Path, csv_path: Path, skip_missing: bool, allow_outside_root: bool) -> list[Pair]:
    rows = _read_csv(csv_path, ("dist_img", "ref_img", "type", "level"))
    dists = Confinement(root, allow=allow_outside_root, option="the --data folder")
    refs = Confinement(root, allow=allow_outside_root, option="the --data folder (or the references folder "
                       f"{SYNTH_RECORD} records)", extra_roots=_recorded_refs(root))
    once = Unique(csv_path, "distorted image")
    pairs = []
    for i, row in enumerate(rows, start=2):
        t, lv = _int_field(row, "type", csv_path, i), _int_field(row, "level", csv_path, i)
        _check_label(t, lv, csv_path, i)
        once.add(name_key(row["dist_img"]), i, repr(row["dist_img"]))
        dist, ref = root / row["dist_img"], root / row["ref_img"]
        dists.check(dist, csv_path, i, row["dist_img"])
        refs.check(ref, csv_path, i, row["ref_img"])
        pairs.append(Pair(dist=dist, ref=ref, type=t, level=lv))
    return _check_missing(pairs, csv_path, skip_missing)


def _load_kadid(root: Path, skip_missing: bool, allow_outside_root: bool) -> list[Pair]:
    csv_path = root / KADID_CSV
    rows = _read_csv(csv_path, ("dist_img", "ref_img"))
    dist_dirs = [d for d in (root / "distorted_images", root / "images") if d.is_dir()]
    ref_dirs = [d for d in (root / "reference_images", root / "images") if d.is_dir()]
    if not dist_dirs:
        raise DatasetError("KADID-10k layout: neither images/ nor distorted_images/ is here", root)

    def find(name: str, dirs: list[Path]) -> Path:
        for d in dirs:
            if (d / name).is_file():
                return d / name
        return (dirs[0] if dirs else root) / name

    confine = Confinement(root, allow=allow_outside_root, option="the --data folder")
    once = Unique(csv_path, "distorted image")
    pairs = []
    for i, row in enumerate(rows, start=2):
        m = _KADID_NAME.match(Path(row["dist_img"]).stem)
        if m is None:
            raise DatasetError(f"line {i}: distorted name {row['dist_img']!r} is not IXX_TT_LL.ext", csv_path)
        _check_label(int(m.group(2)), int(m.group(3)), csv_path, i)
        once.add(name_key(row["dist_img"]), i, repr(row["dist_img"]))
        for column, dirs in (("dist_img", dist_dirs), ("ref_img", ref_dirs)):
            for d in dirs:
                confine.check_entry(d, row[column], csv_path, i, row[column])
        dist, ref = find(row["dist_img"], dist_dirs), find(row["ref_img"], ref_dirs)
        confine.check(dist, csv_path, i, row["dist_img"])
        confine.check(ref, csv_path, i, row["ref_img"])
        pairs.append(Pair(dist=dist, ref=ref, type=int(m.group(2)), level=int(m.group(3))))
    return _check_missing(pairs, root, skip_missing)


def _load_kadis(root: Path, skip_missing: bool, allow_outside_root: bool) -> list[Pair]:
    csv_path, ref_dir, dist_dir = root / KADIS_CSV, root / "ref_imgs", root / "dist_imgs"
    if not dist_dir.is_dir():
        raise DatasetError("KADIS-700k layout without dist_imgs/: the archive ships only references; "
                           "generate the distorted images with `dsmix synthesize --refs ref_imgs --csv "
                           f"{KADIS_CSV} --out DIR`", root)
    rows = _read_csv(csv_path, ("ref_im", "dist_type_1"))
    present = {p.stem: p for p in dist_dir.iterdir() if is_image_file(p)}
    confine = Confinement(root, allow=allow_outside_root, option="the --data folder")
    once = Unique(csv_path, "reference")
    pairs = []
    for i, row in enumerate(rows, start=2):
        stem = Path(row["ref_im"]).stem
        once.add(name_key(row["ref_im"]), i, repr(row["ref_im"]))
        types = [_int_field(row, "dist_type_1", csv_path, i)]
        if row.get("dist_type_2"):
            types.append(_int_field(row, "dist_type_2", csv_path, i))
        ref = ref_dir / row["ref_im"]
        confine.check(ref, csv_path, i, row["ref_im"])
        for t in types:
            _check_label(t, 1, csv_path, i)
            for level in range(1, NUM_LEVELS + 1):
                found = present.get(f"{stem}_{t:02d}_{level:02d}")
                if found is not None:
                    confine.check(found, csv_path, i, found.name)
                    pairs.append(Pair(dist=found, ref=ref, type=t, level=level))
    if not pairs:
        raise DatasetError(f"no distorted image in dist_imgs/ is named <ref-stem>_<tt>_<ll> after a row of "
                           f"{KADIS_CSV} ({len(present)} image files there)", dist_dir)
    return _check_missing(pairs, root, skip_missing)


def load_pairs(data_dir: Path, *, skip_missing: bool = False, allow_outside_root: bool = False) -> list[Pair]:
    """All (distorted, reference, type, level) pairs of a dataset folder.

    Args:
        data_dir: a `dsmix synthesize` output folder (or its `dist_imgs.csv`), a KADID-10k
            folder, or an official KADIS-700k folder (see the module docstring).
        skip_missing: drop pairs whose image files are absent instead of raising.
        allow_outside_root: accept entries that lie or resolve (symbolic links followed)
            outside `data_dir` (for a `dsmix synthesize` folder: outside it and the references
            folder it records); refused by default.

    Raises:
        DatasetError: an unknown layout, a malformed CSV, an image listed twice, a type outside
            1..25 or a level outside 1..5, an entry outside the folder (each naming the file and
            the line), missing files (with counts and a few examples) unless `skip_missing`, or
            no pair at all.
    """
    data_dir = Path(data_dir)
    allow = allow_outside_root
    if data_dir.is_file() and data_dir.suffix.lower() == ".csv":
        pairs = _load_synthesized(data_dir.parent, data_dir, skip_missing, allow)
    elif not data_dir.is_dir():
        raise DatasetError("dataset folder not found", data_dir)
    elif (data_dir / SYNTH_CSV).is_file():
        pairs = _load_synthesized(data_dir, data_dir / SYNTH_CSV, skip_missing, allow)
    elif (data_dir / KADID_CSV).is_file():
        pairs = _load_kadid(data_dir, skip_missing, allow)
    elif (data_dir / KADIS_CSV).is_file():
        pairs = _load_kadis(data_dir, skip_missing, allow)
    else:
        raise DatasetError(f"not a pairs folder: expected {SYNTH_CSV} (dsmix synthesize), {KADID_CSV} "
                           f"(KADID-10k) or {KADIS_CSV} with ref_imgs/ and dist_imgs/ (KADIS-700k)", data_dir)
    if not pairs:
        raise DatasetError("no usable distorted/reference pair", data_dir)
    return pairs


def split_by_reference(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out a random `val_fraction` of the *references* (with all their distorted images).

    At least one reference is held out when `val_fraction > 0` and there are two or more
    references, and at least one stays for training. Order within each part is kept.

    Returns:
        (train pairs, validation pairs).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DsmixError(f"--val-fraction {val_fraction}: expected a value in [0, 1)")
    refs = sorted({str(p.ref) for p in pairs})
    n = len(refs)
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    order = torch.randperm(n, generator=generator(seed, "split-references")).tolist()
    held = {refs[i] for i in order[:n_val]}
    return [p for p in pairs if str(p.ref) not in held], [p for p in pairs if str(p.ref) in held]


def _resize_to_cover(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a uint8 (3, H, W) image to `size` (rounded back to uint8)."""
    out = F.interpolate(img.unsqueeze(0).float(), size=size, mode="bilinear", align_corners=False)
    return out.squeeze(0).round_().clamp_(0, 255).to(torch.uint8)


def _randint(high: int, g: torch.Generator) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(0, high, (1,), generator=g).item())


class PairCropDataset(Dataset):
    """Distorted/reference crops with the same random position and flip for both images.

    Args:
        pairs: the pairs to serve.
        crop_size: the square crop side S (the network's image size).
        seed: the run seed; sample randomness is `generator(seed, "sample", epoch, index)`.
        flip: horizontal flip with probability 1/2 (applied to both images) in training mode.
        train: random crop (and flip) when True; centre crop and no flip when False.
        gt_maps: a `make-gt-dsm` maps folder: also return the stored map cropped at the same
            place, which needs crop offsets that are multiples of `pool` and images at least S.
        pool: the map pooling size (the ViT patch size).

    Items are `{"dist": uint8 (3,S,S), "ref": uint8 (3,S,S), "type": int, "level": int,
    "index": int}` plus `"gt": float32 (S/pool, S/pool)` with `gt_maps`. Images smaller than S
    are resized up (both the same way) so that their shorter side is S.
    """

    def __init__(self, pairs: list[Pair], crop_size: int, seed: int, flip: bool = True, train: bool = True,
                 gt_maps: Path | None = None, pool: int = 8):
        self.pairs = list(pairs)
        self.crop_size = int(crop_size)
        self.seed = int(seed)
        self.flip = flip
        self.train = train
        self.gt_maps = Path(gt_maps) if gt_maps is not None else None
        self.pool = int(pool)
        if self.gt_maps is not None and self.crop_size % self.pool:
            raise DsmixError(f"crop size {self.crop_size} is not a multiple of the map pool {self.pool}")

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
        dist, ref = load_rgb_tensor(pair.dist), load_rgb_tensor(pair.ref)
        if dist.shape != ref.shape:
            raise DatasetError(f"is {dist.shape[2]}x{dist.shape[1]} but its reference {pair.ref.name} is "
                               f"{ref.shape[2]}x{ref.shape[1]}", pair.dist)
        return dist, ref

    def _offsets(self, h: int, w: int, epoch: int, index: int) -> tuple[int, int, bool]:
        s, step = self.crop_size, (self.pool if self.gt_maps is not None else 1)
        if not self.train:
            return (h - s) // 2 // step * step, (w - s) // 2 // step * step, False
        g = generator(self.seed, "sample", epoch, index)
        top = _randint((h - s) // step + 1, g) * step
        left = _randint((w - s) // step + 1, g) * step
        flip = self.flip and bool(torch.rand((), generator=g).item() < 0.5)
        return top, left, flip

    def __getitem__(self, key) -> dict:
        epoch, index = split_keys(key)
        pair = self.pairs[index]
        dist, ref = self._load(pair)
        s = self.crop_size
        h, w = dist.shape[-2:]
        gt = None
        if self.gt_maps is not None:
            if min(h, w) < s:
                raise DatasetError(f"is {w}x{h}, smaller than the {s}-pixel crop; stored maps cannot be "
                                   f"resized with it: compute the ground truth on the fly (no --gt-maps)", pair.dist)
            gt = load_gt_map(self.gt_maps, pair)
            if tuple(gt.shape) != (h // self.pool, w // self.pool):
                raise DatasetError(f"map shape {tuple(gt.shape)} does not match the image {w}x{h} pooled by "
                                   f"{self.pool}; remake the maps with --pool {self.pool}", pair.dist)
        elif min(h, w) < s:
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
            dist, ref = _resize_to_cover(dist, size), _resize_to_cover(ref, size)
            h, w = size
        top, left, flip = self._offsets(h, w, epoch, index)
        dist = dist[:, top:top + s, left:left + s]
        ref = ref[:, top:top + s, left:left + s]
        if flip:
            dist, ref = dist.flip(-1), ref.flip(-1)
        item = {"dist": dist.contiguous(), "ref": ref.contiguous(), "type": pair.type, "level": pair.level,
                "index": index}
        if gt is not None:
            p = self.pool
            gt = gt[top // p:(top + s) // p, left // p:(left + s) // p]
            item["gt"] = (gt.flip(-1) if flip else gt).contiguous()
        return item
