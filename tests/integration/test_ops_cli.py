"""`sandkasten init`, `doctor` and `security` as a user runs them (real CLI, real files)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import yaml


def sk(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from sandkasten.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_init_writes_the_seed_config_with_a_random_key(tmp_path: Path) -> None:
    cfg, data = tmp_path / "etc" / "sandkasten.yaml", tmp_path / "data"
    res = sk("init", "--config", str(cfg), "--data-dir", str(data), "--no-image")
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    conf = yaml.safe_load(cfg.read_text())
    assert set(conf) == {"listen", "api_key", "data_dir", "default_image", "defaults"}
    assert conf["listen"] == "127.0.0.1:8080" and conf["default_image"] == "python"
    assert conf["data_dir"] == str(data)
    assert conf["defaults"] == {"cpu_limit": 1.0, "mem_limit_mb": 512, "pids_limit": 256,
                                "network_mode": "none"}
    assert conf["api_key"].startswith("sk-") and len(conf["api_key"]) >= 40
    for sub in ("images", "sessions", "workspaces", "run"):
        assert (data / sub).is_dir()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert not [p for p in cfg.parent.iterdir() if p.name != "sandkasten.yaml"]  # no temp left

    again = sk("init", "--config", str(cfg), "--data-dir", str(data), "--no-image")
    assert again.returncode == 0 and "keeping the existing config" in again.stdout
    assert yaml.safe_load(cfg.read_text())["api_key"] == conf["api_key"]
    forced = sk("init", "--config", str(cfg), "--no-image", "--force",
                "--data-dir", str(data))
    assert forced.returncode == 0
    assert yaml.safe_load(cfg.read_text())["api_key"] != conf["api_key"]


def test_init_refuses_a_windows_drive(tmp_path: Path) -> None:
    res = sk("init", "--config", str(tmp_path / "s.yaml"), "--data-dir", "/mnt/c/sandkasten",
             "--no-image")
    assert res.returncode == 1
    assert res.stderr.startswith("error: /mnt/c/sandkasten is on")
    assert "hint: use a path on the Linux filesystem" in res.stderr
    assert not Path("/mnt/c/sandkasten").exists()


def test_security_on_an_init_config(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    assert sk("init", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
              "--no-image").returncode == 0
    res = sk("security", "--config", str(cfg))
    assert res.returncode == 0, res.stdout
    assert "[ ok ] api key" in res.stdout and "[ ok ] config file    mode 0600" in res.stdout
    assert "[warn] readonly rootfs" in res.stdout
    assert "user namespace auto" in res.stdout
    cfg.chmod(0o644)
    (tmp_path / "d" / "run" / "daemon.log").write_text("x")
    (tmp_path / "d" / "run" / "daemon.log").chmod(0o644)
    res = sk("security", "--config", str(cfg))
    assert res.returncode == 1
    assert "[FAIL] config file    mode 0644: others can read the api_key" in res.stdout
    assert "[FAIL] log files" in res.stdout and "fix: chmod 600" in res.stdout


def test_security_missing_config(tmp_path: Path) -> None:
    res = sk("security", "--config", str(tmp_path / "nope.yaml"))
    assert res.returncode == 1 and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr


def test_doctor_one_line_per_check(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    data = tmp_path / "d"
    cfg.write_text(f'listen: "127.0.0.1:1"\ndata_dir: "{data}"\n')
    data.mkdir()
    res = sk("doctor", "--config", str(cfg))
    assert len(res.stdout.splitlines()) == 1 + 9  # a header, then one line per check
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
    names = [ln[7:21].strip() for ln in lines]
    assert names == ["kernel", "cgroups", "overlayfs", "data dir fs", "overlay mount",
                     "user namespace", "wsl", "root", "daemon"]
    assert "[warn] daemon" in res.stdout and "not answering" in res.stdout
    if os.geteuid() == 0:
        assert "[ ok ] overlay mount  overlayfs works" in res.stdout
        # this kernel and filesystem allow idmapped layers (6.18, ext4/tmpfs)
        assert "[ ok ] user namespace auto: active, sandbox ids 0..65535 are host ids " \
               "1879048192..1879113727" in res.stdout
        assert list(data.iterdir()) == []  # the probe cleaned up
    assert res.returncode == (1 if "[FAIL]" in res.stdout else 0)


def test_init_does_not_pull_python_for_another_default_image(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f'default_image: "node"\ndata_dir: "{tmp_path / "d"}"\n')
    res = sk("init", "--config", str(cfg))
    assert res.returncode == 1
    assert "error: the default image 'node' is not in the store" in res.stderr
    assert "hint: pass --image-ref REF for it" in res.stderr
    assert list((tmp_path / "d" / "images").glob("*.json")) == []
