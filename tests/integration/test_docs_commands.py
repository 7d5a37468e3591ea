"""Every fenced block marked ``tested`` in README.md and docs/*.md runs against a real
daemon, as printed.

- ```` ```bash tested ````: the page's bash blocks run in order in one ``bash -euo
  pipefail`` (so ``SESSION_ID=...`` carries from one block to the next); the run must
  succeed and no response may be an error (``"code":`` in the output).
- ```` ```python tested ````: each runs on its own; for every ``print(...)  # X`` line, X
  must appear in the output (the docs show what the code prints).
- ```` ```powershell tested ````: the commands (``sandkasten-wsl ...``) run with a stand-in
  ``wsl`` on PATH (tests/support/wsl.py) that answers like wsl.exe.

The only rewrite: ``localhost:8080`` becomes the test daemon's address (the daemon runs on
a free port; its API key is the documentation's ``sk-sandbox-test``). ``SANDKASTEN_CONFIG``
names a config for that daemon, as ``sandkasten init`` would have written it. ``sudo`` is
a pass-through where the machine has none (the tests run as root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import sdk as fx
from tests.support.sdk import Daemon
from tests.support.wsl import install_fake_wsl

pytestmark = pytest.mark.integration
image_store = fx.image_store
sk_daemon = fx.sk_daemon

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>\w+)\s+tested\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str


def marked_blocks(path: Path) -> list[Block]:
    """The ``tested`` fenced blocks of one page, dedented (blocks may sit in lists)."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, start, body = m.group("indent"), i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start}: unclosed fence")
        blocks.append(Block(path.name, start, m.group("lang"), "\n".join(body) + "\n"))
        i += 1
    return blocks


def test_the_extractor_finds_indented_and_plain_blocks(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("```bash tested\necho a\n```\n```bash\nnot tested\n```\n"
                    "1. step\n\n   ```bash tested\n   echo b\n   ```\n")
    assert [(b.line, b.code) for b in marked_blocks(page)] == [(1, "echo a\n"), (9, "echo b\n")]


def test_the_pages_that_promise_commands_have_marked_blocks() -> None:
    langs = {p.name: {b.lang for b in marked_blocks(p)} for p in PAGES}
    assert {"bash", "python"} <= langs["README.md"]
    assert {"bash", "python", "powershell"} <= langs["windows.md"]
    assert {"bash", "python"} <= langs["quickstart.md"]
    assert "python" in langs["sdk.md"]


@pytest.fixture(scope="module")
def env(sk_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    bin_dir = tmp_path_factory.mktemp("docs-bin")
    install_fake_wsl(bin_dir)
    if not shutil.which("sudo"):
        (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
        (bin_dir / "sudo").chmod(0o755)
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SANDKASTEN_", "WSL_"))}
    config = bin_dir / "sandkasten.yaml"  # what `sandkasten init` wrote, for this daemon
    host, _, port = sk_daemon.base_url.removeprefix("http://").rpartition(":")
    config.write_text(f'listen: "{host}:{port}"\napi_key: "{sk_daemon.api_key}"\n'
                      f'data_dir: "{sk_daemon.data_dir}"\ndefault_image: "python"\n')
    config.chmod(0o600)
    e.update(
        SANDKASTEN_CONFIG=str(config),
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), e["PATH"]]),
        SANDKASTEN_DATA_DIR=str(sk_daemon.data_dir),
        SANDKASTEN_URL=sk_daemon.base_url,
        FAKE_WSL_LOG=str(bin_dir / "wsl-calls.jsonl"),
        HOME=str(tmp_path_factory.mktemp("home")),
    )
    return e


def localize(code: str, d: Daemon) -> str:
    host = d.base_url.removeprefix("http://")
    return code.replace("localhost:8080", host).replace("127.0.0.1:8080", host)


def page_ids() -> list[str]:
    return [p.name for p in PAGES if any(b.lang == "bash" for b in marked_blocks(p))]


@pytest.mark.parametrize("page", page_ids())
def test_bash_blocks(page: str, env: dict[str, str], sk_daemon: Daemon, tmp_path: Path) -> None:
    blocks = [b for p in PAGES if p.name == page for b in marked_blocks(p) if b.lang == "bash"]
    script = "".join(f"# --- {b.page}:{b.line}\n{localize(b.code, sk_daemon)}" for b in blocks)
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"{page}: exit {res.returncode}\n{out}"
    assert '"code":' not in res.stdout, f"{page}: an error response\n{out}"


def python_blocks() -> list[Block]:
    return [b for p in PAGES for b in marked_blocks(p) if b.lang == "python"]


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"{b.page}:{b.line}")
def test_python_blocks(block: Block, env: dict[str, str], sk_daemon: Daemon,
                       tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", localize(block.code, sk_daemon)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{block.page}:{block.line}\n{res.stdout}{res.stderr}"
    for line in block.code.splitlines():
        m = re.search(r"print\(.*\)\s+#\s*(.+)$", line)
        if m:
            assert m.group(1).strip() in res.stdout, \
                f"{block.page}:{block.line}: expected {m.group(1)!r} in:\n{res.stdout}"


@pytest.mark.parametrize(
    "block", [b for p in PAGES for b in marked_blocks(p) if b.lang == "powershell"],
    ids=lambda b: f"{b.page}:{b.line}")
def test_powershell_blocks_with_a_stand_in_wsl(block: Block, env: dict[str, str],
                                               tmp_path: Path) -> None:
    commands = [ln.strip() for ln in block.code.splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    assert commands and all(c.startswith("sandkasten-wsl ") for c in commands)
    for cmd in commands:
        res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert res.returncode == 0, f"{block.page}:{block.line}: {cmd}\n{res.stdout}{res.stderr}"
