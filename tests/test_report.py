"""The report helpers: lazily opened per-phase progress bars, tables that keep their title."""

from __future__ import annotations

import pytest

from dsmix_cli import report


def test_bars_open_one_bar_per_phase_on_first_use_and_close_them(capsys, monkeypatch):
    monkeypatch.setitem(report._state, "quiet", False)
    with report.Bars({"feat": "img"}) as bars:
        assert bars.bars == {}
        bars("features", 0, 4)
        bars("features", 4, 4)
        bars("heads", 10, 10, loss=0.5)
        assert set(bars.bars) == {"features", "heads"}
        assert bars.bars["features"].unit == "img" and bars.bars["heads"].unit == "it"
        assert bars.bars["heads"].fields == {"loss": 0.5}
    out = capsys.readouterr().out  # not a terminal: plain lines, the last one at completion
    assert "features: 0/4" in out and "features: 4/4" in out and "heads: 10/10" in out and "loss=0.5000" in out
    assert out.count("features: 0/4") == 1  # no duplicate start line


def test_bars_close_on_error(monkeypatch):
    closed = []
    monkeypatch.setattr(report.ProgressReporter, "__exit__", lambda self, *exc: closed.append(self.description))
    with pytest.raises(RuntimeError):
        with report.Bars() as bars:
            bars("a", 1, 2)
            raise RuntimeError("boom")
    assert closed == ["a"]


def test_table_title_is_not_wrapped(capsys):
    title = "a fairly long title that is wider than the table"
    report.table(title, ["x", "y"], [(1, 2.0)])
    assert title in capsys.readouterr().out
