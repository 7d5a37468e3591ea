"""Run the pull command as users do: a separate process, its stderr and exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PULL = [sys.executable, "-c",
        "import typer; from imgbuilder.pull_cli import pull_command; typer.run(pull_command)"]
ROOT = Path(__file__).resolve().parents[2]


def pull_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment with no Docker config and no registry credentials of the host."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SANDKASTEN_REGISTRY_AUTH", "DOCKER_CONFIG", "SANDKASTEN_CONFIG",
                        "SANDKASTEN_DATA_DIR")}
    env["DOCKER_CONFIG"] = str(tmp / "no-docker-config")
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_pull(args: list[str], tmp: Path, *, stdin: str = "", timeout: float = 120,
             **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PULL, *args], input=stdin, capture_output=True, text=True,
                          env=pull_env(tmp, **env), timeout=timeout, cwd=ROOT)


def start_pull(args: list[str], tmp: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*PULL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=pull_env(tmp, **env), cwd=ROOT)
