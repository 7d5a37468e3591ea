"""The ``sandkasten`` command as users run it: foreground banner, -d/stop/ps/rm/logs/version,
and the first-start errors of the seed's troubleshooting section (one line + hint, exit 1)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import API_KEY, cleanup_data_dir, clone_store, image_store

__all__ = ["image_store"]

pytestmark = [pytest.mark.integration, pytest.mark.privileged]

SANDKASTEN = str(Path(sys.executable).parent / "sandkasten")


@pytest.fixture
def workdir(image_store: Path) -> Iterator[Path]:
    """A directory with sandkasten.yaml (free port) and a data dir holding the test images."""
    top = Path(tempfile.mkdtemp(prefix="skc-", dir=image_store.parent))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clone_store(image_store, top / "data")
    (top / "sandkasten.yaml").write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}", "api_key": API_KEY, "data_dir": str(top / "data"),
        "default_image": "busybox"}))
    yield top
    subprocess.run([SANDKASTEN, "stop"], cwd=top, capture_output=True, timeout=60, check=False)
    cleanup_data_dir(top / "data")
    shutil.rmtree(top, ignore_errors=True)


def run(cwd: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 90) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDKASTEN_")}
    return subprocess.run([SANDKASTEN, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})}, check=False)


def one_error(r: subprocess.CompletedProcess[str], fragment: str, hint: str) -> None:
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and fragment in lines[-2], r.stderr
    assert lines[-1].startswith("hint: ") and hint in lines[-1], r.stderr
    assert "Traceback" not in r.stderr


def test_foreground_banner_and_ctrl_c(workdir: Path) -> None:
    cfg = yaml.safe_load((workdir / "sandkasten.yaml").read_text())
    proc = subprocess.Popen([SANDKASTEN, "--config", "sandkasten.yaml"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if "API:" in line:
            break
    assert lines == [f"INFO listening addr={cfg['listen']}", "", "  sandkasten daemon ready",
                     f"  API:       http://{cfg['listen']}/v1"]
    proc.send_signal(2)  # Ctrl+C
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "INFO stopped" in rest and "Traceback" not in rest


def test_background_daemon_ps_rm_logs_stop(workdir: Path) -> None:
    r = run(workdir, "daemon", "-d", "--config", "sandkasten.yaml")
    assert r.returncode == 0, r.stderr
    assert "sandkasten daemon started" in r.stdout
    log = workdir / "data/run/sandkasten.log"
    assert log.stat().st_mode & 0o777 == 0o600
    assert (workdir / "data/run/sandkasten.pid").exists()
    one_error(run(workdir, "daemon", "-d"), "already running", "sandkasten stop")

    import httpx

    cfg = yaml.safe_load((workdir / "sandkasten.yaml").read_text())
    with httpx.Client(base_url=f"http://{cfg['listen']}",
                      headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        sid = c.post("/v1/sessions", json={}).json()["id"]
    ps = run(workdir, "ps")  # finds ./sandkasten.yaml by itself, as in the guide
    assert ps.returncode == 0, ps.stderr
    header, row = ps.stdout.splitlines()
    assert header.split() == ["SESSION", "ID", "IMAGE", "STATUS", "WORKSPACE", "CWD", "CREATED",
                              "EXPIRES"]
    assert row.split()[:5] == [sid, "busybox", "running", "-", "/workspace"]
    assert run(workdir, "ps", "-q").stdout.split() == [sid]
    assert run(workdir, "rm", sid).stdout.strip() == sid
    one_error(run(workdir, "rm", sid), f"session not found: {sid}", "sandkasten ps")
    assert run(workdir, "ps", "-q").stdout == ""
    logs = run(workdir, "logs")
    assert f"session created id={sid}" in logs.stdout and "sandkasten daemon ready" in logs.stdout
    follow = subprocess.Popen([SANDKASTEN, "logs", "-f", "-n", "1"], cwd=workdir,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        follow.stdout.readline()  # the last line so far
        with httpx.Client(base_url=f"http://{cfg['listen']}",
                          headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            new = c.post("/v1/sessions", json={}).json()["id"]
        for _ in range(20):  # lines written after it started arrive
            if f"session created id={new}" in follow.stdout.readline():
                break
        else:
            raise AssertionError("logs -f did not follow")
    finally:
        follow.terminate()
        follow.communicate(timeout=10)  # closes its pipe
    run(workdir, "rm", new)
    stop = run(workdir, "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    one_error(run(workdir, "stop"), "no daemon is running", "sandkasten daemon -d")
    one_error(run(workdir, "ps"), "cannot reach the daemon", "sudo sandkasten --config")
    assert not (workdir / "data/run/sandkasten.pid").exists()


def test_version(workdir: Path) -> None:
    import sandkasten

    r = run(workdir, "version")
    assert r.stdout.strip() == f"sandkasten {sandkasten.__version__}"


def test_port_in_use(workdir: Path) -> None:
    cfg = yaml.safe_load((workdir / "sandkasten.yaml").read_text())
    host, port = cfg["listen"].split(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen(1)
        r = run(workdir, "--config", "sandkasten.yaml")
    one_error(r, f"port {port} is already in use", "change listen in sandkasten.yaml")


def test_not_root(workdir: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is missing: run scripts/deps.sh")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDKASTEN_")}
    readable = Path(tempfile.mkdtemp(prefix="skc-user-"))
    try:
        readable.chmod(0o755)
        cfg = readable / "sandkasten.yaml"
        shutil.copy(workdir / "sandkasten.yaml", cfg)
        cfg.chmod(0o644)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            SANDKASTEN, "--config", "sandkasten.yaml"],
                           cwd=readable, capture_output=True, text=True, timeout=60, env=clean,
                           check=False)
        one_error(r, "permission denied", "sudo sandkasten --config sandkasten.yaml")
        cfg.chmod(0o600)  # a config only root may read: the same answer
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            SANDKASTEN, "--config", "sandkasten.yaml"],
                           cwd=readable, capture_output=True, text=True, timeout=60, env=clean,
                           check=False)
        one_error(r, "permission denied", "sudo sandkasten --config sandkasten.yaml")
    finally:
        shutil.rmtree(readable, ignore_errors=True)


@pytest.mark.parametrize(
    ("config", "fragment", "hint"),
    [
        ({"defaults": {"mem_limit_mb": "lots"}}, "config key 'defaults.mem_limit_mb'",
         "docs/configuration.md"),
        ({"listen": "0.0.0.0:0", "api_key": ""}, "without an api_key", "set api_key"),
        ({"data_dir": "/mnt/c/sandkasten"}, "overlayfs: upper fs does not support xattrs",
         "Linux filesystem"),
    ],
)
def test_first_start_errors(workdir: Path, config: dict[str, object], fragment: str,
                            hint: str) -> None:
    cfg = yaml.safe_load((workdir / "sandkasten.yaml").read_text())
    cfg.update(config)
    (workdir / "bad.yaml").write_text(yaml.safe_dump(cfg))
    one_error(run(workdir, "--config", "bad.yaml"), fragment, hint)
    assert not Path("/mnt/c/sandkasten").exists()


def test_unknown_default_image_warns(workdir: Path) -> None:
    cfg = yaml.safe_load((workdir / "sandkasten.yaml").read_text())
    cfg["default_image"] = "ruby"
    (workdir / "ruby.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([SANDKASTEN, "--config", "ruby.yaml"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        seen.append(line)
        if "listening" in line or time.monotonic() > deadline:
            break
    proc.terminate()
    proc.communicate(timeout=60)
    text = "".join(seen)
    assert "WARN default image not found name=ruby" in text
    assert "sandkasten image pull --name ruby" in text
