"""Everything the tool shows a person: progress, tables, messages. The only module beside the
CLI that imports rich.

Engines never print; they take callbacks (`on_progress`) that the CLI builds from here. On a
terminal a command has one live display, with a row per running phase (rate, ETA, running
loss); each finished phase leaves one summary line. When stdout is not a terminal it prints
plain periodic lines instead, so logs stay readable. Messages are word-wrapped to a terminal's
width and left as single lines in logs.
"""

from __future__ import annotations

import sys
import textwrap
import time
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Silence progress and informational messages (errors and results still print)."""
    _state["quiet"] = bool(quiet)


def is_quiet() -> bool:
    return _state["quiet"]


def _say(target: Console, message: str, style: str | None = None) -> None:
    """One message: word-wrapped to the terminal's width (never cut mid-word); in a log or a pipe
    one unwrapped line, so each message stays one line."""
    target.print(message, markup=False, style=style, soft_wrap=not target.is_terminal)


def info(message: str) -> None:
    """An informational line on stdout (suppressed by --quiet)."""
    if not _state["quiet"]:
        _say(console, message)


def warn(message: str) -> None:
    """A warning on stderr."""
    _say(err_console, f"warning: {message}", "yellow")


def error(message: str) -> None:
    """An error line on stderr."""
    _say(err_console, f"error: {message}", "bold red")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.4f}"
    return str(value)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          footer: Sequence[Any] | None = None) -> None:
    """Print a table; floats get four decimals. `footer` is a highlighted last row (e.g. median)."""
    # the table is at least as wide as its title, so the title never wraps
    t = Table(title=title, show_lines=False, title_justify="left", min_width=len(title) if title else None)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(_fmt(v) for v in row))
    if footer is not None:
        t.add_section()
        t.add_row(*(_fmt(v) for v in footer), style="bold")
    console.print(t)


def _clock(seconds: float) -> str:
    """0:00:12-style elapsed time."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def blocks(entries: Iterable[tuple[str, Sequence[tuple[str, str]]]]) -> None:
    """Print records as blocks: a bold heading line, then indented `key  value` lines whose values
    wrap between words under themselves. Fits any width (80 columns included), unlike a wide table.

    Args:
        entries: (heading, [(key, value), ...]) per block; a blank line follows each block.
    """
    width = max(console.width, 40)
    for heading, fields in entries:
        console.print(heading, markup=False, style="bold", soft_wrap=True)
        key_w = max((len(k) for k, _ in fields), default=0)
        indent = 2 + key_w + 2
        for key, value in fields:
            lines = textwrap.wrap(str(value), width=width - indent, break_on_hyphens=False) or [""]
            console.print(f"  {key.ljust(key_w)}  {lines[0]}", markup=False, soft_wrap=True, highlight=False)
            for line in lines[1:]:
                console.print(" " * indent + line, markup=False, soft_wrap=True)
        console.print()


BAR_WIDTH = 20


class _LiveDisplay:
    """The one live display of a command: a rich Progress shared by every open phase.

    It starts with the first phase and stops (leaving nothing behind) when the last one closes.
    A finished phase leaves its task and is printed once, as one line above the display, so
    finished bars never pile up or get re-listed when the command ends.
    """

    progress: Progress | None = None
    users = 0

    @classmethod
    def open(cls) -> Progress:
        if cls.progress is None:
            cls.progress = Progress(
                TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=BAR_WIDTH),
                MofNCompleteColumn(table_column=Column(no_wrap=True)),
                TaskProgressColumn(table_column=Column(no_wrap=True)),
                TextColumn("{task.fields[rate]}", table_column=Column(no_wrap=True)),
                TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
                TextColumn("eta", table_column=Column(no_wrap=True)),
                TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
                TextColumn("{task.fields[extra]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
                console=console,
                transient=True,
            )
            cls.progress.start()
        cls.users += 1
        return cls.progress

    @classmethod
    def close(cls) -> None:
        cls.users -= 1
        if cls.users <= 0 and cls.progress is not None:
            cls.progress.stop()
            cls.progress, cls.users = None, 0


