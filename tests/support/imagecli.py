"""Run the real ``imgbuilder`` command in a subprocess, as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def imgbuilder(*args: str | Path, data_dir: Path, stdin: bytes | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m imgbuilder ARGS --data-dir DATA_DIR``; output as text."""
    full_env = dict(os.environ)
    full_env.pop("SANDKASTEN_DATA_DIR", None)
    full_env.update(env or {})
    argv = [sys.executable, "-m", "imgbuilder", *map(str, args)]
    if args and args[0] not in ("umount",):
        argv += ["--data-dir", str(data_dir)]
    proc = subprocess.run(argv, input=stdin, capture_output=True, env=full_env, timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Non-zero exit, stderr is ``error: …`` (+ optional ``hint: …``), no traceback."""
    assert proc.returncode != 0, proc
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert len(lines) <= 2 and all(x.startswith(("error: ", "hint: ")) for x in lines), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)
