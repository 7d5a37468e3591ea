"""A stand-in ``wsl`` executable for testing ``sandkasten-wsl`` off Windows.

It records each call's arguments (JSON lines in ``$FAKE_WSL_LOG``) and answers like
wsl.exe: ``--list --quiet`` in UTF-16LE with CRLF, "no distribution" for an unknown
``-d NAME``, and after ``--`` runs a tiny shell stand-in: ``command -v BIN`` (found when BIN
is in ``$FAKE_WSL_BINARIES``), ``cat PATH`` (from ``$FAKE_WSL_FILES``, a JSON object), and
anything else (e.g. ``sudo sandkasten daemon -d``) exits ``$FAKE_WSL_EXIT`` (default 0).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = r'''
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_WSL_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
distros = [d for d in os.environ.get("FAKE_WSL_DISTROS", "Ubuntu-22.04").split(",") if d]
out = sys.stdout.buffer
if args[:2] in (["--list", "--quiet"], ["-l", "-q"]):
    out.write("".join(d + "\r\n" for d in distros).encode("utf-16-le"))
    sys.exit(0)
if args[:1] == ["-d"]:
    if args[1].lower() not in [d.lower() for d in distros]:
        out.write("There is no distribution with the supplied name.\r\n".encode("utf-16-le"))
        sys.exit(1)
    args = args[2:]
elif not distros:
    out.write("Windows Subsystem for Linux has no installed distributions.\r\n"
              .encode("utf-16-le"))
    sys.exit(1)
if args[:1] != ["--"]:
    sys.exit(2)
cmd = args[1:]
if cmd[:2] == ["command", "-v"]:
    bins = os.environ.get("FAKE_WSL_BINARIES", "sandkasten").split(",")
    if cmd[2] in bins or (cmd[2].startswith("/") and os.path.basename(cmd[2]) in bins):
        out.write((cmd[2] if cmd[2].startswith("/") else "/usr/local/bin/" + cmd[2]).encode()
                  + b"\n")
        sys.exit(0)
    sys.exit(1)
if cmd[:1] == ["cat"]:
    files = json.loads(os.environ.get("FAKE_WSL_FILES", "{}"))
    if cmd[1] in files:
        out.write(files[cmd[1]].encode())
        sys.exit(0)
    sys.stderr.write("cat: " + cmd[1] + ": No such file or directory\n")
    sys.exit(1)
sys.exit(int(os.environ.get("FAKE_WSL_EXIT", "0")))
'''


def install_fake_wsl(bin_dir: Path) -> Path:
    """Write the stand-in as ``bin_dir/wsl`` (and ``wsl.exe``) and return the ``wsl`` path."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "wsl"
    path.write_text(f"#!{sys.executable}\n{SCRIPT}")
    path.chmod(0o755)
    exe = bin_dir / "wsl.exe"
    if not exe.exists():
        os.symlink(path, exe)
    return path
