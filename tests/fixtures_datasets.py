"""Tiny fake datasets in each native layout (exact file names and label formats, 8x8 images).

Each `make_<name>(root, ...)` writes a dataset under `root` and returns what a correct loader
must find: the expected items as (name, score, ref) in label-file order, and anything else the
tests check. The label files are written the way the official archives store them (`.mat`
through scipy, whitespace text, CSV), not through the code under test.
"""

from __future__ import annotations

import io
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

SHARED_CLIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "clive-subset" / "ChallengeDB_release"
SHARED_KADIS_CSV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kadis700k" / "kadis700k_ref_imgs.csv"


@lru_cache(maxsize=None)
def image_bytes(ext: str) -> bytes:
    """An 8x8 RGB image encoded in the format of `ext`."""
    fmt = {"png": "PNG", "bmp": "BMP", "jpg": "JPEG", "jpeg": "JPEG"}[ext.lower().lstrip(".")]
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(path.suffix))


def _cell(strings: list[str], shape: tuple[int, int]) -> np.ndarray:
    arr = np.empty(len(strings), dtype=object)
    arr[:] = strings
    return arr.reshape(shape)


# ---------------------------------------------------------------------------------------------


LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def make_live(root: Path, skip: int = 0) -> dict:
    """LIVE release 2: 982 entries, 203 of them references (orgs == 1), 29 reference names.

    `skip` distorted images are not written (a partial download).
    """
    refs = [f"scene{k:02d}.bmp" for k in range(29)]
    for r in refs:
        write_image(root / "refimgs" / r)
    n = sum(c for _, c in LIVE_FOLDERS)
    orgs = np.zeros(n)
    orgs[np.unique(np.linspace(0, n - 1, 203).astype(int))] = 1
    dmos = np.round(np.linspace(10.0, 90.0, n) + 3.0 * np.sin(np.arange(n)), 3)
    refnames = [refs[(i * 7) % 29] for i in range(n)]
    scipy.io.savemat(root / "dmos_realigned.mat", {"dmos_new": dmos.reshape(1, n), "orgs": orgs.reshape(1, n)})
    scipy.io.savemat(root / "refnames_all.mat", {"refnames_all": _cell(refnames, (1, n))})
    expected, i, skipped = [], 0, 0
    for folder, count in LIVE_FOLDERS:
        for k in range(1, count + 1):
            path = root / folder / f"img{k}.bmp"
            if orgs[i] == 0:
                expected.append((f"{folder}/img{k}.bmp", float(dmos[i]), refnames[i]))
            if orgs[i] == 0 and skipped < skip:
                skipped += 1
            else:
                write_image(path)
            i += 1
    return {"items": expected, "references": 29}


def make_csiq(root: Path, original_layout: bool = False) -> dict:
    """CSIQ: 3 references x 2 types x 2 levels, `csiq_label.txt` of `<name> <dmos>` lines."""
    refs = ["1600", "aerial_city", "boston"]
    expected, lines = [], []
    for r in refs:
        write_image(root / "src_imgs" / f"{r}.png")
    for j, (r, t, lvl) in enumerate((r, t, lvl) for r in refs for t in ("AWGN", "jpeg2000") for lvl in (1, 2)):
        name = f"{r}.{t}.{lvl}.png"
        score = round(0.05 + 0.07 * j, 3)
        folder = root / "dst_imgs" / t.lower() if original_layout else root / "dst_imgs_all"
        write_image(folder / name)
        lines.append(f"{name} {score}")
        expected.append((name, score, f"{r}.png"))
    (root / "csiq_label.txt").write_text("\n".join(lines) + "\n")
    return {"items": expected, "references": 3}


def make_tid2013(root: Path) -> dict:
    """TID2013: 3 references x 2 types x 2 levels; `mos_with_names.txt` of `<mos> <name>` lines.

    The files of reference 03 are stored upper-case (`I03_01_1.BMP`) while the label file says
    `i03_01_1.bmp`, as happens with copies made on case-insensitive file systems.
    """
    expected, lines = [], []
    for r in (1, 2, 3):
        write_image(root / "reference_images" / f"I{r:02d}.BMP")
        for t in (1, 2):
            for lvl in (1, 2):
                name = f"i{r:02d}_{t:02d}_{lvl}.bmp"
                score = round(1.0 + r + 0.5 * t - 0.25 * lvl, 4)
                write_image(root / "distorted_images" / (name.upper() if r == 3 else name))
                lines.append(f"{score} {name}")
                expected.append((name, score, f"{r:02d}"))
    (root / "mos_with_names.txt").write_text("\r\n".join(lines) + "\r\n")
    return {"items": expected, "references": 3}


