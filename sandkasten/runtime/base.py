"""The contract between the daemon and a sandbox driver.

The daemon (``sandkasten.session``, ``sandkasten.api``) only speaks to these types; the
Linux driver in ``sandkasten.runtime.linux`` implements them. A session spec is plain data
so it can be planned, logged and tested without root.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

NetworkMode = Literal["none"]
ExecMode = Literal["stateful", "stateless"]
SeccompProfile = Literal["off", "mvp", "strict"]

DEFAULT_MAX_OUTPUT = 1 << 20  # 1 MiB of output per exec before it is truncated


@dataclass(frozen=True)
class SessionSpec:
    """Everything needed to build one sandbox. ``layer_paths`` are bottom-most first."""

    id: str
    image: str
    layer_paths: list[Path]
    image_env: list[str] = field(default_factory=list)
    image_workdir: str = ""
    cpu_limit: float | None = None
    mem_limit_mb: int | None = None
    pids_limit: int | None = None
    network_mode: NetworkMode = "none"
    exec_mode: ExecMode = "stateful"
    shell_prefer: list[str] = field(default_factory=lambda: ["bash", "sh"])
    readonly_rootfs: bool = False
    workspace_dir: Path | None = None
    seccomp: SeccompProfile = "mvp"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    cwd: str
    output: str
    truncated: bool
    duration_ms: int
    timed_out: bool = False


@dataclass(frozen=True)
class SplitExecResult:
    exit_code: int
    cwd: str
    stdout: str
    stderr: str
    truncated: bool
    duration_ms: int
    timed_out: bool = False


@dataclass(frozen=True)
class ExecChunk:
    """A piece of output of a streaming exec; the stream ends with an ``ExecResult``."""

    data: str


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float


@dataclass(frozen=True)
class Stats:
    memory_bytes: int
    memory_limit: int | None
    cpu_usage_usec: int
    pids: int
    oom_kills: int = 0


class Sandbox(Protocol):
    """A live sandbox. Methods are safe to call concurrently; the driver serialises them."""

    id: str
    pid: int  # host pid of the sandbox's PID 1

    async def exec(
        self,
        cmd: str,
        *,
        timeout_ms: int | None = None,
        raw_output: bool = False,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult: ...

    async def exec_split(
        self, cmd: str, *, timeout_ms: int | None = None, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> SplitExecResult: ...

    def exec_stream(
        self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False
    ) -> AsyncIterator[ExecChunk | ExecResult]: ...

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> str:
        """Write ``data``; relative paths resolve against /workspace. Returns the absolute path."""
        ...

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> tuple[bytes, bool]:
        """Return (content, truncated)."""
        ...

    async def list_dir(self, path: str) -> list[FileEntry]: ...

    async def stats(self) -> Stats: ...

    async def destroy(self) -> None:
        """Kill every process, unmount, remove the cgroup and the session directory."""
        ...


class Runtime(Protocol):
    async def create(self, spec: SessionSpec) -> Sandbox: ...

    async def attach(self, session_id: str) -> Sandbox | None:
        """Re-attach to a live sandbox after a daemon restart; None if it is gone."""
        ...

    async def cleanup(self, session_id: str) -> None:
        """Remove what a dead sandbox left behind (mounts, cgroup, directory)."""
        ...
