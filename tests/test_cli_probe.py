"""`dsmix probe / evaluate / cross-eval / score` through the CLI: contract, defaults, exit codes."""

from __future__ import annotations

import csv as csvmod
import json

import pytest
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.defaults import record_default
from test_probe import make_toy_set

runner = CliRunner()
TINY = ["--image-size", "32", "--device", "cpu", "--train-views", "1", "--batch-size", "8"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_MODEL", "DSMIX_ENCODER", "DSMIX_DSM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def test_probe_without_encoder_names_qep(home):
    res = runner.invoke(app, ["probe", "--dataset", "clive"])
    assert res.exit_code == 2
    assert "dsmix qep" in res.stderr and "--encoder" in res.stderr
    assert "Traceback" not in res.output


def test_score_without_model_names_probe(home, tmp_path):
    res = runner.invoke(app, ["score", str(tmp_path)])
    assert res.exit_code == 2 and "dsmix probe" in res.stderr


def test_a_stale_recorded_default_names_the_option(home, tmp_path):
    (tmp_path / "qep_run").mkdir()
    record_default("encoder", tmp_path / "qep_run")
    (tmp_path / "qep_run").rmdir()
    res = runner.invoke(app, ["probe", "--dataset", "clive"])
    assert res.exit_code == 2 and "no longer exists" in res.stderr
    assert "--encoder RUN" in res.stderr and "DSMIX_ENCODER" in res.stderr and "dsmix qep" in res.stderr


def test_probe_passes_the_resolved_config(home, tmp_path, monkeypatch):
    """A thin command: options -> config -> one engine call; the encoder comes from the chain of defaults."""
    from dsmix_cli.stages import probe as stage

    seen = {}

    def fake(cfg, on_progress=None, on_info=None, on_warn=None):
        seen["cfg"] = cfg
        return {"dataset": "clive", "encoder": cfg.encoder, "splits": [], "median": {"srcc": 0.5, "plcc": 0.5,
                "krcc": 0.4}, "epochs": 100, "train_views": 4, "selection": "final epoch", "model": "x",
                "protocol": {"name": "dsmix", "head": "mlp"}}

    monkeypatch.setattr(stage, "run_probe", fake)
    (tmp_path / "qep_run").mkdir()
    record_default("encoder", tmp_path / "qep_run")
    res = runner.invoke(app, ["probe", "--dataset", "koniq", "--splits", "3", "--out", "R"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg.encoder == str((tmp_path / "qep_run").resolve()) and "recorded default" in res.stdout
    assert (cfg.dataset, cfg.splits, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size) == \
        ("koniq", 3, None, 7e-4, 0.01, 64)
    # the DSMix protocol by default; head, views and ratios come from it unless given
    assert (cfg.protocol, cfg.head, cfg.views, cfg.train_ratio, cfg.val_ratio) == ("dsmix", None, None, None, None)
    assert (cfg.resize, cfg.feature_cache, cfg.final_head, cfg.splits_from) == ("auto", True, True, None)
    assert cfg.out == "R" and cfg.train_views == 4 and not cfg.fresh_crops
    monkeypatch.setenv("DSMIX_ENCODER", "timm:resnet50")
    runner.invoke(app, ["probe", "--dataset", "koniq"])
    assert seen["cfg"].encoder == "timm:resnet50" and seen["cfg"].out.startswith("runs/probe/")


def test_probe_score_evaluate_cross_eval_end_to_end(home, tmp_path):
    csv = make_toy_set(tmp_path / "data", refs=4, levels=3)
    res = runner.invoke(app, ["probe", "--encoder", "random:resnet18", "--dataset", "csv", "--csv", str(csv),
                              "--out", "run", "--splits", "2", "--epochs", "3", "--json", "F.json", *TINY])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "F.json").read_text())
    assert out["dataset"] == "csv" and out["encoder"] == "random:resnet18" and len(out["splits"]) == 2
    assert {"split", "srcc", "plcc", "krcc", "n_train", "n_test"} <= set(out["splits"][0])
    assert {"srcc", "plcc"} <= set(out["median"])
    assert "median" in res.stdout and "SRCC" in res.stdout

    # score a folder with an unreadable file, no --model: the probe's bundle is the default
    (tmp_path / "data" / "ref0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = runner.invoke(app, ["score", str(tmp_path / "data"), "--csv", "S.csv"])
    assert res.exit_code == 1
    assert "broken.png" in res.stderr and "run" in res.stderr  # names the file, and the model used
    rows = list(csvmod.reader((tmp_path / "S.csv").open()))
    assert rows[0][:2] == ["path", "score"] and len(rows) == 1 + 12
    assert [r[0] for r in rows[1:]] == sorted(r[0] for r in rows[1:])  # folder order: sorted
    (tmp_path / "data" / "ref0" / "broken.png").unlink()

    res = runner.invoke(app, ["score", str(tmp_path / "data" / "ref1" / "img_0.png"), "--json", "-"])
    assert res.exit_code == 0
    record = json.loads(res.stdout)
    assert record["images"][0]["score"] is not None and record["scored"] == 1

    res = runner.invoke(app, ["evaluate", "--dataset", "csv", "--csv", str(csv), "--json", "E.json",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "E.json").read_text())
    assert {"srcc", "plcc", "krcc", "n"} <= set(ev) and ev["n"] == 12
    assert "trained on csv itself" in res.stderr

    csv_b = make_toy_set(tmp_path / "other", refs=2, levels=3)
    res = runner.invoke(app, ["cross-eval", "--encoder", "random:resnet18", "--train", "csv", "--train-csv", str(csv),
                              "--test", "csv", "--test-csv", str(csv_b), "--epochs", "2", "--out", "X",
                              "--json", "-", *TINY])
    assert res.exit_code == 0, res.output
    ce = json.loads(res.stdout)  # stdout carries only the JSON
    assert {"srcc", "plcc", "krcc", "n"} <= set(ce) and ce["n"] == 6 and ce["n_train"] == 12


def test_bad_dataset_is_exit_2_with_one_line(home, tmp_path):
    res = runner.invoke(app, ["probe", "--encoder", "random:resnet18", "--dataset", "nosuch", *TINY])
    assert res.exit_code == 2 and "unknown dataset" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["score", str(tmp_path / "nothing*.png"), "--model", str(tmp_path)])
    assert res.exit_code == 2 and "no images to score" in res.stderr
