"""``LinuxSandbox``: the daemon's side of one sandbox, an async client of its runner.

Connections to sessions/<id>/runner.sock are kept in a small per-sandbox pool of idle
ones and reused: a request takes an idle connection (or opens one), sends, reads its whole
reply and gives the connection back. The runner serves each connection's requests in
order and several connections at once, so concurrent requests each hold their own
connection and never wait on each other here; the runner serialises execs on the shell.

Safety of reuse: a connection goes back to the pool only after a complete exchange with
nothing left unread; one interrupted in any way (cancellation, a timeout above us, an
error, a client that stops reading a stream) is closed, never reused, so no reply can
reach the wrong request. An idle connection is checked before reuse (the runner may have
closed it, e.g. after a protocol error, or died): a closed one is discarded and a new
connection opened. Connections are plain non-blocking sockets driven with the running
loop's ``sock_*`` calls, so they belong to no event loop and one sandbox object can be
used from any loop or thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from runner import protocol as p
from sandkasten.errors import SandkastenError
from sandkasten.runtime.base import (
    DEFAULT_MAX_OUTPUT,
    ExecChunk,
    ExecResult,
    FileEntry,
    SplitExecResult,
    Stats,
)
from sandkasten.runtime.linux import unixaddr
from sandkasten.runtime.linux.errors import SandboxGoneError

if TYPE_CHECKING:
    from sandkasten.runtime.linux import LinuxRuntime

MAX_IDLE = 8  # idle connections kept per sandbox; more concurrent requests open more
_RECV = 1 << 16  # below malloc's mmap threshold: no mmap/munmap per read


class RunnerError(SandkastenError):
    """A request the runner refused; ``code`` is the runner's (not_found, invalid...)."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        if code == "not_found":
            self.status = 404
        elif code in ("internal", "io_error"):
            self.status = 500


class _Conn:
    """One connection to the runner; used by one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.dec = p.Decoder()
        self.queue: list[p.Message] = []

    async def send(self, msg: p.Message) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, p.encode(msg))
        except OSError as e:
            raise SandboxGoneError(f"the sandbox's runner is not answering: {e}") from None

    async def recv(self) -> p.Message:
        loop = asyncio.get_running_loop()
        while not self.queue:
            try:
                data = await loop.sock_recv(self.sock, _RECV)
            except OSError as e:
                raise SandboxGoneError(f"the sandbox's runner is not answering: {e}") from None
            if not data:
                raise SandboxGoneError("the sandbox's runner closed the connection")
            self.queue.extend(self.dec.feed(data))
        return self.queue.pop(0)

    def clean(self) -> bool:
        """Nothing received and unread: the exchange ended on a message boundary."""
        return not self.queue and not self.dec.pending

    def usable(self) -> bool:
        """Still open at the runner's end with nothing unsolicited waiting (one syscall)."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # EOF (the runner closed it) or bytes no request asked for

    def close(self) -> None:
        self.sock.close()


def _close_all(conns: list[_Conn]) -> None:
    while conns:
        conns.pop().close()


