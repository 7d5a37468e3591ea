"""Running the daemon for tests, over real HTTP.

- :func:`serve_app`: an app (any runtime, e.g. the fake) under a real uvicorn in a thread,
  on a free loopback port; for fast API tests.
- :class:`DaemonProcess` / :func:`start_daemon`: the real daemon as users start it,
  ``sandkasten --config FILE`` in a subprocess (real LinuxRuntime), on a free loopback port
  (``listen: 127.0.0.1:0``; the address is read from its ``INFO listening addr=`` line),
  with a temporary data dir holding test images (:func:`install_test_images`).
- the ``daemon`` fixture (in tests that import it): yields a running :class:`DaemonProcess`
  with ``base_url`` and ``api_key``; ``daemon_factory(**config)`` starts more, with extra
  config keys (``pool={...}``, ``keep_sessions_on_shutdown=True``, …). Use them as::

      from tests.support.daemon import daemon, daemon_factory, image_store  # fixtures

      def test_something(daemon):
          with daemon.client() as c:          # httpx.Client with the API key set
              sid = c.post("/v1/sessions", json={"image": "busybox"}).json()["id"]

  Images in the store: ``busybox`` (busybox-static) and ``python`` (Debian + python3).
  Each daemon gets its own short data dir; stop, leaked-mount check and removal are done
  by the fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml

API_KEY = "sk-sandbox-test"
REPO = Path(__file__).resolve().parents[2]


# ---- in-process: any app, real uvicorn ------------------------------------------------------
@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn (lifespan on) in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=5))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        except BaseException as e:  # surfaced in the test thread below
            errors.append(e)

    t = threading.Thread(target=run, name="uvicorn-test", daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        t.join(5)
        sock.close()
        raise RuntimeError(f"app did not start: {errors}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(15)
        sock.close()
        if errors:
            raise errors[0]


# ---- test images in a store ----------------------------------------------------------------
def _tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tf:
        for entry in sorted(src.iterdir()):
            tf.add(entry, arcname=entry.name)
    return dest


def imgbuilder_import(data_dir: Path, name: str, tar: Path) -> None:
    """Import a rootfs tarball with the ``imgbuilder import`` command users run."""
    subprocess.run(
        [str(Path(sys.executable).parent / "imgbuilder"), "import", "--name", name,
         "--tar", str(tar), "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True,
    )


def install_test_images(data_dir: Path, *, python: bool = True) -> None:
    """``busybox`` (tiny) and, with ``python``, ``python`` (Debian + python3) into the store."""
    from tests.support.rootfs import busybox_rootfs, debian_python_tar

    with tempfile.TemporaryDirectory(prefix="sk-img-") as tmp:
        root = busybox_rootfs(Path(tmp) / "rootfs")
        imgbuilder_import(data_dir, "busybox", _tar_dir(root, Path(tmp) / "busybox.tar"))
    if python:
        imgbuilder_import(data_dir, "python", debian_python_tar())


def clone_store(src: Path, dest: Path) -> None:
    """Give ``dest`` the images of ``src`` cheaply: hard links (layers are read-only)."""
    dest.mkdir(parents=True, exist_ok=True)
    for sub in ("blobs", "layers", "images"):
        if (src / sub).exists():
            subprocess.run(["cp", "-al", str(src / sub), str(dest / sub)], check=True)


# ---- the real daemon in a subprocess -------------------------------------------------------
class DaemonProcess:
    """``sandkasten --config FILE`` in a subprocess; ``base_url`` once it is ready."""

    def __init__(self, data_dir: Path, *, api_key: str = API_KEY, **config: Any) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.config: dict[str, Any] = {
            "listen": "127.0.0.1:0", "api_key": api_key, "data_dir": str(data_dir),
            "default_image": "python", **config,
        }
        self.config_path = data_dir.parent / f"{data_dir.name}.yaml"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.stdout = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers,
                            timeout=kw.pop("timeout", 60), **kw)

    def start(self, timeout: float = 60) -> DaemonProcess:
        self.config_path.write_text(yaml.safe_dump(self.config))
        offset = len(self.log())  # a restart appends to the same log
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDKASTEN_")}
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child, closed below)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sandkasten.cli", "--config", str(self.config_path)],
                stdout=subprocess.PIPE, stderr=log, env=env, cwd=str(REPO),
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"INFO listening addr=(\S+)", self.log()[offset:])
            if m:
                self.base_url = f"http://{m.group(1)}"
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (what Ctrl+C and ``sandkasten stop`` do); return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.stdout = out.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the daemon dies without any clean-up; sandboxes outlive it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate()
        self.stdout = out.decode(errors="replace")


def cleanup_data_dir(data_dir: Path) -> None:
    """After a test: the data dir holds no mount; remove it."""
    mounts = Path("/proc/self/mountinfo").read_text()
    leaked = [line.split()[4] for line in mounts.splitlines()
              if line.split()[4].startswith(str(data_dir))]
    for m in sorted(leaked, reverse=True):
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    assert not leaked, f"mounts left behind: {leaked}"


def start_daemon(data_dir: Path, **config: Any) -> DaemonProcess:
    return DaemonProcess(data_dir, **config).start()


# ---- pytest fixtures (import them into a test module to use them) ---------------------------
@pytest.fixture(scope="session")
def image_store() -> Iterator[Path]:
    """A data dir with the ``busybox`` and ``python`` test images, built once per run."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon uses namespaces, overlayfs mounts and cgroups")
    # Short and on the same filesystem as the daemons' data dirs (they hard-link it).
    d = Path(tempfile.mkdtemp(prefix="sk-images-", dir="/tmp"))
    install_test_images(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon_factory(image_store: Path) -> Iterator[Any]:
    """``make(**config)`` starts a real daemon with its own data dir (the test images in it).

    Data dirs are short paths (``/tmp/skd-XXXX/data``): a runner's Unix socket path in
    ``sessions/<id>/runner.sock`` must stay under the kernel's 108-byte limit.
    """
    started: list[DaemonProcess] = []
    top = Path(tempfile.mkdtemp(prefix="skd-", dir=image_store.parent))

    def make(**config: Any) -> DaemonProcess:
        data = top / f"d{len(started)}"
        clone_store(image_store, data)
        d = DaemonProcess(data, **config)
        started.append(d)
        return d.start()

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
    for d in started:
        cleanup_data_dir(d.data_dir)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: Any) -> DaemonProcess:
    """A running daemon (``base_url``, ``api_key``, ``client()``) with default settings."""
    d: DaemonProcess = daemon_factory()
    return d
