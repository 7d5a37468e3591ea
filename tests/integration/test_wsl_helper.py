"""``sandkasten-wsl`` end to end: the real command, a stand-in ``wsl`` on PATH that records
its arguments and answers like wsl.exe (UTF-16 lists included), and a real HTTP /healthz."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.wsl import install_fake_wsl


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok"}' if self.path == "/healthz" else b"{}"
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    t.join()


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, str]:
    install_fake_wsl(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSL_", "SANDKASTEN_"))}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["FAKE_WSL_LOG"] = str(tmp_path / "calls.jsonl")
    env["FAKE_WSL_DISTROS"] = "Ubuntu-22.04,Debian"
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandkasten.wsl", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["FAKE_WSL_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_with_distro_and_config_runs_the_seed_command(
    fake: dict[str, str], healthz: int
) -> None:
    fake["FAKE_WSL_FILES"] = json.dumps({"~/sandkasten.yaml": f'listen: "127.0.0.1:{healthz}"\n'})
    res = run(fake, "start", "--distro", "Ubuntu-22.04", "--config", "~/sandkasten.yaml")
    assert res.returncode == 0, res.stderr
    assert f"API:       http://localhost:{healthz}/v1" in res.stdout
    assert calls(fake) == [
        ["--list", "--quiet"],
        ["-d", "Ubuntu-22.04", "--", "command", "-v", "sandkasten"],
        ["-d", "Ubuntu-22.04", "--", "sudo", "sandkasten", "daemon", "-d",
         "--config", "~/sandkasten.yaml"],
        ["-d", "Ubuntu-22.04", "--", "cat", "~/sandkasten.yaml"],
    ]


def test_start_default_distro_omits_d_and_honours_binary(
    fake: dict[str, str], healthz: int
) -> None:
    fake["FAKE_WSL_BINARIES"] = "sandkasten"
    res = run(fake, "start", "--binary", "/opt/sk/bin/sandkasten",
              "--url", f"http://localhost:{healthz}")
    assert res.returncode == 0, res.stderr
    assert calls(fake)[1:] == [
        ["--", "command", "-v", "/opt/sk/bin/sandkasten"],
        ["--", "sudo", "/opt/sk/bin/sandkasten", "daemon", "-d"],
    ]


def test_status_reports_running_and_not_running(fake: dict[str, str], healthz: int) -> None:
    res = run(fake, "status", "--url", f"http://localhost:{healthz}")
    assert res.returncode == 0 and "running" in res.stdout and '"ok"' in res.stdout
    port = free_port()
    fake["FAKE_WSL_FILES"] = json.dumps({"/etc/sandkasten/sandkasten.yaml":
                                         f"listen: 127.0.0.1:{port}\n"})
    res = run(fake, "status", "--config", "/etc/sandkasten/sandkasten.yaml")
    assert res.returncode == 3
    assert f"not running: http://localhost:{port}/healthz" in res.stdout


def test_status_defaults_to_port_8080(fake: dict[str, str]) -> None:
    res = run(fake, "status")
    assert "http://localhost:8080/healthz" in res.stdout


def test_stop(fake: dict[str, str]) -> None:
    res = run(fake, "stop", "-d", "debian", "--config", "~/sandkasten.yaml")
    assert res.returncode == 0, res.stderr
    assert calls(fake)[-1] == ["-d", "debian", "--", "sudo", "sandkasten", "stop",
                               "--config", "~/sandkasten.yaml"]


@pytest.mark.parametrize(("setup", "args", "message"), [
    ({"FAKE_WSL_DISTROS": "Debian"}, ["start", "--distro", "Ubuntu-22.04"],
     "WSL distribution 'Ubuntu-22.04' is not installed (installed: Debian)"),
    ({"FAKE_WSL_DISTROS": ""}, ["start"], "no WSL distribution is installed"),
    ({"FAKE_WSL_BINARIES": "other"}, ["start"], "'sandkasten' is not on the PATH in the default"),
    ({"FAKE_WSL_BINARIES": "other"}, ["stop", "-d", "Debian"],
     "'sandkasten' is not on the PATH in WSL distribution 'Debian'"),
    ({"FAKE_WSL_EXIT": "1"}, ["start"], "the daemon did not start (exit status 1)"),
    ({"WSL_DISTRO_NAME": "Ubuntu"}, ["status"], "you are inside WSL already"),
])
def test_errors_are_one_line(
    fake: dict[str, str], setup: dict[str, str], args: list[str], message: str
) -> None:
    fake.update(setup)
    res = run(fake, *args, *(["--wait", "0"] if args[0] == "start" else []))
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and message in res.stderr
    assert "Traceback" not in res.stderr
    if "FAKE_WSL_EXIT" not in setup and setup.get("FAKE_WSL_BINARIES") != "other":
        assert not any("sudo" in c for c in calls(fake))


def test_missing_wsl_exe(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    res = run(env, "status")
    assert res.returncode == 1
    assert "error: wsl.exe not found on PATH: install WSL2" in res.stderr
