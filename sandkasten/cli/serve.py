"""Running the daemon in the foreground: preflight checks, the runtime, then uvicorn.

Order matters:
1. config and preflight (root, api_key for non-loopback, data_dir filesystem, one daemon
   per data_dir, the listening socket): each failure is one line and a hint, exit 1;
2. the runtime: ``LinuxRuntime`` starts its single-threaded fork server here, before
   uvicorn or asyncio start any thread (a process with threads must never fork);
3. uvicorn on the already bound socket; the banner appears once the app has started
   (sessions restored), so "ready" means ready.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from sandkasten.config import Config
from sandkasten.errors import ConfigError, RuntimeSetupError, SandkastenError

log = logging.getLogger("sandkasten")

PID_FILE = "sandkasten.pid"
STATE_FILE = "daemon.json"
LOG_FILE = "sandkasten.log"

# Filesystems that cannot hold overlayfs upper/work directories (WSL's Windows drives).
_NO_OVERLAY_FS = {
    "9p",
    "v9fs",
    "drvfs",
    "ntfs",
    "ntfs3",
    "fuseblk",
    "vfat",
    "exfat",
    "cifs",
    "smb3",
    "smbfs",
}


def setup_logging(level: str) -> None:
    logging.addLevelName(logging.WARNING, "WARN")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own start-up chatter is replaced by our banner; its errors still show.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (longest mount point prefix in mountinfo)."""
    best, kind = "", ""
    real = os.path.realpath(path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, right.split()[0]
    return kind


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def preflight(config: Config) -> None:
    """Every check a new user's first start can fail, each with the seed's answer."""
    if os.geteuid() != 0:
        raise RuntimeSetupError(
            "permission denied: the daemon needs root for namespaces, mounts and cgroups",
            hint="run it with sudo: sudo sandkasten --config sandkasten.yaml",
        )
    config.check_serving()
    # Before creating anything: a data_dir on a Windows drive must not be touched.
    kind = fs_type(_existing_ancestor(config.data_dir))
    windows_drive = re.match(r"^/mnt/[a-zA-Z](/|$)", str(config.data_dir)) is not None
    if kind in _NO_OVERLAY_FS or windows_drive:
        raise RuntimeSetupError(
            f"overlayfs: upper fs does not support xattrs: data_dir {config.data_dir} is on "
            f"{kind if kind in _NO_OVERLAY_FS else 'a Windows drive (WSL)'}",
            hint='put data_dir on the Linux filesystem, e.g. data_dir: "/var/lib/sandkasten"',
        )
    for sub in ("images", "layers", "sessions", "workspaces", "run"):
        try:
            (config.data_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RuntimeSetupError(
                f"cannot create {config.data_dir / sub}: {e.strerror}",
                hint="check data_dir in sandkasten.yaml; it must be writable by root",
            ) from None
    os.chmod(config.run_dir, 0o700)


class PidLock:
    """``run/sandkasten.pid``, flocked for the daemon's lifetime: one daemon per data_dir."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / PID_FILE
        self.fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeSetupError(
                f"another sandkasten daemon is running with this data_dir (pid {other})",
                hint="stop it first: sandkasten stop",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = -1


def bind(config: Config) -> socket.socket:
    host, port = config.host, config.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are
    # TCP, and without it a keep-alive response waits 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise RuntimeSetupError(
                f"port {port} is already in use ({config.listen})",
                hint=f"stop what listens there (sandkasten stop; ss -ltnp 'sport = :{port}'), "
                "or change listen in sandkasten.yaml",
            ) from None
        if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            raise ConfigError(
                f"cannot listen on {config.listen}: no such local address",
                hint='use an address of this machine, e.g. listen: "127.0.0.1:8080"',
            ) from None
        raise RuntimeSetupError(f"cannot listen on {config.listen}: {e.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


def _addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, addr: str, state_path: Path) -> None:
        super().__init__(config)
        self.addr = addr
        self.state_path = state_path

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        url = f"http://{self.addr}/v1"
        write_state(
            self.state_path,
            {"pid": os.getpid(), "listen": self.addr, "url": url, "started_at": time.time()},
        )
        log.info("listening addr=%s", self.addr)
        print(f"\n  sandkasten daemon ready\n  API:       {url}\n", flush=True)


def write_state(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def serve(config: Config) -> int:
    """Run the daemon until SIGINT/SIGTERM; return the exit status."""
    setup_logging(config.log_level)
    preflight(config)
    lock = PidLock(config.run_dir)
    lock.acquire()
    state_path = config.run_dir / STATE_FILE
    runtime = None
    try:
        sock = bind(config)
        from sandkasten.api.app import create_app, make_runtime

        runtime = make_runtime(config)
        start = getattr(runtime, "start", None)
        if callable(start):
            start()  # the fork server, before uvicorn or asyncio start any thread
        _warn_missing_default_image(config)
        app = create_app(config, runtime)
        server = _Server(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=10,
                server_header=False,
            ),
            _addr(sock),
            state_path,
        )
        # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal under the
        # handlers it found: make those no-ops so the clean-up below always runs.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        server.run(sockets=[sock])
        sock.close()
        return 0 if server.started else 1
    finally:
        close = getattr(runtime, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(OSError):
            state_path.unlink()
        lock.release()
        log.info("stopped")


def _warn_missing_default_image(config: Config) -> None:
    try:
        from sandkasten.session.images import StoreImages

        StoreImages(config.data_dir).resolve(config.default_image)
    except SandkastenError as e:
        log.warning("default image not found name=%s hint=%r", config.default_image, e.hint)
    except Exception:  # the store itself reports its problems when a session is created
        log.debug("default image check failed", exc_info=True)
