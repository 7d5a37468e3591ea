"""``LinuxSandbox``: the daemon's side of one sandbox, an async client of its runner.

Each request uses its own connection to sessions/<id>/runner.sock (a Unix socket connect
is a few microseconds), so concurrent requests never wait on each other here and an object
can be used from any event loop; the runner serialises execs on the shell itself.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sandkasten.runtime.linux.errors import SandboxGoneError

if TYPE_CHECKING:
    from sandkasten.runtime.linux import LinuxRuntime


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
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.dec = p.Decoder()
        self.queue: list[p.Message] = []

    async def send(self, msg: p.Message) -> None:
        self.writer.write(p.encode(msg))
        await self.writer.drain()

    async def recv(self) -> p.Message:
        while not self.queue:
            data = await self.reader.read(1 << 20)
            if not data:
                raise SandboxGoneError("the sandbox's runner closed the connection")
            self.queue.extend(self.dec.feed(data))
        return self.queue.pop(0)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


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

    async def _connect(self) -> _Conn:
        if self.destroyed:
            raise SandboxGoneError(f"sandbox {self.id} was destroyed")
        try:
            reader, writer = await asyncio.open_unix_connection(self._socket, limit=1 << 22)
        except OSError as e:
            raise SandboxGoneError(f"sandbox {self.id} is not answering: {e}") from None
        return _Conn(reader, writer)

    async def request(self, msg: p.Message) -> p.Message:
        conn = await self._connect()
        try:
            await conn.send(msg)
            reply = await conn.recv()
        finally:
            await conn.close()
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
        conn = await self._connect()
        try:
            await conn.send(p.ExecStream(cmd=cmd, timeout_ms=timeout_ms,
                                         raw_output=raw_output))
            while True:
                m = await conn.recv()
                if isinstance(m, p.Chunk):
                    yield ExecChunk(m.data)
                elif isinstance(m, p.ExecDone):
                    yield ExecResult(m.exit_code, m.cwd, m.output, m.truncated,
                                     m.duration_ms, m.timed_out)
                    return
                elif isinstance(m, p.Error):
                    raise RunnerError(m.code, m.message)
        finally:
            await conn.close()

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
        await asyncio.to_thread(self._runtime.destroy_sync, self.id)
