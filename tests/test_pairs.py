"""Distorted/reference pairs: the three layouts, reference-level splits, and the shared crop."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsm_fixtures import write_synth_folder
from dsmix_cli.data.pairs import Pair, PairCropDataset, load_pairs, split_by_reference
from dsmix_cli.dsm.gt import dsm_map_path, gt_dsm
from dsmix_cli.errors import DatasetError
from dsmix_cli.fileio import save_npy

SHARED_KADIS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kadis700k" / "kadis700k_ref_imgs.csv"


def _png(path: Path, h: int = 16, w: int = 16, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def test_synthesized_folder(tmp_path):
    data = write_synth_folder(tmp_path / "D", n_refs=2, kinds=(1, 3), levels=(1, 2))
    pairs = load_pairs(data)
    assert len(pairs) == 8
    assert pairs[0] == Pair(data / "dist_imgs/ref00_01_01.png", data / "ref_imgs/ref00.png", 1, 1)
    assert {(p.type, p.level) for p in pairs} == {(1, 1), (1, 2), (3, 1), (3, 2)}
    assert load_pairs(data / "dist_imgs.csv") == pairs  # the manifest itself is accepted too

    (data / "dist_imgs/ref01_03_02.png").unlink()
    (data / "ref_imgs/ref00.png").unlink()
    with pytest.raises(DatasetError) as err:
        load_pairs(data)
    msg = str(err.value)
    assert "5 of 8 pairs miss a file" in msg and "2 files missing" in msg and "ref00.png" in msg
    kept = load_pairs(data, skip_missing=True)
    assert [p.dist.name for p in kept] == ["ref01_01_01.png", "ref01_01_02.png", "ref01_03_01.png"]


def test_malformed_manifest(tmp_path):
    (tmp_path / "dist_imgs.csv").write_text("dist,ref\na.png,b.png\n")
    with pytest.raises(DatasetError, match="missing column"):
        load_pairs(tmp_path)
    (tmp_path / "dist_imgs.csv").write_text("dist_img,ref_img,type,level\na.png,b.png,x,1\n")
    with pytest.raises(DatasetError, match="line 2: type"):
        load_pairs(tmp_path)
    with pytest.raises(DatasetError, match="not a pairs folder"):
        load_pairs(tmp_path / "..")


def test_official_kadis_layout(tmp_path):
    root = tmp_path / "kadis"
    (root / "kadis700k_ref_imgs.csv").parent.mkdir(parents=True)
    (root / "kadis700k_ref_imgs.csv").write_text("ref_im,dist_type_1,dist_type_2\na-1.png,7,8\nb-2.png,3,\n")
    _png(root / "ref_imgs/a-1.png")
    _png(root / "ref_imgs/b-2.png")
    for name in ("a-1_08_01.bmp", "a-1_07_05.bmp", "b-2_03_02.bmp", "b-2_04_01.bmp", "other_03_01.bmp"):
        _png(root / "dist_imgs" / name)
    pairs = load_pairs(root)
    # present files predicted by the CSV (either type column); b-2_04 and other_* are not
    assert sorted((p.dist.name, p.ref.name, p.type, p.level) for p in pairs) == [
        ("a-1_07_05.bmp", "a-1.png", 7, 5), ("a-1_08_01.bmp", "a-1.png", 8, 1), ("b-2_03_02.bmp", "b-2.png", 3, 2)]

    (root / "ref_imgs/b-2.png").unlink()
    with pytest.raises(DatasetError, match="1 of 3 pairs miss a file"):
        load_pairs(root)
    shutil.rmtree(root / "dist_imgs")
    with pytest.raises(DatasetError, match="dsmix synthesize"):
        load_pairs(root)


def test_official_kadis_csv_from_shared_data(tmp_path):
    if not SHARED_KADIS.is_file():
        pytest.skip("../shared/data/kadis700k is not present")
    root = tmp_path / "kadis"
    root.mkdir()
    shutil.copy(SHARED_KADIS, root / "kadis700k_ref_imgs.csv")
    with SHARED_KADIS.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 140000
    first = rows[0]
    dual = next(r for r in rows if r["dist_type_2"])  # a "7,8" row
    for row, t in ((first, int(first["dist_type_1"])), (dual, 8)):
        _png(root / "ref_imgs" / row["ref_im"])
        for level in (1, 2, 3, 4, 5):
            _png(root / "dist_imgs" / f"{Path(row['ref_im']).stem}_{t:02d}_{level:02d}.bmp")
    pairs = load_pairs(root)
    assert len(pairs) == 10
    assert {p.type for p in pairs if p.ref.name == dual["ref_im"]} == {8}


@pytest.mark.parametrize("layout", ["images", "split"])
def test_kadid_layout(tmp_path, layout):
    root = tmp_path / "kadid"
    dist_dir = root / ("images" if layout == "images" else "distorted_images")
    ref_dir = root / ("images" if layout == "images" else "reference_images")
    _png(ref_dir / "I01.png")
    _png(ref_dir / "I02.png")
    _png(dist_dir / "I01_01_01.png")
    _png(dist_dir / "I02_25_05.png")
    (root / "dmos.csv").write_text("dist_img,ref_img,dmos,var\nI01_01_01.png,I01.png,4.57,0.5\n"
                                   "I02_25_05.png,I02.png,1.2,0.3\n")
    pairs = load_pairs(root)
    assert [(p.dist, p.ref, p.type, p.level) for p in pairs] == [
        (dist_dir / "I01_01_01.png", ref_dir / "I01.png", 1, 1), (dist_dir / "I02_25_05.png", ref_dir / "I02.png", 25, 5)]


def test_split_by_reference():
    pairs = [Pair(Path(f"d{r}_{k}"), Path(f"r{r}"), 1, 1) for r in range(20) for k in range(3)]
    train, val = split_by_reference(pairs, 0.2, seed=1)
    train_refs, val_refs = {p.ref for p in train}, {p.ref for p in val}
    assert len(val_refs) == 4 and not train_refs & val_refs and len(train) + len(val) == 60
    assert split_by_reference(pairs, 0.2, seed=1) == (train, val)
    assert {p.ref for p in split_by_reference(pairs, 0.2, seed=2)[1]} != val_refs
    # tiny fractions still hold out one reference, but never all of them
    assert len({p.ref for p in split_by_reference(pairs, 0.001, 0)[1]}) == 1
    two = pairs[:6]
    assert len({p.ref for p in split_by_reference(two, 0.9, 0)[0]}) == 1
    assert split_by_reference(pairs, 0.0, 0) == (pairs, [])


def _coordinate_pair(root: Path, h: int, w: int) -> Pair:
    """Reference: R = column, G = row; distorted: the same plus B = 200. Crops reveal their offset."""
    yy, xx = np.mgrid[0:h, 0:w]
    ref = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    dist = ref.copy()
    dist[..., 2] = 200
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ref).save(root / "ref.png")
    Image.fromarray(dist).save(root / "dist_01_01.png")
    return Pair(root / "dist_01_01.png", root / "ref.png", 1, 1)


def test_crops_are_shared_valid_and_reproducible(tmp_path):
    pair = _coordinate_pair(tmp_path, 40, 60)
    ds = PairCropDataset([pair], crop_size=16, seed=5)
    seen = set()
    for epoch in range(12):
        item = ds[(epoch, 0)]
        d, r = item["dist"], item["ref"]
        assert d.shape == r.shape == (3, 16, 16) and d.dtype == torch.uint8
        assert torch.equal(d[:2], r[:2]) and (d[2] == 200).all() and (r[2] == 0).all()
        cols, rows = r[0].long(), r[1].long()
        flipped = bool(cols[0, 0] > cols[0, -1])
        left, top = int(cols.min()), int(rows.min())
        expect_cols = torch.arange(left, left + 16).expand(16, 16)
        assert torch.equal(cols, expect_cols.flip(-1) if flipped else expect_cols)
        assert torch.equal(rows, torch.arange(top, top + 16)[:, None].expand(16, 16))
        assert 0 <= top <= 24 and 0 <= left <= 44
        seen.add((top, left, flipped))
        assert torch.equal(ds[(epoch, 0)]["ref"], r)  # the same key, the same crop
    assert len(seen) > 6 and {f for _, _, f in seen} == {True, False}

    centre = PairCropDataset([pair], crop_size=16, seed=5, train=False)[(3, 0)]["ref"]
    assert int(centre[0].min()) == 22 and int(centre[1].min()) == 12 and centre[0, 0, 0] < centre[0, 0, -1]


def test_small_images_are_resized_up_together(tmp_path):
    pair = _coordinate_pair(tmp_path, 12, 20)
    item = PairCropDataset([pair], crop_size=16, seed=0)[0]
    assert item["dist"].shape == item["ref"].shape == (3, 16, 16)
    assert torch.equal(item["dist"][:2], item["ref"][:2])


def test_stored_maps_are_cropped_with_the_images(tmp_path):
    data = write_synth_folder(tmp_path / "D", n_refs=1, kinds=(1, 4), levels=(3,))
    pairs = load_pairs(data)
    maps = tmp_path / "maps"
    for p in pairs:
        d, r = (torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1)
                for f in (p.dist, p.ref))
        save_npy(dsm_map_path(maps, p.dist), gt_dsm(d, r).numpy().astype(np.float16))
    ds = PairCropDataset(pairs, crop_size=32, seed=2, gt_maps=maps, pool=8)
    for epoch in range(4):
        for i in range(len(pairs)):
            item = ds[(epoch, i)]
            assert item["gt"].shape == (4, 4)
            # pool-aligned crops: the stored map's crop is the GT of the image crop
            assert torch.allclose(item["gt"], gt_dsm(item["dist"], item["ref"]), atol=2e-3)
