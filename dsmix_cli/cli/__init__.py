"""The `dsmix` command line (Typer). Each command module registers its commands on `app`.

Only this package imports Typer. A command body is: options -> config -> one engine call ->
one report call.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsmix_cli import __version__, report
from dsmix_cli.cli import common
from dsmix_cli.cli.help import use_everywhere

HELP = ("DSMix: quality-aware pre-training and no-reference image quality assessment.\n\n"
        "New here: `dsmix demo` runs the whole pipeline at toy scale on CPU, on images shipped with the "
        "package. Every command has --help with an example.\n\n"
        "\b\nExample: dsmix demo")

app = typer.Typer(
    name="dsmix",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dsmix {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info lines.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show tracebacks for errors.")] = False,
) -> None:
    report.set_quiet(quiet)
    common.set_verbose(verbose)


def _register() -> None:
    # Each module adds its commands; the import order is the order in `dsmix --help`.
    from dsmix_cli.cli import data as _data

    for module in (_data,):
        module.register(app)
    import importlib

    for name in ("synthesize", "dsm", "qep", "probe", "score"):
        try:
            module = importlib.import_module(f"dsmix_cli.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"dsmix_cli.cli.{name}":
                raise
            continue
        module.register(app)


def _short_help(doc: str | None) -> str | None:
    """The first sentence of a docstring, for the command list of `dsmix --help`."""
    if not doc:
        return None
    para = " ".join(doc.strip().split("\n\n")[0].split())
    end = para.find(". ")
    return para if end < 0 else para[: end + 1]


def _whole_summaries(typer_app: typer.Typer) -> None:
    """Click would cut each summary of a command list at 45 characters; give every command (also
    in the `data` group) its whole first sentence."""
    for info in typer_app.registered_commands:
        if info.short_help is None:
            info.short_help = _short_help(info.help or (info.callback.__doc__ if info.callback else None))
    for group in typer_app.registered_groups:
        _whole_summaries(group.typer_instance)


_register()
_whole_summaries(app)
use_everywhere(app)  # placeholders instead of Python types in every help page


def main() -> None:
    """Console-script entry point."""
    app()
