"""`dsmix data list` and `dsmix data check` (to be filled in)."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Datasets the tool knows, and checks of a dataset folder.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
