"""Everything the tool shows a person: progress, tables, messages. The only module beside the
CLI that imports rich.

Engines never print; they take callbacks (`on_progress`) that the CLI builds from here. On a
terminal long work shows a rich progress bar (rate, ETA, running loss); when stdout is not a
terminal it prints plain periodic lines instead, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import sys
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
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Silence progress and informational messages (errors and results still print)."""
    _state["quiet"] = bool(quiet)


def is_quiet() -> bool:
    return _state["quiet"]


def info(message: str) -> None:
    """An informational line on stdout (suppressed by --quiet)."""
    if not _state["quiet"]:
        console.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr."""
    err_console.print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)


def error(message: str) -> None:
    """An error line on stderr."""
    err_console.print(f"error: {message}", markup=False, style="bold red", soft_wrap=True)


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


class ProgressReporter:
    """A progress display for one long task.

    Use as a context manager; call `update(completed, **fields)` or `advance(n, **fields)`.
    Fields (e.g. `loss=0.12`) are shown beside the bar, or in the plain log lines.
    """

    def __init__(self, description: str, total: int | None, unit: str = "it",
                 plain_every_s: float = 10.0):
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0
        self.fields: dict[str, Any] = {}
        self._rich = None
        self._task = None
        self._plain_every = plain_every_s
        self._last_plain = 0.0
        self._start = time.monotonic()

    def __enter__(self) -> "ProgressReporter":
        if _state["quiet"]:
            return self
        if console.is_terminal:
            self._rich = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=console,
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total, rate="", extra="")
        else:
            console.print(f"{self.description}: 0/{self.total if self.total is not None else '?'}",
                          markup=False)
            self._last_plain = time.monotonic()  # the next plain line comes after the interval (or at the end)
        return self

    def _extra(self) -> str:
        return "  ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())

    def update(self, completed: int, **fields: Any) -> None:
        self.completed = completed
        self.fields.update(fields)
        if _state["quiet"]:
            return
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = f"{self.completed / elapsed:.1f} {self.unit}/s"
        if self._rich is not None:
            self._rich.update(self._task, completed=completed, rate=rate, extra=self._extra())
            return
        now = time.monotonic()
        done = self.total is not None and completed >= self.total
        if now - self._last_plain >= self._plain_every or done:
            self._last_plain = now
            total = self.total if self.total is not None else "?"
            console.print(f"{self.description}: {completed}/{total}  {rate}  {self._extra()}".rstrip(),
                          markup=False)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(self.completed + n, **fields)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)


class Bars:
    """Progress bars opened on demand, one per phase, for an engine's progress callback.

    Call `bars(phase, done, total, **fields)`; the first call of a phase opens its bar (the
    total is often known only once the engine has counted its data). Use as a context manager
    so every bar is closed, also on an error.

    Args:
        units: unit of each phase, matched by prefix (e.g. `{"features": "img"}`); default "it".
    """

    def __init__(self, units: dict[str, str] | None = None):
        self.stack = contextlib.ExitStack()
        self.bars: dict[str, ProgressReporter] = {}
        self.units = units or {}

    def __call__(self, phase: str, done: int, total: int | None, **fields: Any) -> None:
        if phase not in self.bars:
            unit = next((u for k, u in self.units.items() if phase.startswith(k)), "it")
            self.bars[phase] = self.stack.enter_context(progress(phase, total=total, unit=unit))
        self.bars[phase].update(done, **fields)

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.stack.__exit__(*exc)


def progress(description: str, total: int | None, unit: str = "it") -> ProgressReporter:
    """Shorthand for `ProgressReporter(description, total, unit)`."""
    return ProgressReporter(description, total, unit)


def flush() -> None:
    sys.stdout.flush()
