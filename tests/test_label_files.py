"""Label-file checks of every reader: a name listed twice, entries outside the dataset folder
(`..`, absolute paths, symbolic links), pairs with a type outside 1..25 or a level outside 1..5,
and pyiqa's FLIVE meta file with patch rows. Each refusal names the file and the line, and comes
before any work."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

import fixtures_datasets as fx
from dsm_fixtures import write_synth_folder
from dsmix_cli.cli import app
from dsmix_cli.data import load_dataset, make_splits
from dsmix_cli.data.pairs import load_pairs
from dsmix_cli.errors import DatasetError

runner = CliRunner()


def _append(path: Path, line: str, sep: str = "\n") -> int:
    """Append a line to a text label file; returns its (1-based) line number."""
    text = path.read_text()
    path.write_text(text + line + sep)
    return len(text.splitlines()) + 1


# --- a name listed twice ----------------------------------------------------------------------


def _dup_csiq(root):
    fx.make_csiq(root)
    return "csiq", {}, root / "csiq_label.txt", _append(root / "csiq_label.txt", "1600.AWGN.1.png 0.9"), 1


def _dup_tid(root):  # another spelling of the same file: found case-insensitively
    fx.make_tid2013(root)
    return "tid2013", {}, root / "mos_with_names.txt", _append(root / "mos_with_names.txt", "3.0 I01_01_1.BMP",
                                                                "\r\n"), 1


def _dup_kadid(root):
    fx.make_kadid10k(root)
    return "kadid10k", {}, root / "dmos.csv", _append(root / "dmos.csv", "I01_01_01.png,I01.png,4.5,0.1"), 2


def _dup_koniq(root):
    fx.make_koniq10k(root)
    file = root / "koniq10k_scores_and_distributions.csv"
    return "koniq10k", {}, file, _append(file, '"10004473383.jpg",0,1,2,3,4,10,2.0,0.5,40.0'), 3


def _dup_flive(root):
    fx.make_flive(root)
    return "flive", {}, root / "labels_image.csv", _append(root / "labels_image.csv", "AVA/img_0.jpg,20,8,8"), 2


def _dup_kadis(root):  # a reference listed twice
    fx.make_kadis700k(root)
    file = root / "kadis700k_ref_imgs.csv"
    return "kadis700k", {}, file, _append(file, "abbey-1616576.png,3,"), 2


def _dup_pyiqa(root):
    exp = fx.make_pyiqa_nr(root)
    return "pyiqa", {"csv": exp["csv"]}, exp["csv"], _append(exp["csv"], "images/001.jpg,70,1.0,train,train,train"), 3


def _dup_csv(root):  # the same name written another way
    exp = fx.make_generic_csv(root)
    return "csv", {"csv": exp["csv"]}, exp["csv"], _append(exp["csv"], "./pics//p2.png,9.0,train"), 4


def _dup_clive(root):  # a MATLAB label file: entries, not lines
    exp = fx.make_clive(root, n_test=4)
    data = exp["base"] / "Data"
    names = [f"t{k}.bmp" for k in range(1, 8)] + ["100.JPG", "101.bmp", "102.JPG", "101.bmp"]
    scipy.io.savemat(data / "AllImages_release.mat", {"AllImages_release": fx._cell(names, (len(names), 1))})
    scipy.io.savemat(data / "AllMOS_release.mat", {"AllMOS_release": np.linspace(5, 95, len(names)).reshape(1, -1)})
    return "clive", {}, data / "AllImages_release.mat", 11, 9


@pytest.mark.parametrize("make", [_dup_csiq, _dup_tid, _dup_kadid, _dup_koniq, _dup_flive, _dup_kadis, _dup_pyiqa,
                                  _dup_csv, _dup_clive])
def test_a_name_listed_twice_names_the_file_and_both_lines(tmp_path, make):
    name, kwargs, file, line, first = make(tmp_path)
    with pytest.raises(DatasetError) as err:
        load_dataset(name, tmp_path, **kwargs)
    text = str(err.value)
    unit = "entry" if name == "clive" else "line"
    assert text.startswith(f"{file}: {unit} {line}: ") and "listed twice" in text, text
    assert f"first at {unit} {first}" in text, text


def test_a_repeated_name_with_another_score_says_both_scores(tmp_path):
    exp = fx.make_generic_csv(tmp_path)
    _append(exp["csv"], "pics/p0.png,7.5,test")
    with pytest.raises(DatasetError, match=r"line 8: name 'pics/p0.png' is listed twice, first at line 2 "
                                           r"\(score 0 there, score 7.5 here\)"):
        load_dataset("csv", csv=exp["csv"])


# --- entries outside the dataset folder --------------------------------------------------------


def _csv(root: Path, names: list[str]) -> Path:
    file = root / "labels.csv"
    file.write_text("name,score\n" + "".join(f"{n},{k}\n" for k, n in enumerate(names)))
    return file


def test_dotdot_and_absolute_entries_are_refused_unless_allowed(tmp_path):
    root = tmp_path / "set"
    for k in range(3):
        fx.write_image(root / f"a{k}.png")
    fx.write_image(tmp_path / "other" / "x.png")
    for bad in ("../other/x.png", str(tmp_path / "other" / "x.png")):
        file = _csv(root, ["a0.png", "a1.png", bad, "a2.png"])
        with pytest.raises(DatasetError) as err:
            load_dataset("csv", csv=file)
        assert str(err.value).startswith(f"{file}: line 4: {bad!r} lies outside --root {root}")
        assert "--allow-outside-root" in str(err.value)
        ds = load_dataset("csv", csv=file, allow_outside_root=True)
        assert ds.items[2].path.resolve() == (tmp_path / "other" / "x.png").resolve()
    # `..` that stays inside the folder is fine
    (root / "sub").mkdir()
    assert len(load_dataset("csv", csv=_csv(root, ["sub/../a0.png", "a1.png"]))) == 2


def test_symbolic_links_leading_out_of_the_folder_are_refused(tmp_path):
    root = tmp_path / "set"
    fx.write_image(root / "a.png")
    fx.write_image(tmp_path / "elsewhere" / "pics" / "b.png")
    (root / "b.png").symlink_to(tmp_path / "elsewhere" / "pics" / "b.png")  # a linked file
    (root / "pics").symlink_to(tmp_path / "elsewhere" / "pics")  # a linked folder
    for name in ("b.png", "pics/b.png"):
        file = _csv(root, ["a.png", name])
        pattern = rf"line 3: '{re.escape(name)}' resolves outside --root .* symbolic link"
        with pytest.raises(DatasetError, match=pattern):
            load_dataset("csv", csv=file)
        assert len(load_dataset("csv", csv=file, allow_outside_root=True)) == 2
    # a link that stays inside, and a root that is itself a link, are fine
    (root / "c.png").symlink_to(root / "a.png")
    (tmp_path / "root-link").symlink_to(root)
    ds = load_dataset("csv", tmp_path / "root-link", csv=_csv(root, ["c.png"]))
    assert ds.items[0].path.name == "c.png"
    # ... but two names of one file are one image listed twice
    with pytest.raises(DatasetError, match="line 3: name 'c.png' .* listed twice, first at line 2"):
        load_dataset("csv", csv=_csv(root, ["a.png", "c.png"]))


def test_native_layout_and_pyiqa_reference_names_stay_inside(tmp_path):
    fx.make_csiq(tmp_path)
    fx.write_image(tmp_path.parent / f"{tmp_path.name}-x.png")
    _append(tmp_path / "csiq_label.txt", f"../../{tmp_path.name}-x.AWGN.1.png 0.5")
    with pytest.raises(DatasetError, match=r"csiq_label.txt: line 13: .* lies outside --root"):
        load_dataset("csiq", tmp_path)
    root = tmp_path / "fr"
    exp = fx.make_pyiqa_fr(root)
    _append(exp["csv"], "../refs/1600.png,dst_imgs/1600.BLUR.4.png,0.5")
    with pytest.raises(DatasetError, match=r"line 8: .*refs/1600.png' lies outside --root"):
        load_dataset("pyiqa", csv=exp["csv"])


# --- pyiqa's FLIVE meta file: images and patches ------------------------------------------------


def _flive_meta(root: Path, n: int = 10) -> Path:
    """The shape of pyiqa's meta_info_FLIVEDataset.csv: the image rows, then 3 patch rows per
    image (`<image>_patch_<k>`), header `img_name/patch_name,mos,split`."""
    subsets = ["AVA__", "EE371R__", "voc_emotic_ava__", "blur_dataset__"]
    images = [f"{subsets[k % 4].rstrip('_')}/{subsets[k % 4]}{1000 + k}.jpg" for k in range(n)]
    rows = ["img_name/patch_name,mos,split"] + [f"{name},{40 + k},{k % 3}" for k, name in enumerate(images)]
    for k, name in enumerate(images):
        fx.write_image(root / name)
        for p in (1, 2, 3):
            patch = f"patches/{Path(name).stem}_patch_{p}.jpg"
            fx.write_image(root / patch)
            rows.append(f"{patch},{40 + k + p},{k % 3}")
    file = root / "meta_info_FLIVEDataset.csv"
    file.write_text("\n".join(rows) + "\n")
    return file


def test_pyiqa_flive_meta_file_gives_images_only(tmp_path):
    file = _flive_meta(tmp_path)
    ds = load_dataset("pyiqa", csv=file)
    assert [it.name for it in ds.items] == [ln.split(",")[0] for ln in file.read_text().splitlines()[1:11]]
    assert ds.scores().tolist() == [40.0 + k for k in range(10)]
    assert any("30 patch rows (of 10 images) left out" in n for n in ds.notes)
    # so a split cannot put an image on one side and its patches on the other
    for split in make_splits(ds, 5, 0.8, 0.0, seed=0):
        train = {Path(ds.items[i].name).stem.split("_patch_")[0] for i in split.train}
        test = {Path(ds.items[i].name).stem.split("_patch_")[0] for i in split.test}
        assert not train & test and len(split.train) + len(split.test) == 10


def test_patch_like_names_without_their_image_are_kept(tmp_path):
    for name in ("a_patch_1.png", "b_patch_2.png"):
        fx.write_image(tmp_path / name)
    file = tmp_path / "meta_info_X.csv"
    file.write_text("img_name,mos\na_patch_1.png,1\nb_patch_2.png,2\n")
    assert len(load_dataset("pyiqa", csv=file)) == 2


# --- pairs manifests ----------------------------------------------------------------------------


def _rewrite(manifest: Path, change) -> None:
    with manifest.open(newline="") as fh:
        rows = list(csv.reader(fh))
    change(rows)
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.mark.parametrize("column,value,message", [
    (2, "99", "line 4: distortion type 99 is not in 1..25"),
    (2, "0", "line 4: distortion type 0 is not in 1..25"),
    (3, "6", "line 4: level 6 is not in 1..5"),
])
def test_manifest_types_and_levels_are_checked_on_read(tmp_path, column, value, message):
    data = write_synth_folder(tmp_path / "D", n_refs=2, kinds=(1, 3), levels=(1,))
    _rewrite(data / "dist_imgs.csv", lambda rows: rows[3].__setitem__(column, value))
    with pytest.raises(DatasetError, match=re.escape(f"{data / 'dist_imgs.csv'}: {message}")):
        load_pairs(data)


def test_manifest_duplicates_and_entries_outside_the_folder(tmp_path):
    data = write_synth_folder(tmp_path / "D", n_refs=2, kinds=(1, 3), levels=(1,))
    manifest = data / "dist_imgs.csv"
    original = manifest.read_text()
    _rewrite(manifest, lambda rows: rows.append([rows[2][0], rows[2][1], "3", "2"]))
    with pytest.raises(DatasetError, match="line 6: distorted image 'dist_imgs/ref00_03_01.png' is listed twice, "
                                           "first at line 3"):
        load_pairs(data)
    # a reference outside the folder (as `dsmix synthesize --refs R --out D` writes them)
    refs = tmp_path / "refs"
    refs.mkdir()
    os.replace(data / "ref_imgs" / "ref01.png", refs / "ref01.png")
    manifest.write_text(original.replace("ref_imgs/ref01.png", str(refs / "ref01.png")))
    with pytest.raises(DatasetError, match=r"line 4: .*ref01.png' lies outside the --data folder"):
        load_pairs(data)
    assert len(load_pairs(data, allow_outside_root=True)) == 4
    (data / "synthesize.json").write_text(json.dumps({"refs": str(refs)}))  # the folder the run recorded
    assert len(load_pairs(data)) == 4
    manifest.write_text(original.replace("dist_imgs/ref01_01_01.png", "../ref01_01_01.png"))
    with pytest.raises(DatasetError, match=r"line 4: '../ref01_01_01.png' lies outside the --data folder"):
        load_pairs(data)


def test_kadid_and_kadis_pair_folders(tmp_path):
    kadid = tmp_path / "kadid"
    fx.make_kadid10k(kadid)
    fx.write_image(kadid / "distorted_images" / "I01_26_01.png")
    _append(kadid / "dmos.csv", "I01_26_01.png,I01.png,3.0,0.1")
    with pytest.raises(DatasetError, match=r"dmos.csv: line 14: distortion type 26 is not in 1..25"):
        load_pairs(kadid)
    fx.make_kadid10k(kadid)  # rewritten clean
    _append(kadid / "dmos.csv", "I02_09_05.png,I02.png,3.0,0.1")
    with pytest.raises(DatasetError, match=r"line 14: distorted image 'I02_09_05.png' is listed twice, "
                                           r"first at line 9"):
        load_pairs(kadid)

    kadis = tmp_path / "kadis"
    fx.make_kadis700k(kadis)
    file = kadis / "kadis700k_ref_imgs.csv"
    clean = file.read_text()
    _append(file, "zebra-123.png,4,")
    with pytest.raises(DatasetError, match=r"line 6: reference 'zebra-123.png' is listed twice, first at line 5"):
        load_pairs(kadis)
    file.write_text(clean.replace("zebra-123.png,3,", "zebra-123.png,99,"))
    with pytest.raises(DatasetError, match=r"kadis700k_ref_imgs.csv: line 5: distortion type 99 is not in 1..25"):
        load_pairs(kadis)
    file.write_text(clean.replace("zebra-123.png", "../../zebra-123.png"))  # ref_imgs/../.. is outside
    with pytest.raises(DatasetError, match=r"line 5: '../../zebra-123.png' lies outside the --data folder"):
        load_pairs(kadis)


def test_pair_label_range_matches_the_distortion_library():
    from dsmix_cli.data import pairs
    from dsmix_cli.distortions import NUM_LEVELS, NUM_TYPES

    assert (pairs.NUM_TYPES, pairs.NUM_LEVELS) == (NUM_TYPES, NUM_LEVELS)


# --- the commands: exit 2 before any work, naming the file and the line -------------------------


def _type_99(tmp_path) -> Path:
    data = write_synth_folder(tmp_path / "D", n_refs=4)
    _rewrite(data / "dist_imgs.csv", lambda rows: rows[5].__setitem__(2, "99"))
    return data


@pytest.mark.parametrize("command", [
    ["pretrain-dsm", "--no-pretrained", "--depth", "1", "--arch", "vit_small_patch8_224", "--image-size", "32",
     "--device", "cpu", "--workers", "0"],
    ["qep", "--dsm-source", "gt", "--arch", "resnet18", "--no-pretrained", "--image-size", "32", "--device", "cpu",
     "--workers", "0"],
    ["make-gt-dsm", "--workers", "0"],
])
def test_training_commands_refuse_a_type_99_manifest(tmp_path, monkeypatch, command):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    data = _type_99(tmp_path)
    run = tmp_path / "run"
    res = runner.invoke(app, [*command, "--data", str(data), "--out", str(run)])
    assert res.exit_code == 2, res.output
    assert f"{data / 'dist_imgs.csv'}: line 6: distortion type 99 is not in 1..25" in res.output.replace("\n", "")
    assert "Traceback" not in res.output
    assert not (run / "config.json").exists() and not (run / "last.pt").exists() and not list(run.glob("*.npy"))


@pytest.mark.parametrize("command", [
    ["data", "check", "csv"],
    ["probe", "--dataset", "csv", "--encoder", "random:resnet18", "--device", "cpu"],
    ["cross-eval", "--train", "csv", "--test", "csv", "--encoder", "random:resnet18", "--device", "cpu"],
])
def test_scored_dataset_commands_refuse_duplicates_and_accept_outside_when_allowed(tmp_path, command):
    exp = fx.make_generic_csv(tmp_path)
    line = _append(exp["csv"], "pics/p1.png,99,test")
    opt = ["--train-csv", str(exp["csv"]), "--test-csv", str(exp["csv"])] if "cross-eval" in command \
        else ["--csv", str(exp["csv"])]
    res = runner.invoke(app, [*command, *opt, "--out", str(tmp_path / "run")] if command[0] != "data"
                        else [*command, *opt])
    assert res.exit_code == 2, res.output
    assert f"{exp['csv']}: line {line}: name 'pics/p1.png' is listed twice" in res.output.replace("\n", "")
    assert not (tmp_path / "run" / "config.json").exists()


def test_data_check_and_synthesize_allow_outside_root(tmp_path):
    root = tmp_path / "set"
    fx.write_image(root / "a.png")
    fx.write_image(tmp_path / "b.png")
    file = _csv(root, ["a.png", "../b.png"])
    res = runner.invoke(app, ["data", "check", "csv", "--csv", str(file)])
    assert res.exit_code == 2 and "line 3: '../b.png' lies outside --root" in res.output.replace("\n", "")
    res = runner.invoke(app, ["data", "check", "csv", "--csv", str(file), "--allow-outside-root", "--json", "-"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["images"] == 2

    from dsmix_cli.synthesize import SynthesizeConfig, plan_jobs

    refs = tmp_path / "refs"
    fx.write_image(refs / "r.png")
    table = tmp_path / "kadis700k_ref_imgs.csv"
    table.write_text("ref_im,dist_type_1,dist_type_2\nr.png,3,\n../b.png,4,\n")
    res = runner.invoke(app, ["synthesize", "--refs", str(refs), "--csv", str(table), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "line 3: '../b.png' lies outside --refs" in res.output.replace("\n", "")
    assert not (tmp_path / "o").exists()
    jobs, _ = plan_jobs(SynthesizeConfig(refs=refs, out=tmp_path / "o", csv=table, allow_outside_root=True))
    assert sorted({j.ref.name for j in jobs}) == ["b.png", "r.png"]
    table.write_text("ref_im,dist_type_1,dist_type_2\nr.png,3,\nr.png,4,\n")
    res = runner.invoke(app, ["synthesize", "--refs", str(refs), "--csv", str(table), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "line 3: reference 'r.png' is listed twice, first at line 2" in res.output


@pytest.mark.parametrize("command", [["data", "check"], ["probe"], ["evaluate"], ["cross-eval"], ["make-gt-dsm"],
                                     ["pretrain-dsm"], ["qep"], ["synthesize"]])
def test_every_label_reading_command_has_the_option(command):
    res = runner.invoke(app, [*command, "--help"])
    assert res.exit_code == 0 and "--allow-outside-root" in res.output
