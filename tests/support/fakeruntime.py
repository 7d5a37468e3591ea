"""A fake ``Runtime`` for pool tests: pure asyncio, counts what is alive."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sandkasten.runtime.base import (
    DEFAULT_MAX_OUTPUT,
    ExecChunk,
    ExecResult,
    FileEntry,
    SessionSpec,
    SplitExecResult,
    Stats,
)


class FakeSandbox:
    def __init__(self, runtime: FakeRuntime, spec: SessionSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        self.id = spec.id
        self.pid = os.getpid()  # alive; tests set a dead pid to simulate a crash
        self.destroyed = False

    async def exec(self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False,
                   max_output: int = DEFAULT_MAX_OUTPUT) -> ExecResult:
        return ExecResult(0, "/workspace", cmd, False, 0)

    async def exec_split(self, cmd: str, *, timeout_ms: int | None = None,
                         max_output: int = DEFAULT_MAX_OUTPUT) -> SplitExecResult:
        return SplitExecResult(0, "/workspace", cmd, "", False, 0)

    async def exec_stream(self, cmd: str, *, timeout_ms: int | None = None,
                          raw_output: bool = False) -> AsyncIterator[ExecChunk | ExecResult]:
        yield ExecResult(0, "/workspace", cmd, False, 0)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> str:
        return path

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> tuple[bytes, bool]:
        return b"", False

    async def list_dir(self, path: str) -> list[FileEntry]:
        return []

    async def stats(self) -> Stats:
        return Stats(0, None, 0, 1)

    async def destroy(self) -> None:
        if not self.destroyed:
            self.destroyed = True
            self.runtime.live.discard(self.id)


class FakeRuntime:
    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.live: set[str] = set()
        self.created: list[SessionSpec] = []
        self.fail = 0  # fail this many creations
        self.in_flight = 0
        self.max_in_flight = 0

    async def create(self, spec: SessionSpec) -> FakeSandbox:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail:
                self.fail -= 1
                raise OSError("overlay mount failed")
            self.created.append(spec)
            self.live.add(spec.id)
            return FakeSandbox(self, spec)
        finally:
            self.in_flight -= 1

    async def attach(self, session_id: str) -> FakeSandbox | None:
        return None

    async def cleanup(self, session_id: str) -> None:
        self.live.discard(session_id)


def spec(**kw: object) -> SessionSpec:
    base: dict[str, object] = {"id": "template", "image": "python", "layer_paths": [Path("/l")],
                               "cpu_limit": 1.0, "mem_limit_mb": 512, "pids_limit": 256}
    base.update(kw)
    return SessionSpec(**base)  # type: ignore[arg-type]
