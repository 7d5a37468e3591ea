"""``python -m sandkasten.cli``: the same as the ``sandkasten`` command (used by ``daemon -d``)."""

from sandkasten.cli import main

main()
