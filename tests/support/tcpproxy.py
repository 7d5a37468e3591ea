"""A loopback TCP proxy that injects faults into blob downloads, for resume/corruption tests.

``FaultProxy(upstream_port, digest, cut_after=N)`` closes the connection after N bytes of
the response to a ``GET .../blobs/<digest>`` (the first ``times`` such requests);
``flip_at=K`` flips one byte at offset K of that response's body; ``delay=S`` sleeps S
seconds per 64 KiB forwarded of such a response (a slow link). Everything else passes
through unchanged. Real sockets, real HTTP: the client under test cannot tell it apart
from a registry whose connection dropped or whose storage returned bad bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        digest: str,
        *,
        cut_after: int | None = None,
        flip_at: int | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        self.upstream_port = upstream_port
        self.needle = f"/blobs/{digest}".encode()
        self.cut_after, self.flip_at, self.times = cut_after, flip_at, times
        self.delay = delay
        self.faults = 0
        self.blob_requests: list[bytes] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._closing = False
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._conns += [client, upstream]
            state = {"armed": False, "sent": 0, "header_done": False, "body": 0, "buf": b""}
            for target in (self._requests, self._responses):
                t = threading.Thread(target=target, args=(client, upstream, state), daemon=True)
                t.start()
                self._threads.append(t)

    def _requests(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(b"GET ") and self.needle in data.split(b"\r\n", 1)[0]:
                    with self._lock:
                        self.blob_requests.append(data.split(b"\r\n\r\n", 1)[0])
                        fire = self.faults < self.times
                        if fire:
                            self.faults += 1
                    state.update(armed=fire, sent=0, header_done=False, body=0, buf=b"")
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

    def _responses(self, client: socket.socket, upstream: socket.socket, state: dict) -> None:
        try:
            while data := upstream.recv(65536):
                if state["armed"] and self.delay:
                    time.sleep(self.delay)
                if state["armed"]:
                    data = self._fault(data, state)
                    if data is None:
                        break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _fault(self, data: bytes, state: dict) -> bytes | None:
        if self.cut_after is not None:
            room = self.cut_after - state["sent"]
            if room <= 0:
                return None
            if len(data) > room:
                data = data[:room]
                state["sent"] += room
                # send what fits, then drop the connection like a failing network
                return data if data else None
            state["sent"] += len(data)
            return data
        if self.flip_at is not None:
            if not state["header_done"]:
                buf = state["buf"] + data
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    state["buf"] = buf
                    return b""
                state["header_done"] = True
                head, data = buf[: end + 4], buf[end + 4 :]
                return head + self._flip(data, state)
            return self._flip(data, state)
        return data

    def _flip(self, data: bytes, state: dict) -> bytes:
        start = state["body"]
        state["body"] += len(data)
        k = self.flip_at - start if self.flip_at is not None else -1
        if 0 <= k < len(data):
            b = bytearray(data)
            b[k] ^= 0xFF
            return bytes(b)
        return data
