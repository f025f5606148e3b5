"""The protocol commands through the CLI: KonIQ at its protocol size, `evaluate --split test`,
messages that name the label file, skips on stderr, and `dsmix compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fixtures_datasets as fx
from dsmix_cli.cli import app
from dsmix_cli.evaluation import views as views_mod
from test_probe import make_toy_set

runner = CliRunner()
TINY = ["--image-size", "32", "--device", "cpu", "--train-views", "1", "--batch-size", "8", "--epochs", "3"]
ENC = ["--encoder", "random:resnet18"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_MODEL", "DSMIX_ENCODER", "DSMIX_DSM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.mark.slow
def test_koniq_with_only_1024x768_images_is_probed_at_512x384(home, tmp_path, monkeypatch):
    exp = fx.make_koniq10k(tmp_path / "koniq", half=False)
    rng = np.random.default_rng(0)
    for name, _, _ in exp["items"]:  # real 1024x768 images in the only folder there is
        Image.fromarray((rng.random((768, 1024, 3)) * 255).astype(np.uint8)).save(
            tmp_path / "koniq" / "1024x768" / name, quality=60)
    seen = []
    real = views_mod.resize_min_side

    def spy(image, size):
        seen.append(tuple(image.shape[-2:]))
        return real(image, size)

    monkeypatch.setattr(views_mod, "resize_min_side", spy)
    res = runner.invoke(app, ["probe", *ENC, "--dataset", "koniq", "--root", str(tmp_path / "koniq"), "--splits", "1",
                              "--out", "run", *TINY])
    assert res.exit_code == 0, res.output
    assert seen and set(seen) == {(384, 512)}  # every crop was taken from the 512x384 image (H, W)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["image_size"]["protocol"] == [512, 384] and record["image_size"]["resized_on_load"] == 6
    assert "512x384" in res.stdout  # said in the table
    # --resize none keeps the images as they are
    seen.clear()
    res = runner.invoke(app, ["probe", *ENC, "--dataset", "koniq", "--root", str(tmp_path / "koniq"), "--splits", "1",
                              "--out", "run2", "--resize", "none", "--no-feature-cache", *TINY])
    assert res.exit_code == 0, res.output
    assert set(seen) == {(768, 1024)}
    # evaluate (the score path) resizes the same way before its five crops
    import dsmix_cli.evaluation.score as score_mod

    crops_from = []
    real_five = score_mod.five_crops

    def five_spy(image, size):
        crops_from.append(tuple(image.shape[-2:]))
        return real_five(image, size)

    monkeypatch.setattr(score_mod, "five_crops", five_spy)
    res = runner.invoke(app, ["evaluate", "--dataset", "koniq", "--root", str(tmp_path / "koniq"), "--model", "run",
                              "--device", "cpu", "--json", "E.json"])
    assert res.exit_code == 0, res.output
    assert set(crops_from) == {(384, 512)} and len(crops_from) == 6
    assert json.loads((tmp_path / "E.json").read_text())["resize_to"] == [512, 384]


@pytest.mark.slow
def test_evaluate_split_test_scores_the_test_part_of_the_probes_split(home, tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=5, levels=3)
    res = runner.invoke(app, ["probe", *ENC, "--dataset", "csv", "--csv", str(csv), "--out", "held", "--splits", "2",
                              "--no-final-head", "--json", "P.json", *TINY])
    assert res.exit_code == 0, res.output
    split0 = json.loads((tmp_path / "P.json").read_text())["splits"][0]
    res = runner.invoke(app, ["evaluate", "--dataset", "csv", "--csv", str(csv), "--model", "held", "--split", "test",
                              "--device", "cpu", "--json", "E.json"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "E.json").read_text())
    assert ev["n"] == split0["n_test"] == 3 and ev["held_out"] is True and ev["split_index"] == 0
    assert ev["srcc"] == pytest.approx(split0["srcc"], abs=1e-6) and ev["plcc"] == pytest.approx(split0["plcc"], abs=1e-4)
    test_names = json.loads((tmp_path / "held" / "splits.json").read_text())["splits"][0]["test"]
    assert "warning" not in res.stderr
    res = runner.invoke(app, ["evaluate", "--dataset", "csv", "--csv", str(csv), "--model", "held", "--split", "test",
                              "--splits-seed", "7", "--device", "cpu", "--json", "E7.json"])
    assert res.exit_code == 0, res.output
    ev7 = json.loads((tmp_path / "E7.json").read_text())
    assert ev7["splits_seed"] == 7 and ev7["held_out"] is False and "not disjoint" in res.stderr
    assert "seed 7" in ev7["splits_source"] and test_names  # drawn again with the probe's ratios
    res = runner.invoke(app, ["evaluate", "--dataset", "csv", "--csv", str(csv), "--model", "held", "--split", "test",
                              "--split-index", "5", "--device", "cpu"])
    assert res.exit_code == 2 and "--split-index 5" in res.stderr
    # a default bundle's head saw every image: said so
    res = runner.invoke(app, ["probe", *ENC, "--dataset", "csv", "--csv", str(csv), "--out", "all", "--splits", "1", *TINY])
    res = runner.invoke(app, ["evaluate", "--dataset", "csv", "--csv", str(csv), "--model", "all", "--split", "test",
                              "--device", "cpu"])
    assert res.exit_code == 0 and "trained on every image" in res.stderr


def test_constant_labels_name_the_label_file(home, tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=3, levels=2, size=(16, 16))
    rows = csv.read_text().splitlines()
    csv.write_text("\n".join([rows[0]] + [",".join(r.split(",")[:1] + ["3"] + r.split(",")[2:]) for r in rows[1:]]) + "\n")
    res = runner.invoke(app, ["probe", *ENC, "--dataset", "csv", "--csv", str(csv), "--splits", "1", *TINY])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "cannot normalise scores" in res.stderr and str(csv) in res.stderr.replace("\n", "")


@pytest.mark.slow
def test_skip_missing_reports_skips_on_stderr_not_stdout(home, tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3, unreadable=1)
    csv.write_text(csv.read_text() + "gone.png,2,refz\n")
    res = runner.invoke(app, ["probe", *ENC, "--dataset", "csv", "--csv", str(csv), "--splits", "1", "--skip-missing",
                              "--out", "run", *TINY])
    assert res.exit_code == 0, res.output
    assert "broken0.png" in res.stderr and "skipped unreadable" in res.stderr and "1 of 14 images are missing" in res.stderr
    for text in ("broken0.png", "skipped unreadable", "images are missing"):
        assert text not in res.stdout


@pytest.mark.slow
def test_compare_two_encoders_table_chart_json_and_cached_second_run(home, tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=10, levels=2, size=(24, 24))
    args = ["compare", "--dataset", "csv", "--csv", str(csv), "--encoders", "random:resnet18", "random:resnet34",
            "--protocol", "arniqa", "--splits", "3", "--image-size", "32", "--device", "cpu"]
    res = runner.invoke(app, [*args, "--out", "C", "--json", "C.json"])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "C.json").read_text())
    assert [r["encoder"] for r in out["table"]] == ["random:resnet18", "random:resnet34"]
    for row in out["table"]:
        per = out["encoders"][row["encoder"]]["protocols"]["arniqa"]
        assert row["srcc"] == pytest.approx(np.median([s["srcc"] for s in per["splits"]]))
        assert row["srcc_std"] == pytest.approx(np.std([s["srcc"] for s in per["splits"]]))
        assert row["splits"] == 3
    assert "random:resnet34" in res.stdout and "SRCC" in res.stdout
    with Image.open(tmp_path / "C" / "compare.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    res = runner.invoke(app, [*args, "--out", "C2", "--json", "C2.json"])
    again = json.loads((tmp_path / "C2.json").read_text())
    assert all(not e["features"]["encoded"] for e in again["encoders"].values())  # only the heads ran
    assert again["table"] == out["table"]
    res = runner.invoke(app, ["compare", "--dataset", "csv", "--csv", str(csv), "random:resnet18"])
    assert res.exit_code == 2 and "--encoders" in res.stderr
