"""Retries over real loopback sockets: idempotent requests are retried after a dropped
connection, an exec is never sent twice, and an unreachable daemon gives one clear error."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from sandkasten.sdk import SandboxClient, SandkastenConnectionError, SyncSandboxClient
from sandkasten.sdk._client import Session
from sandkasten.sdk._models import SessionInfo


class DroppingServer:
    """Accepts connections, reads one request head, closes without answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data.split(b"\r\n", 1)[0])

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    srv = DroppingServer()
    yield srv
    srv.close()


def test_get_is_retried_after_a_dropped_connection(dropping: DroppingServer) -> None:
    with (
        SyncSandboxClient(f"http://127.0.0.1:{dropping.port}", "k", max_retries=2) as c,
        pytest.raises(SandkastenConnectionError, match="cannot reach"),
    ):
        c.list_sessions()
    assert dropping.requests == [b"GET /v1/sessions HTTP/1.1"] * 3


def test_exec_is_never_sent_twice(dropping: DroppingServer) -> None:
    async def run() -> None:
        async with SandboxClient(f"http://127.0.0.1:{dropping.port}", "k", max_retries=3) as c:
            s = Session(c, SessionInfo(id="abc"))
            with pytest.raises(SandkastenConnectionError):
                await s.exec("echo once")
    asyncio.run(run())
    assert dropping.requests == [b"POST /v1/sessions/abc/exec HTTP/1.1"]


def test_unreachable_daemon_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with (
            SyncSandboxClient(f"http://127.0.0.1:{port}", "k", max_retries=1) as c,
            pytest.raises(SandkastenConnectionError, match=f"127.0.0.1:{port}.*running"),
        ):
            c.create_session("python")