class LinuxSandbox:
    def __init__(self, runtime: LinuxRuntime, session_id: str, pid: int, socket_path: str,
                 cgroup: object | None) -> None:
        self.id = session_id
        self.pid = pid
        self._runtime = runtime
        self._socket = socket_path
        self._cgroup = cgroup
        self.destroyed = False
        # (step, CLOCK_MONOTONIC ns) of the create that made this sandbox; empty on attach
        self.setup_stamps: list[tuple[str, int]] = []
        # idle connections; the lock makes take/give-back safe across threads and loops
        self._idle: list[_Conn] = []
        self._idle_lock = threading.Lock()
        # an object dropped without destroy/close still closes its sockets
        self._finalizer = weakref.finalize(self, _close_all, self._idle)

    async def _connect(self) -> _Conn:
        if self.destroyed:
            raise SandboxGoneError(f"sandbox {self.id} was destroyed")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            # a long data_dir's path does not fit sockaddr_un: connect through the directory
            with unixaddr.short_path(self._socket) as addr:
                await asyncio.get_running_loop().sock_connect(sock, addr)
        except BaseException as e:
            sock.close()
            if isinstance(e, OSError):
                raise SandboxGoneError(f"sandbox {self.id} is not answering: {e}") from None
            raise
        return _Conn(sock)

    async def _acquire(self) -> _Conn:
        if self.destroyed:
            raise SandboxGoneError(f"sandbox {self.id} was destroyed")
        while True:
            with self._idle_lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return await self._connect()
            if conn.usable():
                return conn
            conn.close()  # stale: the runner closed it; try the next one or a new one

    def _release(self, conn: _Conn, complete: bool) -> None:
        """Give ``conn`` back after a ``complete`` exchange; otherwise close it."""
        if complete and conn.clean():
            with self._idle_lock:
                if not self.destroyed and len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                    return
        conn.close()

    def close_connections(self) -> None:
        """Close the idle connections (requests in flight close theirs when they end)."""
        with self._idle_lock:
            _close_all(self._idle)

    async def request(self, msg: p.Message) -> p.Message:
        conn = await self._acquire()
        complete = False
        try:
            await conn.send(msg)
            reply = await conn.recv()
            complete = True
        finally:
            self._release(conn, complete)
        if isinstance(reply, p.Error):
            raise RunnerError(reply.code, reply.message)
        return reply

    async def exec(self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False,
                   max_output: int = DEFAULT_MAX_OUTPUT) -> ExecResult:
        r = await self.request(p.Exec(cmd=cmd, timeout_ms=timeout_ms, raw_output=raw_output,
                                      max_output=max_output))
        assert isinstance(r, p.ExecDone)
        return ExecResult(r.exit_code, r.cwd, r.output, r.truncated, r.duration_ms,
                          r.timed_out)

    async def exec_split(self, cmd: str, *, timeout_ms: int | None = None,
                         max_output: int = DEFAULT_MAX_OUTPUT) -> SplitExecResult:
        r = await self.request(p.ExecSplit(cmd=cmd, timeout_ms=timeout_ms,
                                           max_output=max_output))
        assert isinstance(r, p.SplitDone)
        return SplitExecResult(r.exit_code, r.cwd, r.stdout, r.stderr, r.truncated,
                               r.duration_ms, r.timed_out)

    async def exec_stream(self, cmd: str, *, timeout_ms: int | None = None,
                          raw_output: bool = False) -> AsyncIterator[ExecChunk | ExecResult]:
        conn = await self._acquire()
        complete = False  # set once the final message is read: the connection is reusable
        try:
            await conn.send(p.ExecStream(cmd=cmd, timeout_ms=timeout_ms,
                                         raw_output=raw_output))
            while True:
                m = await conn.recv()
                if isinstance(m, p.Chunk):
                    yield ExecChunk(m.data)
                elif isinstance(m, p.ExecDone):
                    complete = True
                    yield ExecResult(m.exit_code, m.cwd, m.output, m.truncated,
                                     m.duration_ms, m.timed_out)
                    return
                elif isinstance(m, p.Error):
                    complete = True
                    raise RunnerError(m.code, m.message)
        finally:
            self._release(conn, complete)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> str:
        paths = await self.write_files([(path, data, mode)])
        return paths[0]

    async def write_files(self, files: list[tuple[str, bytes, int]]) -> list[str]:
        """Upload several files in one request (parents created); returns absolute paths."""
        r = await self.request(p.WriteFiles(
            files=[p.FileSpec(path=f, data_b64=p.b64(d), mode=m) for f, d, m in files]))
        assert isinstance(r, p.Written)
        return r.paths

    async def read_file(self, path: str, *, max_bytes: int | None = None
                        ) -> tuple[bytes, bool]:
        r = await self.request(p.ReadFile(path=path, max_bytes=max_bytes))
        assert isinstance(r, p.FileData)
        return p.unb64(r.data_b64), r.truncated

    async def list_dir(self, path: str) -> list[FileEntry]:
        r = await self.request(p.ListDir(path=path))
        assert isinstance(r, p.Listing)
        return [FileEntry(e.name, e.path, e.type, e.size, e.mode, e.mtime)  # type: ignore[arg-type]
                for e in r.entries]

    async def ping(self) -> p.Pong:
        r = await self.request(p.Ping())
        assert isinstance(r, p.Pong)
        return r

    async def stats(self) -> Stats:
        return await asyncio.to_thread(self._runtime.stats_of, self)

    async def destroy(self) -> None:
        self.destroyed = True
        self.close_connections()
        await asyncio.to_thread(self._runtime.destroy_sync, self.id)
