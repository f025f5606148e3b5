"""`dsmix demo`: the whole pipeline at toy scale, and the user's defaults left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.defaults import record_default, resolve_default
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
    before = (home / "defaults.json").read_text()

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
    # the user's records and environment are as they were; the demo kept its own
    assert (home / "defaults.json").read_text() == before
    assert resolve_default("model", None).value == str((tmp_path / "mine").resolve())
    demo_records = json.loads((tmp_path / "demo" / "home" / "defaults.json").read_text())
    assert set(demo_records) == {"dsm_model", "encoder", "model"}

    # an existing, non-empty --out is refused before any work
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 2 and "new or empty folder" in res.stderr
