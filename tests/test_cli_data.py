"""`dsmix data list` and `dsmix data check` through Typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import fixtures_datasets as fx
from dsmix_cli.cli import app

runner = CliRunner()


def _flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_data_list():
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0, result.output
    for name in ("live", "csiq", "tid2013", "kadid10k", "clive", "koniq10k", "flive", "kadis700k", "pyiqa", "csv"):
        assert name in result.stdout
    listed = json.loads(runner.invoke(app, ["data", "list", "--json", "-"]).stdout)
    live = next(d for d in listed if d["name"] == "live")
    assert live["lower_better"] and live["synthetic"] and live["epochs"] == 100 and live["images"] == 779


def test_help_texts():
    result = runner.invoke(app, ["data", "check", "--help"])
    assert result.exit_code == 0
    for opt in ("--root", "--skip-missing", "--json", "--csv", "--decode", "--no-decode"):
        assert opt in result.stdout
    assert "data" in runner.invoke(app, ["--help"]).stdout


def test_check_real_partial_clive(tmp_path):
    if not (fx.SHARED_CLIVE / "Data" / "AllMOS_release.mat").is_file():
        pytest.skip("../shared/data/clive-subset is absent")
    result = runner.invoke(app, ["data", "check", "clive", "--root", str(fx.SHARED_CLIVE)])
    assert result.exit_code == 2
    assert "535 of 1162 images are missing (e.g. Images/100.bmp" in _flat(result.stderr)
    assert "Traceback" not in result.output
    out = tmp_path / "clive.json"
    result = runner.invoke(app, ["data", "check", "clive", "--root", str(fx.SHARED_CLIVE),
                                 "--skip-missing", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 627 and report["missing"] == 535 and report["unreadable"] == 0
    assert report["dataset"] == "clive" and report["references"] is None and report["lower_better"] is False
    assert 3.42 <= report["score_min"] and report["score_max"] <= 92.44 and report["decoded"]
    assert report["missing_examples"][0] == "Images/100.bmp"
    assert "627 of 1162" in result.stdout


def test_check_complete_clive(tmp_path):
    base = fx.make_complete_clive(tmp_path)
    if base is None:
        pytest.skip("../shared/data/clive-subset is absent")
    out = tmp_path / "c.json"
    result = runner.invoke(app, ["data", "check", "livec", "--root", str(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["images"] == 1162 and report["missing"] == 0 and report["unreadable"] == 0
    assert report["score_min"] == 3.42 and round(report["score_max"], 2) == 92.43


def test_check_unreadable_exits_1(tmp_path):
    exp = fx.make_kadid10k(tmp_path)
    (tmp_path / "distorted_images" / exp["items"][2][0]).write_bytes(b"GIF89a broken")
    out = tmp_path / "k.json"
    result = runner.invoke(app, ["data", "check", "kadid", "--root", str(tmp_path), "--json", str(out),
                                 "--workers", "1"])
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    n = len(exp["items"])
    assert report["unreadable"] == 1 and report["images"] == n - 1 and report["references"] == 3
    assert report["unreadable_examples"][0]["path"] == f"distorted_images/{exp['items'][2][0]}"
    assert "1 of 12 images cannot be decoded" in _flat(result.stderr)
    # Without decoding, the broken file is not noticed.
    assert runner.invoke(app, ["data", "check", "kadid", "--root", str(tmp_path), "--no-decode"]).exit_code == 0


def test_check_pyiqa_json_to_stdout(tmp_path):
    exp = fx.make_pyiqa_nr(tmp_path)
    result = runner.invoke(app, ["data", "check", "pyiqa", "--csv", str(exp["csv"]), "--json", "-",
                                 "--lower-better"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 5 and report["lower_better"] is True
    assert report["official_split"] == {"train": 3, "val": 1, "test": 1}
    assert (report["score_min"], report["score_max"]) == (50.0, 54.0)


def test_bad_usage_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "check", "spaq", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "unknown dataset 'spaq'" in _flat(result.stderr)
    result = runner.invoke(app, ["data", "check", "csiq", "--root", str(tmp_path / "none")])
    assert result.exit_code == 2 and "not found" in _flat(result.stderr)
    fx.make_csiq(tmp_path)
    result = runner.invoke(app, ["data", "check", "csiq", "--root", str(tmp_path), "--higher-better"])
    assert result.exit_code == 2 and "cannot be changed" in _flat(result.stderr)


def test_top_level_help_lists_every_command_with_its_whole_first_sentence():
    from typer.testing import CliRunner as _Runner

    from dsmix_cli.cli import app as _app

    res = _Runner().invoke(_app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in ("data", "synthesize", "contact-sheet", "make-gt-dsm", "pretrain-dsm", "qep", "probe", "evaluate",
                 "cross-eval", "score", "demo"):
        assert f"  {name} " in res.output, name
    listing = res.output.split("Commands:")[1]
    assert "..." not in listing  # no summary cut short
