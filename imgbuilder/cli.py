"""The ``imgbuilder`` command and the ``sandkasten image`` group (one implementation)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="imgbuilder",
    help="Build, import and manage Sandkasten images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def main() -> None:
    app()
