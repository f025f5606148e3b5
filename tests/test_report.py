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


def _terminal(monkeypatch, width: int):
    """Point the report at a fake terminal of `width` columns; returns its buffer."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=width, highlight=False, color_system=None)
    monkeypatch.setattr(report, "console", term)
    monkeypatch.setitem(report._state, "quiet", False)
    return buf


def test_one_live_display_per_command_and_one_line_per_finished_phase(monkeypatch):
    buf = _terminal(monkeypatch, 80)
    with report.Bars({"features": "img"}) as bars:
        bars("pretrain-dsm", 0, 3)
        first = report._LiveDisplay.progress
        bars("pretrain-dsm", 3, 3, loss=0.25)
        assert report._LiveDisplay.progress is None  # the only phase finished: the display is gone
        bars("qep", 1, 4)
        bars("features", 2, 5)
        live = report._LiveDisplay.progress
        assert live is not None and live is not first and report._LiveDisplay.users == 2
        assert [t.description for t in live.tasks] == ["qep", "features"]  # two rows, one display
        bars("qep", 4, 4)
        assert [t.description for t in live.tasks] == ["features"]  # a finished phase leaves the display
    assert report._LiveDisplay.progress is None and report._LiveDisplay.users == 0
    out = buf.getvalue()
    # each phase is summarised exactly once, in the order it finished (features stopped early, at exit)
    lines = [ln for ln in out.splitlines() if ": " in ln and " in 0:" in ln]
    summaries = [ln[ln.index(name):] for ln in lines for name in ("pretrain-dsm:", "qep:", "features:") if name in ln]
    assert [s.split(":")[0] for s in summaries] == ["pretrain-dsm", "qep", "features"]
    assert "pretrain-dsm: 3/3 it in" in out and "loss=0.2500" in out
    assert "features: 2/5 img (stopped) in" in out


@pytest.mark.parametrize("width", [80, 120])
def test_a_live_row_fits_the_terminal_the_fields_give_way(monkeypatch, width):
    import io

    from rich.console import Console

    _terminal(monkeypatch, width)
    long = {f"field{i}": 1.0 for i in range(12)}
    with report.Bars({"qep": "step"}) as bars:
        bars("qep", 7, 100, **long)
        bars("features", 3, 1000)
        progress = report._LiveDisplay.progress
        rendered = io.StringIO()
        Console(file=rendered, width=width, color_system=None).print(progress.make_tasks_table(progress.tasks))
    rows = rendered.getvalue().splitlines()
    assert len(rows) == 2 and all(len(r) <= width for r in rows)  # one line per phase, nothing wraps
    assert "7/100" in rows[0] and "eta" in rows[0] and "field0=" in rows[0] and rows[0].rstrip().endswith("…")
    assert "3/1000" in rows[1]


@pytest.mark.parametrize("width", [40, 80])
def test_long_messages_wrap_between_words_on_a_terminal(monkeypatch, width):
    buf = _terminal(monkeypatch, width)
    words = [f"w{i}" * (1 + i % 5) for i in range(60)]
    report.info(" ".join(words))
    lines = buf.getvalue().splitlines()
    assert len(lines) > 1 and all(len(ln) <= width for ln in lines)
    assert [w for ln in lines for w in ln.split()] == words  # no word was cut in two


def test_long_messages_stay_one_line_in_a_log(capsys, monkeypatch):
    monkeypatch.setitem(report._state, "quiet", False)
    text = " ".join(["word"] * 60)
    report.info(text)
    report.warn(text)
    cap = capsys.readouterr()
    assert cap.out == text + "\n" and cap.err == f"warning: {text}\n"
