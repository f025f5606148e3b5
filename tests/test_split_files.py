"""Split files: our export read back (same split, same numbers), pyiqa split columns, ARNIQA-style
index files, and files that do not fit the dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import fixtures_datasets as fx
from dsmix_cli.cli import app
from dsmix_cli.data import column_splits, load_dataset, make_splits
from dsmix_cli.data.split_files import read_splits, write_splits
from dsmix_cli.errors import DatasetError
from test_probe import make_toy_set

runner = CliRunner()
TINY = ["--image-size", "32", "--device", "cpu", "--train-views", "1", "--batch-size", "8", "--epochs", "3"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_MODEL", "DSMIX_ENCODER", "DSMIX_DSM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def _parts(splits):
    return [(s.index, s.train, s.val, s.test) for s in splits]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_written_splits_read_back_identical(tmp_path, suffix):
    csv = make_toy_set(tmp_path / "data", refs=6, levels=3)
    ds = load_dataset("csv", csv=csv)
    splits = make_splits(ds, 4, 0.6, 0.2, seed=3)
    write_splits(tmp_path / f"s{suffix}", ds, splits, {"seed": 3})
    back = read_splits(tmp_path / f"s{suffix}", ds)
    assert _parts(back.splits) == _parts(splits) and back.dropped == 0
    if suffix == ".json":
        record = json.loads((tmp_path / "s.json").read_text())
        assert record["format"] == "dsmix-splits" and record["unit"] == "reference" and record["seed"] == 3
        assert record["splits"][0]["test"] == [ds.items[i].name for i in splits[0].test]  # names, not indices


@pytest.mark.slow
def test_export_then_probe_from_the_file_gives_the_same_split_and_numbers(home, tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=6, levels=3)
    base = ["probe", "--encoder", "random:resnet18", "--dataset", "csv", "--csv", str(csv), "--splits", "3", *TINY]
    res = runner.invoke(app, [*base, "--out", "A", "--json", "A.json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "splits", "csv", "--csv", str(csv), "--splits", "3", "--out", "S.json"])
    assert res.exit_code == 0, res.output
    exported = json.loads((tmp_path / "S.json").read_text())["splits"]
    assert exported == json.loads((tmp_path / "A" / "splits.json").read_text())["splits"]  # what the probe used
    res = runner.invoke(app, [*base, "--out", "B", "--json", "B.json", "--splits-from", "S.json", "--no-feature-cache"])
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("A.json", "B.json"))
    assert [(s["n_train"], s["n_test"]) for s in a["splits"]] == [(s["n_train"], s["n_test"]) for s in b["splits"]]
    assert [s["srcc"] for s in a["splits"]] == [s["srcc"] for s in b["splits"]]
    assert [s["plcc"] for s in a["splits"]] == [s["plcc"] for s in b["splits"]]
    assert "S.json" in b["splits_source"]


def test_pyiqa_split_columns_and_official_split(tmp_path):
    exp = fx.make_pyiqa_nr(tmp_path)
    ds = load_dataset("pyiqa", csv=exp["csv"])
    cols = read_splits(exp["csv"], ds)
    assert [(s.train, s.test) for s in cols.splits] == [(c.train, c.test) for c in column_splits(ds)]
    assert "ratio802_seed123_split_01" in cols.source
    official = read_splits(exp["csv"], ds, column="official_split").splits
    assert len(official) == 1 and (official[0].train, official[0].val, official[0].test) == ([0, 1, 4], [2], [3])


def test_names_match_by_file_name_and_unknown_names_are_dropped(tmp_path):
    exp = fx.make_pyiqa_nr(tmp_path)
    ds = load_dataset("pyiqa", csv=exp["csv"])  # names are images/000.jpg ...
    f = tmp_path / "other.csv"
    f.write_text("img_name,split\n000.jpg,train\n001.jpg,train\n002.jpg,test\nnot-here.jpg,test\n")
    got = read_splits(f, ds)
    assert (got.splits[0].train, got.splits[0].test, got.dropped) == ([0, 1], [2], 1)


def test_arniqa_index_files(tmp_path):
    fx.make_kadid10k(tmp_path / "kadid", refs=3)  # 12 images, label-file order
    ds = load_dataset("kadid10k", tmp_path / "kadid")
    folder = tmp_path / "splits"
    folder.mkdir()
    np.save(folder / "train.npy", np.array([[0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 8, 9, 10, 11]]))
    np.save(folder / "val.npy", np.array([[8, 9, -1, -1], [0, 1, 2, 3]]))  # -1 pads, as ARNIQA's files
    np.save(folder / "test.npy", np.array([[10, 11], [-1, -1]]))
    with pytest.raises(DatasetError, match="split 2 leaves 8 training and 0 test"):
        read_splits(folder, ds)
    np.save(folder / "test.npy", np.array([[10, 11], [-1, 3]]))
    with pytest.raises(DatasetError, match="two parts"):
        read_splits(folder / "train.npy", ds)
    np.save(folder / "val.npy", np.array([[8, 9, -1, -1], [0, 1, 2, -1]]))
    got = read_splits(folder / "train.npy", ds).splits
    assert _parts(got) == [(0, list(range(8)), [8, 9], [10, 11]), (1, list(range(4, 12)), [0, 1, 2], [3])]
    np.save(folder / "test.npy", np.array([[10, 12]]))
    with pytest.raises(DatasetError):
        read_splits(folder, ds)


def test_index_files_need_the_complete_dataset(tmp_path):
    fx.make_clive(tmp_path, n_test=6, skip=(2,))
    ds = load_dataset("clive", tmp_path, skip_missing=True)
    folder = tmp_path / "idx"
    folder.mkdir()
    for part, rows in (("train", [[0, 1, 2]]), ("val", [[3]]), ("test", [[4]])):
        np.save(folder / f"{part}.npy", np.array(rows))
    with pytest.raises(DatasetError, match="missing"):
        read_splits(folder, ds)


def test_a_file_that_is_not_a_split_file_is_named(tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=3, levels=2, size=(16, 16))
    ds = load_dataset("csv", csv=csv)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(DatasetError, match="bad.json: not a dsmix-splits file"):
        read_splits(bad, ds)
    with pytest.raises(DatasetError, match="no split column"):
        read_splits(csv, ds)
    with pytest.raises(DatasetError, match="not found"):
        read_splits(tmp_path / "nothing.json", ds)
