"""`dsmix demo`: the whole pipeline at toy scale, and the user's defaults left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.defaults import record_default
from dsmix_cli.demo import demo_images

ASSETS = Path(__file__).resolve().parents[1] / "dsmix_cli" / "assets" / "demo"


def test_demo_assets_are_small_licensed_images():
    images = demo_images()
    assert len(images) >= 4
    total = sum(p.stat().st_size for p in ASSETS.iterdir())
    assert total < 1_000_000
    licences = (ASSETS / "LICENSES.md").read_text()
    for p in images:
        with Image.open(p) as im:
            assert max(im.size) <= 256
        assert f"`{p.name}`" in licences  # every shipped image has its source and licence recorded


@pytest.mark.slow
def test_demo_runs_end_to_end_without_touching_user_defaults(tmp_path, monkeypatch):
    home = tmp_path / "user-home"
    monkeypatch.setenv("DSMIX_HOME", str(home))
    monkeypatch.setenv("DSMIX_ENCODER", "timm:should-not-be-used")
    monkeypatch.delenv("DSMIX_MODEL", raising=False)
    (tmp_path / "mine").mkdir()
    record_default("model", tmp_path / "mine")
    record_default("encoder", tmp_path / "mine")
    before = json.loads((home / "defaults.json").read_text())

    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    assert "TOY-SCALE" in res.stderr and "median" in res.stdout
    out = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert out["probe"]["dataset"] == "csv" and len(out["probe"]["splits"]) == 3
    assert out["evaluate"]["n"] > 0 and len(out["scores"]) == len(demo_images()) + 2
    for name in ("pretrain-data", "gt-dsm", "dsm", "qep", "probe"):
        assert (tmp_path / "demo" / name).is_dir()
    assert (tmp_path / "demo" / "qep" / "encoder.safetensors").is_file()
    assert out["probe"]["encoder"].endswith("qep/encoder.safetensors")
    # the demo's own head keeps its scores on the labels' 0..1 scale (standardised features of the
    # toy encoder gave -5 and below)
    assert out["probe"]["config"]["feature_norm"] is False
    assert all(0.0 <= s["score"] <= 1.0 for s in out["scores"]), out["scores"]
    # `dsmix score` uses the model of the last probe or demo run; the user's other records
    # are as they were (the demo's DSM model and encoder stay in its own home)
    after = json.loads((home / "defaults.json").read_text())
    assert after["model"] == str((tmp_path / "demo" / "probe").resolve()) != before["model"]
    assert after["encoder"] == before["encoder"] and "dsm_model" not in after
    assert "default model of `dsmix score`" in res.stdout
    demo_records = json.loads((tmp_path / "demo" / "home" / "defaults.json").read_text())
    # the demo's DSM network stops at --max-steps (a toy): only finished runs are recorded
    assert set(demo_records) == {"encoder", "model"}

    # an existing, non-empty --out is refused before any work
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 2 and "new or empty folder" in res.stderr


def test_demo_no_record_default_is_passed_to_the_engine(tmp_path, monkeypatch):
    import dsmix_cli.demo as demo_mod

    seen = {}

    def fake_run_demo(cfg, on_info=None, on_progress=None):
        seen["cfg"] = cfg
        from dsmix_cli.errors import DsmixError

        raise DsmixError("stop here")

    monkeypatch.setattr(demo_mod, "run_demo", fake_run_demo)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--no-record-default"])
    assert res.exit_code == 2 and seen["cfg"].record_default is False


def test_demo_phases_count_in_their_own_units(tmp_path, monkeypatch):
    """The training phases count optimizer steps, probing counts images and epochs (no bare "it")."""
    import dsmix_cli.demo as demo_mod
    from dsmix_cli.errors import DsmixError

    def fake_run_demo(cfg, on_info=None, on_progress=None):
        for phase, total in (("pretrain-dsm", 8), ("qep", 30), ("features", 160), ("heads", 120)):
            on_progress(phase, total, total)
        raise DsmixError("stop here")

    monkeypatch.setattr(demo_mod, "run_demo", fake_run_demo)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2
    for line in ("pretrain-dsm: 8/8 step", "qep: 30/30 step", "features: 160/160 img", "heads: 120/120 epoch"):
        assert line in res.output, res.output
    assert " it " not in res.output and " it/s" not in res.output
