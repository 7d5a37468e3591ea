"""The ``sandkasten`` command: one typer app per command group.

``sandkasten --config FILE`` with no command runs the daemon in the foreground, as the
seed guide shows; ``sandkasten image …`` is imgbuilder's image app mounted as a group.
"""

from __future__ import annotations

import typer

from imgbuilder.cli import image_app

app = typer.Typer(
    name="sandkasten",
    help="Self-hosted sandbox runtime for AI agents.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(image_app, name="image", help="Pull, list and manage images.")

from sandkasten.cli import daemon as _daemon  # noqa: E402 (registers on ``app``)

_daemon.register(app)

from sandkasten.cli import ops  # noqa: E402 (registers init, doctor, security, mcp)

ops.register(app)


def main() -> None:
    app()