def make_kadid10k(root: Path, flat: bool = False, refs: int = 3) -> dict:
    """KADID-10k: `dmos.csv` (dist_img,ref_img,dmos,var); images in reference_images/ +
    distorted_images/, or all in images/ (`flat`, as the official zip unpacks)."""
    rows, expected = ["dist_img,ref_img,dmos,var"], []
    for r in range(1, refs + 1):
        write_image(root / ("images" if flat else "reference_images") / f"I{r:02d}.png")
        for t in (1, 9):
            for lvl in (1, 5):
                name = f"I{r:02d}_{t:02d}_{lvl:02d}.png"
                score = round(1.0 + (r % 4) + 0.1 * t / lvl, 3)
                write_image(root / ("images" if flat else "distorted_images") / name)
                rows.append(f"{name},I{r:02d}.png,{score},0.5")
                expected.append((name, score, f"{r:02d}"))
    (root / "dmos.csv").write_text("\n".join(rows) + "\n")
    return {"items": expected, "references": refs}


def make_clive(root: Path, n_test: int = 12, skip: tuple[int, ...] = ()) -> dict:
    """CLIVE `ChallengeDB_release/`: the 7 training images first, then `n_test` test images
    (alternately `.bmp` and `.JPG`); test images with an index in `skip` are not written."""
    base = root / "ChallengeDB_release"
    names = [f"t{k}.bmp" for k in range(1, 8)] + [f"{100 + k}.{'bmp' if k % 2 else 'JPG'}" for k in range(n_test)]
    mos = np.round(np.linspace(5.0, 95.0, len(names))[::-1], 4)
    (base / "Data").mkdir(parents=True)
    scipy.io.savemat(base / "Data" / "AllImages_release.mat", {"AllImages_release": _cell(names, (len(names), 1))})
    scipy.io.savemat(base / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos.reshape(1, -1)})
    for k in range(1, 8):
        write_image(base / "Images" / "trainingImages" / f"t{k}.bmp")
    expected = []
    for k, (name, score) in enumerate(zip(names[7:], mos[7:])):
        if k not in skip:
            write_image(base / "Images" / name)
        expected.append((name, float(score), None))
    return {"items": expected, "base": base}


def make_complete_clive(root: Path) -> Path | None:
    """A complete CLIVE release from the real label files (copied) and tiny images for all
    1,162 test names. Returns the `ChallengeDB_release` folder, or None without the real data."""
    if not (SHARED_CLIVE / "Data" / "AllImages_release.mat").is_file():
        return None
    base = root / "ChallengeDB_release"
    (base / "Images").mkdir(parents=True)
    shutil.copytree(SHARED_CLIVE / "Data", base / "Data")
    names = scipy.io.loadmat(base / "Data" / "AllImages_release.mat")["AllImages_release"]
    for cell in names.ravel():
        name = str(cell.ravel()[0])
        write_image(base / "Images" / ("trainingImages/" + name if name.startswith("t") else name))
    return base


def make_koniq10k(root: Path, half: bool = True, with_sets: bool = True) -> dict:
    """KonIQ-10k: `koniq10k_scores_and_distributions.csv` (quoted header, as released), images
    in `512x384/` (`half`) and/or `1024x768/`, and `koniq10k_distributions_sets.csv` with the
    official `set` column."""
    sets = ["training", "training", "training", "validation", "test", "test"]
    header = '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"'
    rows, set_rows, expected = [header], ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore,set"], []
    for k, s in enumerate(sets):
        name = f"{10004473376 + 7 * k}.jpg"
        z = round(30.0 + 9.5 * k, 4)
        mos = round(1.0 + z / 25.0, 4)
        rows.append(f'"{name}",0,1,2,3,4,10,{mos},0.5,{z}')
        set_rows.append(f"{name},0,1,2,3,4,10,{mos},0.5,{z},{s}")
        expected.append((name, z, None))
        write_image(root / "1024x768" / name)
        if half:
            write_image(root / "512x384" / name)
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(rows) + "\n")
    if with_sets:
        (root / "koniq10k_distributions_sets.csv").write_text("\n".join(set_rows) + "\n")
    tags = {"training": "train", "validation": "val", "test": "test"}
    return {"items": expected, "splits": [tags[s] for s in sets]}


