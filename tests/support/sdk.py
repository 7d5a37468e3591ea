"""Fixtures for the SDK, agent-tool and docs tests: ``sk_daemon`` (a daemon on a free
loopback port, API key ``sk-sandbox-test``, a ``python`` image) and a sync client on it."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandkasten.sdk import SyncSandboxClient

API_KEY = "sk-sandbox-test"


@dataclass(frozen=True)
class Daemon:
    base_url: str
    api_key: str
    data_dir: Path
    real: bool  # False: the daemon's fake runtime (no python3 in sessions)


@pytest.fixture(scope="module")
def sk_daemon() -> Iterator[Daemon]:
    import uvicorn

    from sandkasten.api.app import create_app
    from sandkasten.config import Config
    from tests.support.fake_runtime import FakeImages, FakeRuntime

    with tempfile.TemporaryDirectory(prefix="sk-sdk-") as tmp:
        data = Path(tmp) / "data"
        cfg = Config(api_key=API_KEY, data_dir=data)
        app = create_app(cfg, FakeRuntime(Path(tmp) / "rt"), images=FakeImages(["python"]))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        while not server.started:
            time.sleep(0.02)
        try:
            yield Daemon(f"http://127.0.0.1:{port}", API_KEY, data, real=False)
        finally:
            server.should_exit = True
            t.join(10)


@pytest.fixture
def sync_client(sk_daemon: Daemon) -> Iterator[SyncSandboxClient]:
    with SyncSandboxClient(sk_daemon.base_url, sk_daemon.api_key) as c:
        yield c
        for s in c.list_sessions():  # nothing a test created outlives it
            c.destroy_session(s.id)
