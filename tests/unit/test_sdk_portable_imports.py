"""The SDK and sandkasten-wsl install and import on Windows: importing them loads no
Linux-only module (checked by refusing those imports in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

LINUX_ONLY = ["fcntl", "termios", "pty", "resource", "grp", "pwd", "pyseccomp", "pyroute2",
              "sandkasten.runtime", "sandkasten.api", "sandkasten.session", "runner"]

BLOCKER = """
import sys
BLOCKED = {blocked!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is Linux-only and must not be imported here")
        return None
sys.meta_path.insert(0, Refuse())
for mod in {modules!r}:
    __import__(mod)
import sandkasten
assert sandkasten.SandboxClient.__module__ == "sandkasten.sdk._client"
print("ok")
"""


@pytest.mark.parametrize("modules", [
    ["sandkasten"],
    ["sandkasten.sdk", "sandkasten.sdk.tools"],
    ["sandkasten.wsl"],
    ["sandkasten.mcp"],
])
def test_imports_load_nothing_linux_only(modules: list[str]) -> None:
    code = BLOCKER.format(blocked=LINUX_ONLY, modules=modules)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_importing_sandkasten_is_light() -> None:
    code = "import sys, sandkasten; print(sorted(m for m in sys.modules if m.startswith(" \
           "('httpx', 'fastapi', 'typer', 'sandkasten.'))))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert res.stdout.strip() == "[]"
