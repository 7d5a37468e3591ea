"""`sudo ./scripts/quickstart.sh`, the README's first command, end to end: deps check, init
(keeping a prepared config), daemon start, the curl flow, and the daemon left running.
Like the script itself, it links the commands into /usr/local/bin where none exist."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import cleanup_data_dir, clone_store, image_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
__all__ = ["image_store"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_quickstart(image_store: Path, tmp_path: Path) -> None:
    data, cfg = tmp_path / "data", tmp_path / "sandkasten.yaml"
    clone_store(image_store, data)  # the python image is there: no 1-minute bootstrap
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDKASTEN_")}
    sk = [str(REPO / ".venv" / "bin" / "sandkasten")]
    init = subprocess.run([*sk, "init", "--config", str(cfg), "--data-dir", str(data),
                           "--listen", f"127.0.0.1:{port}", "--no-image"], env=env,
                          capture_output=True, text=True, check=False)
    assert init.returncode == 0, init.stderr
    env["SANDKASTEN_CONFIG"] = str(cfg)
    links = [Path("/usr/local/bin") / c for c in ("sandkasten", "imgbuilder", "sandkasten-wsl")]
    ours = [link for link in links if not link.is_symlink() and not link.exists()]
    try:
        res = subprocess.run([str(REPO / "scripts" / "quickstart.sh")], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=600, check=False)
        out = res.stdout
        assert res.returncode == 0, out + res.stderr
        assert "init: keeping the existing config" in out
        assert "image 'python' is already in the store" in out
        assert 'GET /healthz -> {"status":"ok"}' in out
        assert '"status": "running"' in out and '"output": "4\\n"' in out
        assert 'read back: print("Hello from file!")' in out
        assert '"output": "Hello from file!\\n"' in out
        assert "Sandkasten works. The daemon keeps running" in out
        ps = subprocess.run([*sk, "ps", "--config", str(cfg)], env=env, capture_output=True,
                            text=True, check=False)
        assert ps.returncode == 0, ps.stderr  # still running, no session left behind
    finally:
        stop = subprocess.run([*sk, "stop", "--config", str(cfg)], env=env,
                              capture_output=True, text=True, check=False)
        cleanup_data_dir(data)
        for link in ours:  # links made by this test point into this checkout: take them back
            if link.is_symlink() and str(REPO) in os.readlink(link):
                link.unlink()
    assert stop.returncode == 0, stop.stderr
