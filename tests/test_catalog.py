"""The dataset catalog: every native layout, the CSV forms, missing and unreadable files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import fixtures_datasets as fx
from dsmix_cli.data import DATASETS, canonical_name, check_images, describe, load_dataset, resolve_root
from dsmix_cli.errors import DatasetError


def _triples(ds):
    return [(it.name, it.score, it.ref) for it in ds.items]


def _assert_items(ds, expected):
    assert [(n, r) for n, _, r in _triples(ds)] == [(n, r) for n, _, r in expected]
    np.testing.assert_allclose(ds.scores(), [s for _, s, _ in expected])
    for it in ds.items:
        assert it.path.is_absolute() and it.path.is_file()
    assert ds.missing == [] and ds.unreadable == []


# --- native layouts ---------------------------------------------------------------------------


def test_live_release2(tmp_path):
    exp = fx.make_live(tmp_path)
    ds = load_dataset("live", tmp_path)
    assert len(ds) == 779 == len(exp["items"])  # 982 entries minus the 203 references
    _assert_items(ds, exp["items"])
    assert ds.items[0].path == tmp_path / exp["items"][0][0]
    assert ds.lower_better and ds.synthetic and ds.references == 29
    assert ds.items[0].ref_path == tmp_path / "refimgs" / ds.items[0].ref
    assert ds.label_file == tmp_path / "dmos_realigned.mat"


def test_live_partial_download_is_refused_then_skipped(tmp_path):
    fx.make_live(tmp_path, skip=5)
    with pytest.raises(DatasetError) as err:
        load_dataset("live", tmp_path)
    msg = str(err.value)
    assert "5 of 779 images are missing" in msg and "jp2k/img" in msg and "--skip-missing" in msg
    ds = load_dataset("live", tmp_path, skip_missing=True)
    assert len(ds) == 774 and len(ds.missing) == 5 and ds.total == 779
    assert all(not p.exists() for p in ds.missing)
    seen = []
    checked = load_dataset("live", tmp_path, skip_missing=True, check_readable=True, workers=2,
                           on_progress=lambda d, t: seen.append((d, t)))
    assert checked.unreadable == [] and checked.items == ds.items
    assert seen == [(k, 774) for k in range(1, 775)]  # across several chunks of 128


def test_live_wrong_entry_count_names_the_file(tmp_path):
    scipy.io.savemat(tmp_path / "dmos_realigned.mat", {"dmos_new": np.zeros((1, 10)), "orgs": np.zeros((1, 10))})
    scipy.io.savemat(tmp_path / "refnames_all.mat", {"refnames_all": np.array([["a.bmp"]] * 10, dtype=object)})
    with pytest.raises(DatasetError, match=r"dmos_realigned\.mat.*10 entries, expected 982"):
        load_dataset("live", tmp_path)


@pytest.mark.parametrize("original", [False, True])
def test_csiq(tmp_path, original):
    exp = fx.make_csiq(tmp_path, original_layout=original)
    ds = load_dataset("csiq", tmp_path)
    _assert_items(ds, exp["items"])
    assert ds.lower_better and ds.references == 3 and ds.score_range == (0.0, 1.0)


def test_tid2013_case_insensitive_names(tmp_path):
    exp = fx.make_tid2013(tmp_path)
    ds = load_dataset("tid", tmp_path)
    assert ds.name == "tid2013"
    _assert_items(ds, exp["items"])
    assert ds.items[-1].path.name == "I03_02_2.BMP"  # found despite the label file's case
    assert not ds.lower_better and ds.references == 3


@pytest.mark.parametrize("flat", [False, True])
def test_kadid10k(tmp_path, flat):
    exp = fx.make_kadid10k(tmp_path, flat=flat)
    ds = load_dataset("kadid", tmp_path)
    _assert_items(ds, exp["items"])
    assert ds.references == 3 and ds.items[0].ref == "01"


def test_kadid_keeps_all_81_references(tmp_path):
    fx.make_kadid10k(tmp_path, refs=81)
    assert load_dataset("kadid10k", tmp_path).references == 81


@pytest.mark.parametrize("point_at", ["release", "parent"])
def test_clive_root_is_release_or_parent(tmp_path, point_at):
    exp = fx.make_clive(tmp_path)
    root = exp["base"] if point_at == "release" else tmp_path
    ds = load_dataset("livec", root)
    _assert_items(ds, exp["items"])  # the 7 training images are left out
    assert ds.root == exp["base"] and ds.references is None and not ds.synthetic


def test_koniq_half_size_and_official_split(tmp_path):
    exp = fx.make_koniq10k(tmp_path)
    ds = load_dataset("koniq", tmp_path)
    _assert_items(ds, exp["items"])
    assert all(it.path.parent.name == "512x384" for it in ds.items)
    assert [it.split for it in ds.items] == exp["splits"]


def test_koniq_full_size_without_sets(tmp_path):
    exp = fx.make_koniq10k(tmp_path, half=False, with_sets=False)
    ds = load_dataset("koniq10k", tmp_path)
    _assert_items(ds, exp["items"])
    assert all(it.path.parent.name == "1024x768" and it.split is None for it in ds.items)


def test_koniq_from_the_sets_file_alone(tmp_path):
    exp = fx.make_koniq10k(tmp_path)
    (tmp_path / "koniq10k_scores_and_distributions.csv").unlink()
    ds = load_dataset("koniq10k", tmp_path)
    assert ds.label_file.name == "koniq10k_distributions_sets.csv"
    _assert_items(ds, exp["items"])
    assert [it.split for it in ds.items] == exp["splits"]


@pytest.mark.parametrize("tres", [True, False])
def test_flive(tmp_path, tres):
    exp = fx.make_flive(tmp_path, tres=tres)
    ds = load_dataset("flive", tmp_path)
    _assert_items(ds, exp["items"])


def test_kadis700k_items_are_distorted_images(tmp_path):
    exp = fx.make_kadis700k(tmp_path)
    ds = load_dataset("kadis", tmp_path)
    assert [(it.path.name, it.ref) for it in ds.items] == exp["items"]
    assert np.isnan(ds.scores()).all() and ds.references == 4 and ds.synthetic
    assert ds.items[0].ref_path == tmp_path / "ref_imgs" / "abbey-1616576.png"
    assert describe(ds)["score_min"] is None


def test_kadis_real_label_file(tmp_path):
    """The real kadis700k_ref_imgs.csv format (header, empty dist_type_2, "7,8" rows); its first
    2,000 rows, to keep the test fast."""
    if not fx.SHARED_KADIS_CSV.is_file():
        pytest.skip("../shared/data/kadis700k is absent")
    lines = fx.SHARED_KADIS_CSV.read_text().splitlines()[:2001]
    csv = tmp_path / "labels" / "kadis700k_ref_imgs.csv"
    csv.parent.mkdir()
    csv.write_text("\n".join(lines) + "\n")
    first = lines[1].split(",")
    pair = next(line.split(",") for line in lines[1:] if line.endswith(",7,8"))
    for stem, tt in ((first[0][:-4], f"{int(first[1]):02d}"), (pair[0][:-4], "08")):
        for lvl in range(1, 6):
            fx.write_image(tmp_path / "dist_imgs" / f"{stem}_{tt}_{lvl:02d}.bmp")
    with pytest.raises(DatasetError, match="9990 of 10000 images are missing"):
        load_dataset("kadis700k", tmp_path, csv=csv)
    ds = load_dataset("kadis700k", tmp_path, csv=csv, skip_missing=True)
    assert len(ds) == 10 and ds.references == 2 and ds.total == 10000
    assert ds.items[-1].path.name == f"{pair[0][:-4]}_08_05.bmp"
    assert ds.label_file == csv


# --- CSV forms --------------------------------------------------------------------------------


def test_pyiqa_nr_with_split_columns(tmp_path):
    exp = fx.make_pyiqa_nr(tmp_path)
    ds = load_dataset("pyiqa", csv=exp["csv"])
    _assert_items(ds, exp["items"])
    assert ds.root == tmp_path and not ds.synthetic and not ds.lower_better
    assert [it.split for it in ds.items] == exp["official"]
    assert ds.split_columns == {"ratio802_seed123_split_01": [c[0] for c in exp["columns"]],
                                "ratio802_seed123_split_02": [c[1] for c in exp["columns"]]}
    assert ds.score_range == (50.0, 54.0)


def test_pyiqa_fr_is_synthetic_and_knows_csiq_is_dmos(tmp_path):
    exp = fx.make_pyiqa_fr(tmp_path)
    ds = load_dataset("pyiqa", tmp_path, csv=exp["csv"])
    _assert_items(ds, exp["items"])
    assert ds.synthetic and ds.references == 2 and ds.lower_better


def test_pyiqa_livec_drops_the_training_images(tmp_path):
    rows = ["img_name,mos,std"] + [f"trainingImages/t{k}.bmp,50,1" for k in range(1, 8)]
    rows += [f"{k}.JPG,{k},1" for k in (100, 101)]
    for k in (100, 101):
        fx.write_image(tmp_path / f"{k}.JPG")
    csv = tmp_path / "meta_info_LIVEChallengeDataset.csv"
    csv.write_text("\n".join(rows) + "\n")
    ds = load_dataset("pyiqa", csv=csv)
    assert [it.name for it in ds.items] == ["100.JPG", "101.JPG"] and ds.total == 2


@pytest.mark.parametrize("with_ref", [False, True])
def test_generic_csv(tmp_path, with_ref):
    exp = fx.make_generic_csv(tmp_path, with_ref=with_ref)
    ds = load_dataset("csv", csv=exp["csv"], lower_better=True)
    _assert_items(ds, exp["items"])
    assert ds.synthetic == with_ref and ds.lower_better
    assert ds.references == (3 if with_ref else None)
    assert [it.split for it in ds.items] == ["train"] * 4 + ["test"] * 2


def test_csv_layouts_need_a_csv(tmp_path):
    with pytest.raises(DatasetError, match="needs --csv"):
        load_dataset("csv", tmp_path)


# --- names, roots, label-file errors ----------------------------------------------------------


def test_names_and_aliases():
    assert set(DATASETS) == {"live", "csiq", "tid2013", "kadid10k", "clive", "koniq10k", "flive",
                             "kadis700k", "pyiqa", "csv"}
    for alias, name in (("kadid", "kadid10k"), ("koniq", "koniq10k"), ("livec", "clive"),
                        ("tid", "tid2013"), ("KADIS", "kadis700k"), ("LIVE", "live")):
        assert canonical_name(alias) == name
    with pytest.raises(DatasetError, match="unknown dataset 'spaq'.*koniq10k"):
        canonical_name("spaq")
    epochs = {n: DATASETS[n].epochs for n in ("live", "csiq", "clive", "tid2013", "kadid10k", "koniq10k", "flive")}
    assert epochs == {"live": 100, "csiq": 100, "clive": 100, "tid2013": 200, "kadid10k": 200,
                      "koniq10k": 200, "flive": 200}
    assert DATASETS["live"].lower_better and DATASETS["csiq"].lower_better
    assert not any(DATASETS[n].lower_better for n in ("tid2013", "kadid10k", "clive", "koniq10k", "flive"))


def test_resolve_root_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DSMIX_DATA", raising=False)
    assert resolve_root("koniq", None) == tmp_path / "datasets" / "koniq10k"
    monkeypatch.setenv("DSMIX_DATA", str(tmp_path / "data"))
    assert resolve_root("kadid", None) == tmp_path / "data" / "kadid10k"
    assert resolve_root("kadid", Path("elsewhere/../mine")) == tmp_path / "mine"


def test_default_root_from_environment(tmp_path, monkeypatch):
    exp = fx.make_csiq(tmp_path / "csiq")
    monkeypatch.setenv("DSMIX_DATA", str(tmp_path))
    assert len(load_dataset("csiq")) == len(exp["items"])


def test_missing_folder_and_label_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder for csiq not found"):
        load_dataset("csiq", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"csiq_label\.txt: label file not found"):
        load_dataset("csiq", tmp_path)
    with pytest.raises(DatasetError, match=r"AllImages_release\.mat: label file not found"):
        load_dataset("clive", tmp_path)


def test_malformed_label_files_name_file_and_line(tmp_path):
    fx.make_csiq(tmp_path)
    (tmp_path / "csiq_label.txt").write_text("1600.AWGN.1.png 0.1\n1600.AWGN.2.png high\n")
    with pytest.raises(DatasetError, match=r"csiq_label\.txt: line 2: DMOS 'high' is not a number"):
        load_dataset("csiq", tmp_path)
    fx.make_kadid10k(tmp_path / "k")
    (tmp_path / "k" / "dmos.csv").write_text("image,ref,score\nI01_01_01.png,I01.png,3\n")
    with pytest.raises(DatasetError, match=r"dmos\.csv: no column 'dist_img'"):
        load_dataset("kadid10k", tmp_path / "k")


def test_bad_mat_files(tmp_path):
    exp = fx.make_clive(tmp_path)
    data = exp["base"] / "Data"
    scipy.io.savemat(data / "AllMOS_release.mat", {"MOS": np.zeros((1, 19))})
    with pytest.raises(DatasetError, match=r"AllMOS_release\.mat: has no variable 'AllMOS_release' \(found: MOS\)"):
        load_dataset("clive", tmp_path)
    (data / "AllMOS_release.mat").write_text("not a mat file")
    with pytest.raises(DatasetError, match=r"AllMOS_release\.mat: not a MATLAB \.mat file"):
        load_dataset("clive", tmp_path)


# --- decoding ---------------------------------------------------------------------------------


def test_check_readable_sets_aside_broken_images(tmp_path):
    exp = fx.make_csiq(tmp_path)
    broken = tmp_path / "dst_imgs_all" / exp["items"][1][0]
    broken.write_bytes(fx.image_bytes("png")[:40])
    empty = tmp_path / "dst_imgs_all" / exp["items"][4][0]
    empty.write_bytes(b"")
    calls = []
    ds = load_dataset("csiq", tmp_path, check_readable=True, on_progress=lambda d, t: calls.append((d, t)))
    n = len(exp["items"])
    assert ds.unreadable == [broken, empty] and len(ds) == n - 2
    assert "empty file" in ds.unreadable_reasons[1] and str(empty) not in ds.unreadable_reasons[1]
    assert calls[-1] == (n, n) and len(calls) == n
    report = describe(ds, decoded=True)
    assert report["unreadable"] == 2 and report["images"] == n - 2
    assert check_images(ds, workers=1).unreadable == ds.unreadable  # nothing new in a second pass


# --- the real partial CLIVE, and a complete one built from its label files --------------------


def _need_real_clive():
    if not (fx.SHARED_CLIVE / "Data" / "AllMOS_release.mat").is_file():
        pytest.skip("../shared/data/clive-subset is absent")


def test_real_partial_clive():
    _need_real_clive()
    with pytest.raises(DatasetError, match=r"535 of 1162 images are missing \(e\.g\. Images/100\.bmp"):
        load_dataset("clive", fx.SHARED_CLIVE)
    ds = load_dataset("clive", fx.SHARED_CLIVE.parent, skip_missing=True)
    assert len(ds) == 627 and len(ds.missing) == 535 and ds.total == 1162
    assert all(it.path.suffix == ".JPG" for it in ds.items)
    assert all(p.suffix == ".bmp" for p in ds.missing)
    s = ds.scores()
    assert 3.42 <= s.min() and s.max() <= 92.44


def test_complete_clive_release(tmp_path):
    _need_real_clive()
    base = fx.make_complete_clive(tmp_path)
    ds = load_dataset("clive", base)
    assert len(ds) == 1162 and ds.missing == []
    assert math.isclose(ds.scores().min(), 3.42) and round(ds.scores().max(), 2) == 92.43
    names = {it.name for it in ds.items}
    assert not any(n.startswith("t") for n in names)
