"""`sandkasten init` prepares the default image: pulled when the registry answers, built
from Debian packages (mmdebstrap) when it does not, kept when it is already there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ocibuild import directory, file, push_image
from tests.support.registry import LocalRegistry


def sk(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from sandkasten.cli import main; main()", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDKASTEN_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, check=False,
                          env=env)


def images(data: Path) -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text()) for p in (data / "images").glob("*.json")}


def test_init_pulls_when_the_registry_answers(registry: LocalRegistry, tmp_path: Path) -> None:
    pushed = push_image(registry, "sdk/tiny", "1", [[directory("bin"),
                                                     file("bin/hello", b"hi\n", 0o755)]])
    cfg, data = tmp_path / "s.yaml", tmp_path / "data"
    ref = f"{registry.host}/sdk/tiny:1"
    res = sk("init", "--config", str(cfg), "--data-dir", str(data), "--image", "tiny",
             "--image-ref", ref)
    assert res.returncode == 0, res.stderr
    assert f"init: pulling {ref} as 'tiny' from {registry.host}" in res.stdout
    assert f"init: default image 'tiny': pulled {ref}" in res.stdout
    rec = images(data)["tiny"]
    assert rec["manifest_digest"] == pushed.manifest_digest and rec["source"] == "registry"
    again = sk("init", "--config", str(cfg), "--image-ref", ref)
    assert again.returncode == 0 and "default image 'tiny': already there" in again.stdout


@pytest.mark.slow
def test_init_builds_from_debian_packages_without_a_registry(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mmdebstrap needs root to set file owners")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: refused
        cfg, data = tmp_path / "s.yaml", tmp_path / "data"
        res = sk("init", "--config", str(cfg), "--data-dir", str(data),
                 "--image-ref", f"{closed}/python:3.12-slim")
    assert res.returncode == 0, res.stderr
    assert f"registry {closed} is not reachable; building 'python'" in res.stdout
    assert "default image 'python': built from Debian packages (mmdebstrap)" in res.stdout
    rec = images(data)["python"]
    assert rec["source"] == "bootstrap"
    layer = data / "layers" / str(rec["layers"][0]["diff_id"]).split(":")[-1]  # type: ignore[index]
    assert (layer / "usr" / "bin" / "python3").exists() or \
        (layer / "usr" / "bin" / "python3").is_symlink()