class ProgressReporter:
    """A progress display for one long task (a phase).

    Use as a context manager; call `update(completed, **fields)` or `advance(n, **fields)`.
    Fields (e.g. `loss=0.12`) are shown beside the bar, or in the plain log lines. On a terminal
    every open phase is a row of the command's single live display; when a phase reaches its
    total (or closes early) its row goes and one summary line stays:
    `qep: 30/30 step in 0:01:34, 0.3 step/s  loss=1.2345`. When stdout is not a terminal, plain
    lines are printed instead: one at the start, one every `plain_every_s` seconds, the summary
    at the end.
    """

    def __init__(self, description: str, total: int | None, unit: str = "it",
                 plain_every_s: float = 10.0):
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self.finished = False
        self._progress: Progress | None = None
        self._task = None
        self._plain = False
        self._plain_every = plain_every_s
        self._last_plain = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> "ProgressReporter":
        if _state["quiet"]:
            return self
        if console.is_terminal:
            self._progress = _LiveDisplay.open()
            self._task = self._progress.add_task(self.description, total=self.total, rate="", extra="")
        else:
            self._plain = True
            console.print(f"{self.description}: 0/{self.total if self.total is not None else '?'}",
                          markup=False, soft_wrap=True)
            self._last_plain = time.monotonic()  # the next plain line comes after the interval (or at the end)
        return self

    def _extra(self) -> str:
        return "  ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())

    def _rate(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return f"{self.completed / elapsed:.1f} {self.unit}/s"

    def _fit(self, extra: str, rate: str) -> str:
        """The running fields cut to what the terminal leaves beside the bar (they give way first)."""
        tasks = self._progress.tasks if self._progress is not None else []
        name = max((len(t.description) for t in tasks), default=len(self.description))
        counts = 2 * len(str(self.total if self.total is not None else self.completed)) + 1
        used = name + BAR_WIDTH + counts + 4 + len(rate) + 7 + 3 + 7 + 8  # the columns and the gaps between them
        room = console.width - used
        if len(extra) <= room:
            return extra
        return extra[: max(room - 1, 0)] + "…" if room > 1 else ""

    def summary(self) -> str:
        """The phase in one line: `name: done/total unit in 0:00:12, 0.7 unit/s  field=value`."""
        total = self.total if self.total is not None else "?"
        stopped = "" if self.total is None or self.completed >= self.total else " (stopped)"
        line = (f"{self.description}: {self.completed}/{total} {self.unit}{stopped} in "
                f"{_clock(time.monotonic() - self._start)}, {self._rate()}")
        extra = self._extra()
        return f"{line}  {extra}" if extra else line

    def update(self, completed: int, **fields: Any) -> None:
        if self.finished:
            return
        self.completed = completed
        self.fields.update(fields)
        if _state["quiet"]:
            return
        done = self.total is not None and completed >= self.total
        if self._progress is not None:
            rate = self._rate()
            self._progress.update(self._task, completed=completed, rate=rate, extra=self._fit(self._extra(), rate))
            if done:
                self._finish()
            return
        if not self._plain:
            return
        now = time.monotonic()
        if done:
            self._finish()
        elif now - self._last_plain >= self._plain_every:
            self._last_plain = now
            total = self.total if self.total is not None else "?"
            console.print(f"{self.description}: {completed}/{total}  {self._rate()}  {self._extra()}".rstrip(),
                          markup=False, soft_wrap=True)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def _finish(self) -> None:
        """Replace the phase's live row (or its plain lines) by its one summary line."""
        if self.finished:
            return
        self.finished = True
        if self._progress is not None:
            self._progress.remove_task(self._task)
            self._progress.console.print(self.summary(), markup=False, soft_wrap=False, style="dim")
            self._progress = None
            _LiveDisplay.close()
        elif self._plain:
            console.print(self.summary(), markup=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if not _state["quiet"]:
            self._finish()


class Bars:
    """Progress bars opened on demand, one per phase, for an engine's progress callback.

    Call `bars(phase, done, total, **fields)`; the first call of a phase opens its bar (the
    total is often known only once the engine has counted its data). All phases share the
    command's one live display; a phase that reaches its total becomes one summary line at
    once. Use as a context manager so every phase is closed, in the order it opened, also on
    an error.

    Args:
        units: unit of each phase, matched by prefix (e.g. `{"features": "img"}`); default "it".
    """

    def __init__(self, units: dict[str, str] | None = None):
        self.bars: dict[str, ProgressReporter] = {}
        self.units = units or {}

    def __call__(self, phase: str, done: int, total: int | None, **fields: Any) -> None:
        if phase not in self.bars:
            unit = next((u for k, u in self.units.items() if phase.startswith(k)), "it")
            bar = progress(phase, total=total, unit=unit)
            bar.__enter__()
            self.bars[phase] = bar
        self.bars[phase].update(done, **fields)

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        for bar in self.bars.values():
            bar.__exit__(*exc)


def progress(description: str, total: int | None, unit: str = "it") -> ProgressReporter:
    """Shorthand for `ProgressReporter(description, total, unit)`."""
    return ProgressReporter(description, total, unit)


def flush() -> None:
    sys.stdout.flush()
