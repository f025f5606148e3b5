"""Pieces shared by the command modules: error handling, option types, small parsers."""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import traceback
import typing
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from dsmix_cli import report
from dsmix_cli.defaults import resolve_default
from dsmix_cli.errors import DsmixError
from dsmix_cli.paths import path_text

_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    _state["verbose"] = verbose


MaxPixelsOpt = Annotated[Optional[int], typer.Option(
    "--max-pixels", min=0, show_default=False, metavar="N",
    help="Refuse images of more than this many pixels (width x height) before decoding them, as "
         "decompression bombs; 0 = no limit. Default: 64000000 (8000x8000), or $DSMIX_MAX_PIXELS.")]


SkipBadOpt = Annotated[bool, typer.Option(
    "--skip-bad", help="An image that cannot be decoded during training is replaced by the next readable "
                       "sample (the same one on every run, so --resume stays exact) and named at the end, exit "
                       "code 1. Without it the run stops there (exit 1; fix the file, then --resume).")]


def finish_with_skipped(lines: list[str], shown: int = 20) -> None:
    """After a run with --skip-bad: name every skipped input on stderr and exit 1 (if any)."""
    if not lines:
        return
    for line in lines[:shown]:
        report.warn(f"skipped: {line}")
    if len(lines) > shown:
        report.warn(f"... and {len(lines) - shown} more")
    report.error(f"{len(lines)} unreadable input(s) were replaced by readable ones (--skip-bad); the run "
                 "finished without them")
    raise typer.Exit(code=1)


def _option_name(fn: Callable, param: str) -> str:
    """The first flag of a command's option (`--csv` for `csv_file`), for messages."""
    hint = typing.get_type_hints(fn, include_extras=True).get(param)
    for meta in getattr(hint, "__metadata__", ()):
        decls = [d for d in getattr(meta, "param_decls", ()) or () if d.startswith("--")]
        if decls:
            return decls[0].split("/")[0]
    return "--" + param.replace("_", "-")


def _report_os_error(exc: OSError) -> None:
    where = exc.filename if exc.filename is not None else None
    text = exc.strerror or str(exc)
    report.error(f"{path_text(where)}: {text}" if where is not None else text)


def handle_errors(fn: Callable | None = None, *, images: bool = False, out_files: tuple[str, ...] = (),
                  out_dirs: tuple[str, ...] = ()) -> Callable:
    """Wrap a command: one clear line on stderr and the exit code for a `DsmixError` (no
    traceback; `--verbose` adds it), and the checks every command shares.

    Args:
        fn: the command (also usable as `@handle_errors` or `@handle_errors(...)`).
        images: the command reads images: it gains `--max-pixels` (see `imageio`).
        out_files: parameters naming output files (`--csv`, `--json`): checked before the
            command runs (not a folder, a folder that can be written), so a long run does not
            fail at its end (exit 2).
        out_dirs: parameters naming output folders (`--out`): checked the same way.

    An `OSError` that reaches here (a full disk or a vanished folder during the work) is one
    line naming the file, exit 1; Ctrl-C is "interrupted", exit 130.
    """
    if fn is None:
        return functools.partial(handle_errors, images=images, out_files=out_files, out_dirs=out_dirs)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        limit = kwargs.pop("max_pixels", None) if images else None
        if limit is None:
            return _run(*args, **kwargs)
        from dsmix_cli.imageio import MAX_PIXELS_ENV, set_max_pixels

        before = os.environ.get(MAX_PIXELS_ENV)
        try:
            set_max_pixels(limit)  # through the environment, so worker processes see it too
            return _run(*args, **kwargs)
        finally:  # the limit is this command's (commands also run in one process, e.g. in tests)
            if before is None:
                os.environ.pop(MAX_PIXELS_ENV, None)
            else:
                os.environ[MAX_PIXELS_ENV] = before

    def _run(*args, **kwargs):
        try:
            if out_files or out_dirs:
                from dsmix_cli.fileio import check_output_dir, check_output_file

                for name in out_files:
                    check_output_file(kwargs.get(name), _option_name(fn, name))
                for name in out_dirs:
                    check_output_dir(kwargs.get(name), _option_name(fn, name))
            return fn(*args, **kwargs)
        except DsmixError as exc:
            if _state["verbose"]:
                traceback.print_exc()
                if getattr(exc, "worker_traceback", None):
                    print(exc.worker_traceback, file=sys.stderr)
            report.error(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except OSError as exc:
            if _state["verbose"]:
                traceback.print_exc()
            _report_os_error(exc)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            report.error("interrupted")
            raise typer.Exit(code=130) from None

    if images:
        sig = inspect.signature(fn, eval_str=True)
        extra = inspect.Parameter("max_pixels", inspect.Parameter.KEYWORD_ONLY, default=None,
                                  annotation=MaxPixelsOpt)
        params = list(sig.parameters.values())
        if "max_pixels" not in sig.parameters:
            params.append(extra)
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {**typing.get_type_hints(fn, include_extras=True), "max_pixels": MaxPixelsOpt}
        del wrapper.__wrapped__  # typer must see the new signature, not the command's own
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


# Option types used by several commands (the same name, meaning and help text everywhere).
DeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (auto = CUDA when available).")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", metavar="N", help="Random seed of the run: data order, crops and flips, random initial weights "
                                "and every other random draw.")]
JsonOpt = Annotated[Optional[Path], typer.Option(
    "--json", metavar="FILE", help="Write results as JSON to this file ('-' = stdout).")]
RootOpt = Annotated[Optional[Path], typer.Option(
    "--root", metavar="DIR", help="Dataset folder (default: $DSMIX_DATA/<name>, else ./datasets/<name>).")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", metavar="DIR", help="Run folder (default: a new runs/<command>/<timestamp>).")]
MaxStepsOpt = Annotated[Optional[int], typer.Option(
    "--max-steps", min=1, metavar="N", help="Stop after this many optimizer steps without changing the schedule.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out exactly; options not given are taken from its config.json.")]
AmpOpt = Annotated[str, typer.Option(
    "--amp", metavar="MODE", help="Mixed precision: auto (bf16 on CUDA, off on CPU), bf16, fp16, off.")]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, metavar="N", help="Data-loading worker processes.")]
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
    "--model", metavar="RUN", help="A dsmix probe run (default: the last probe or demo run, or $DSMIX_MODEL).")]

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


def counter(bars: report.Bars, phase: str, total: int):
    """A callback adding n finished items to a progress phase of `total` items."""
    done = [0]
    bars(phase, 0, total)  # start the clock now, so the rate is right

    def tick(n: int) -> None:
        done[0] += n
        bars(phase, done[0], total)

    return tick
