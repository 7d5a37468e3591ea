"""``python -m imgbuilder`` runs the ``imgbuilder`` command."""

from imgbuilder.cli import main

main()
