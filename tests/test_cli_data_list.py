"""`dsmix data list`: one block per dataset that fits 80 columns, and `data list NAME`."""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dsmix_cli import report
from dsmix_cli.cli import app
from dsmix_cli.data import catalog

runner = CliRunner()


def _blocks(text: str) -> dict[str, dict[str, str]]:
    """Parse the printed blocks back: heading name -> {key: value with the wrapping undone}."""
    out: dict[str, dict[str, str]] = {}
    current, key = None, None
    for line in text.splitlines():
        if not line.strip():
            current = None
        elif not line.startswith(" ") and current is None and line.split()[0] in catalog.DATASETS:
            current = out.setdefault(line.split()[0], {})
        elif current is not None and line.startswith("  ") and not line.startswith("   "):
            key, _, value = line.strip().partition("  ")
            current[key] = value.strip()
        elif current is not None:
            current[key] += " " + line.strip()
    return out


@pytest.mark.parametrize("width", [80, 120])
def test_data_list_fits_the_width_one_block_per_dataset(monkeypatch, width):
    monkeypatch.setattr(report, "console", Console(width=width, highlight=False))
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.stdout.splitlines()) <= width
    blocks = _blocks(res.stdout)
    assert list(blocks) == list(catalog.DATASETS)  # every dataset, in catalog order
    for name, info in catalog.DATASETS.items():
        b = blocks[name]
        assert b["layout"] == info.layout  # the layout is whole: wrapped between words, nothing cut
        assert b["what"] == info.description
    assert blocks["live"]["scores"] == "DMOS, lower better, 0-100"
    assert blocks["live"]["size"] == "779 images, probe epochs 100"
    assert "looked for" not in blocks["live"]


def test_data_list_name_gives_one_dataset_with_where_it_is_looked_for(monkeypatch, tmp_path):
    monkeypatch.setattr(report, "console", Console(width=200, highlight=False))  # pytest's tmp_path is long
    monkeypatch.setenv("DSMIX_DATA", str(tmp_path))
    res = runner.invoke(app, ["data", "list", "livec"])  # an alias
    assert res.exit_code == 0, res.output
    blocks = _blocks(res.stdout)
    assert list(blocks) == ["clive"]
    assert blocks["clive"]["looked for"] == f"--root, else {tmp_path / 'clive'}"
    listed = json.loads(runner.invoke(app, ["data", "list", "clive", "--json", "-"]).stdout)
    assert [d["name"] for d in listed] == ["clive"]


def test_data_list_unknown_name_is_one_line_exit_2():
    res = runner.invoke(app, ["data", "list", "nope"])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "unknown dataset 'nope'" in res.stderr
