"""`dsmix contact-sheet` reports its progress: one tick per rendered type row."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.contact_sheet import render_contact_sheet


def _ref(path, h=60, w=80):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_render_reports_each_row_once_in_order(tmp_path):
    ticks = []
    out = render_contact_sheet(_ref(tmp_path / "r.png"), tmp_path / "sheet.png", types=[1, 18, 21], levels=[1, 5],
                               thumb=(16, 24), on_progress=lambda done, total: ticks.append((done, total)))
    assert ticks == [(1, 3), (2, 3), (3, 3)]
    assert out.is_file()


def test_contact_sheet_command_shows_progress(tmp_path, monkeypatch):
    def fake_render(ref, out, on_progress=None, **kw):
        for row in range(1, 26):
            on_progress(row, 25)
        return out

    monkeypatch.setattr("dsmix_cli.contact_sheet.render_contact_sheet", fake_render)
    res = CliRunner().invoke(app, ["contact-sheet", "--ref", str(_ref(tmp_path / "r.png")),
                                   "--out", str(tmp_path / "s.png"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    # not a terminal here: the plain progress lines, a start line and the finished phase's summary
    assert "contact-sheet: 0/25" in res.stdout and "contact-sheet: 25/25 type in" in res.stdout
    assert "contact sheet written to" in res.stdout
