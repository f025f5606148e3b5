"""Pieces shared by the command modules: error handling, option types, small parsers."""

from __future__ import annotations

import functools
import re
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from dsmix_cli import report
from dsmix_cli.defaults import resolve_default
from dsmix_cli.errors import DsmixError

_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = verbose


def handle_errors(fn: Callable) -> Callable:
    """Turn a `DsmixError` into one clear line on stderr and its exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DsmixError as exc:
            if _state["verbose"]:
                traceback.print_exc()
            report.error(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            report.error("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper


def parse_int_list(text: str, lo: int, hi: int, what: str) -> list[int]:
    """Parse `1,10,11`, `1-25` or `1-5,9` into a sorted list of unique ints in [lo, hi].

    Raises:
        DsmixError: malformed text or a value out of range.
    """
    values: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a > b:
                raise DsmixError(f"{what}: range {part!r} runs backwards")
            values.update(range(a, b + 1))
        elif part.isdigit():
            values.add(int(part))
        else:
            raise DsmixError(f"{what}: cannot parse {part!r} (use e.g. 1,10,11 or 1-25)")
    if not values:
        raise DsmixError(f"{what}: empty list")
    bad = sorted(v for v in values if v < lo or v > hi)
    if bad:
        raise DsmixError(f"{what}: {bad} out of range {lo}-{hi}")
    return sorted(values)


# Option types used by several commands (CLI.md: global conventions).
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto = CUDA when available).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data order, crops, splits, initialisation).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write results as JSON to this file ('-' = stdout).")]
RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", help="Dataset folder (default: $DSMIX_DATA/<name>, else ./datasets/<name>).")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Run folder (default: a new runs/<command>/<timestamp>).")]
MaxStepsOpt = Annotated[Optional[int], typer.Option(
    "--max-steps", min=1, help="Stop after this many optimizer steps without changing the schedule.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out exactly; options not given are taken from its config.json.")]
AmpOpt = Annotated[str, typer.Option("--amp", help="Mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16, off.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Data-loading worker processes.")]
AllowOutsideRootOpt = Annotated[bool, typer.Option(
    "--allow-outside-root", help="Accept label entries that resolve outside the dataset folder (absolute "
                                 "paths, '..', symbolic links leading elsewhere); refused by default.")]


def typed_options(ctx: typer.Context, rename: dict[str, str] | None = None) -> set[str]:
    """The parameters the user gave (command line or environment), as config field names
    (`rename` maps a parameter name to its field where they differ)."""
    given = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # by name: Typer may carry its own copy of click's enum
    rename = rename or {}
    return {rename.get(name, name) for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) in given}


def resumed_config(ctx: typer.Context, cfg, rename: dict[str, str] | None = None):
    """With `--resume`: `cfg` with every option the user did not type taken from `RUN/config.json`
    (so `--resume --out RUN` alone continues the run as it was started). Typed options are kept;
    the stage refuses those that differ from the saved run."""
    from dsmix_cli.engine.resume import read_run_config, restore_options

    return restore_options(cfg, read_run_config(cfg.out), typed_options(ctx, rename))


def default_run_dir(command: str) -> Path:
    """`runs/<command>/<timestamp>` under the current folder (a fresh name)."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / command / stamp
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{stamp}-{n}")
    return path


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="A dsmix probe run (default: the last probe or demo run, or $DSMIX_MODEL).")]

# progress phases of the probing commands and their units
UNITS = {"features": "img", "heads": "epoch", "head": "epoch", "scoring": "img"}


def resolved(kind: str, explicit: str | None, to_stderr: bool = False) -> str:
    """The value of a chain-of-defaults option, saying where it came from unless given explicitly."""
    r = resolve_default(kind, explicit)
    if r.source != "option":
        where = "recorded default" if r.source == "recorded" else r.source.replace("env:", "$")
        text = f"{kind.replace('_', ' ')}: {r.value} ({where})"
        if to_stderr:
            report.err_console.print(text, markup=False)
        else:
            report.info(text)
    return r.value


def is_stdout(path) -> bool:
    return path is not None and str(path) == "-"


def quiet_if_stdout(*paths) -> bool:
    """With `--json -` (or `--csv -`) stdout carries the data: no progress or info lines there."""
    to_stdout = any(is_stdout(p) for p in paths)
    if to_stdout:
        report.set_quiet(True)
    return to_stdout


_UNITS = {"features": "img", "heads": "epoch", "head": "epoch", "scoring": "img"}


def counter(bars: report.Bars, phase: str, total: int):
    """A callback adding n finished items to a progress phase of `total` items."""
    done = [0]
    bars(phase, 0, total)  # start the clock now, so the rate is right

    def tick(n: int) -> None:
        done[0] += n
        bars(phase, done[0], total)

    return tick
