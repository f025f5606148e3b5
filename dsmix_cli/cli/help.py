"""How every command's `--help` reads: a real placeholder (metavar) after each option that takes
a value, and arguments shown by name in the usage line.

Typer writes an option's value as its Python type (`--workers <int range>`, `--refs <path>`) and a
required argument as `{paths}...`. `DsmixCommand` shows what to type instead: the option's own
`metavar` where the command gives one (`--refs DIR`, `--thumb HxW`), else a placeholder from its
type (`N` for integers, `X` for decimals, `PATH`, `TEXT`); arguments by their metavar or upper-case
name, `[NAME]` when optional and `IMAGE...` when repeated (`dsmix score [OPTIONS] IMAGE...`).
"""

from __future__ import annotations

from typer.core import TyperCommand

# Typer's type label (without its angle brackets) -> the placeholder shown instead
_BY_TYPE = {"int": "N", "int range": "N", "float": "X", "float range": "X", "path": "PATH", "str": "TEXT",
            "bool": "BOOL"}


def _placeholder(param, ctx) -> str:
    label = param.display_type(ctx).strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    return _BY_TYPE.get(label, label.upper())


def _argument_name(param, usage: bool) -> str:
    name = param.metavar or param.name.upper()
    if param.nargs != 1:
        name += "..."
    return name if param.required or not usage else f"[{name}]"


class DsmixCommand(TyperCommand):
    """A Typer command whose help shows placeholders, not Python types (see the module text)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = param.name.upper()  # also what "Missing argument 'NAME'" says

    def _fill_metavars(self, ctx) -> None:
        for param in self.get_params(ctx):
            if param.param_type_name == "option" and param.metavar is None and not (param.is_flag or param.count):
                param.metavar = _placeholder(param, ctx)

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_name(param, usage=True))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_help(self, ctx, formatter) -> None:
        self._fill_metavars(ctx)
        super().format_help(ctx, formatter)

    def format_options(self, ctx, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((_argument_name(param, usage=False), record[1]))
            elif param.param_type_name == "option":
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def use_everywhere(app) -> None:
    """Give every command of `app` (and of its sub-groups) the `DsmixCommand` help."""
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:  # Typer's default class
            info.cls = DsmixCommand
    for group in app.registered_groups:
        use_everywhere(group.typer_instance)