def make_flive(root: Path, tres: bool = True) -> dict:
    """FLIVE: `labels_image.csv` (name = subset/file.jpg, mos, ...); images flattened into
    `FLIVE/` (the TReS layout) or kept under `database/<subset>/` as released."""
    rows, expected = ["name,mos,height,width"], []
    for k, subset in enumerate(["AVA", "EE371R", "voc_emotic_ava", "blur_dataset"]):
        name = f"{subset}/img_{k}.jpg"
        score = round(55.0 + 4.0 * k, 2)
        write_image(root / "FLIVE" / f"img_{k}.jpg" if tres else root / "database" / name)
        rows.append(f"{name},{score},8,8")
        expected.append((name, score, None))
    (root / "labels_image.csv").write_text("\n".join(rows) + "\n")
    return {"items": expected}


def make_kadis700k(root: Path) -> dict:
    """KADIS-700k: `kadis700k_ref_imgs.csv` with a 7,8 row (written as type 8, the project's
    decision), a row written by the official generator as type 7 only, and a `.png` row."""
    rows = ["ref_im,dist_type_1,dist_type_2",
            "abbey-1616576.png,14,",
            "121-cc-774921.png,7,8",
            "19-199047.png,7,8",
            "zebra-123.png,3,"]
    written = {"abbey-1616576": ("14", "bmp"), "121-cc-774921": ("08", "bmp"),
               "19-199047": ("07", "bmp"), "zebra-123": ("03", "png")}
    expected = []
    for stem, (tt, ext) in written.items():
        write_image(root / "ref_imgs" / f"{stem}.png")
        for lvl in range(1, 6):
            name = f"{stem}_{tt}_{lvl:02d}.{ext}"
            write_image(root / "dist_imgs" / name)
            expected.append((name, stem))
    (root / "kadis700k_ref_imgs.csv").write_text("\n".join(rows) + "\n")
    return {"items": expected, "references": 4}


def make_pyiqa_nr(root: Path, file: str = "meta_info_KonIQ10kDataset.csv") -> dict:
    """A pyiqa NR meta-info CSV with `official_split` and two `ratio802_seed123_split_NN`."""
    rows = ["img_name,mos,std,official_split,ratio802_seed123_split_01,ratio802_seed123_split_02"]
    expected, official, cols = [], [], []
    tags = ["train", "train", "val", "test", "train"]
    for k in range(5):
        name = f"images/{k:03d}.jpg"
        write_image(root / name)
        s1, s2 = ("train" if k < 4 else "test"), ("test" if k == 0 else "train")
        rows.append(f"{name},{50 + k},1.0,{tags[k]},{s1},{s2}")
        expected.append((name, 50.0 + k, None))
        official.append(tags[k])
        cols.append((s1, s2))
    csv = root / file
    csv.write_text("\n".join(rows) + "\n")
    return {"items": expected, "csv": csv, "official": official, "columns": cols}


def make_pyiqa_fr(root: Path, file: str = "meta_info_CSIQDataset.csv") -> dict:
    """A pyiqa FR meta-info CSV: ref_name, dist_name, dmos."""
    rows, expected = ["ref_name,dist_name,dmos"], []
    for r in ("1600", "boston"):
        write_image(root / "src_imgs" / f"{r}.png")
        for lvl in (1, 2, 3):
            dist = f"dst_imgs/{r}.BLUR.{lvl}.png"
            write_image(root / dist)
            score = round(0.1 * lvl + (0.05 if r == "boston" else 0.0), 3)
            rows.append(f"src_imgs/{r}.png,{dist},{score}")
            expected.append((dist, score, f"src_imgs/{r}.png"))
    csv = root / file
    csv.write_text("\n".join(rows) + "\n")
    return {"items": expected, "csv": csv, "references": 2}


def make_generic_csv(root: Path, with_ref: bool = False) -> dict:
    """A generic CSV `name,score[,ref],split` with images beside it."""
    header = "name,score" + (",ref" if with_ref else "") + ",split"
    rows, expected = [header], []
    for k in range(6):
        name = f"pics/p{k}.png"
        write_image(root / name)
        ref = f"r{k // 2}"
        split = "train" if k < 4 else "test"
        rows.append(f"{name},{k * 1.5}" + (f",{ref}" if with_ref else "") + f",{split}")
        expected.append((name, k * 1.5, ref if with_ref else None))
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return {"items": expected, "csv": csv}
