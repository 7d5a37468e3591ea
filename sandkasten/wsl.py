"""``sandkasten-wsl``: start, check and stop the daemon inside WSL2 from Windows."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("sandkasten-wsl: not available in this build yet")
