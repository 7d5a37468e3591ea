"""A test double of :class:`sandkasten.runtime.base.Runtime`: no namespaces, no root.

It keeps each sandbox's files in a temporary directory (``root_dir``, the sandbox's ``/``;
``/workspace`` maps to the spec's workspace directory when it has one) and interprets a tiny
shell: ``echo``, ``printf``, ``cd``, ``pwd``, ``cat``, ``ls``, ``export``, ``true``,
``false``, ``exit N``, ``sleep S`` and ``echo … >&2``, joined by ``;`` or ``&&``; ``$VAR``
expands from exports. Enough to exercise the daemon's API, state and lifecycle quickly; the
real behaviour is proven by the integration tests against LinuxRuntime.

``attach`` finds sandboxes that are still "alive" in the same FakeRuntime, which lets a test
model a daemon restart whose runners survived (``forget``) or died (``kill``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sandkasten.errors import ConflictError
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
    def __init__(self, spec: SessionSpec, root_dir: Path) -> None:
        self.id = spec.id
        self.pid = os.getpid()
        self.spec = spec
        self.root_dir = root_dir
        self.cwd = "/workspace"
        self.env: dict[str, str] = {}
        self.alive = True
        self.destroyed = False
        self.execs = 0
        self._lock = asyncio.Lock()
        for d in ("workspace", "tmp"):
            (root_dir / d).mkdir(parents=True, exist_ok=True)

    # ---- paths ---------------------------------------------------------------------------
    def _abs(self, path: str) -> str:
        p = path if path.startswith("/") else f"{self.cwd}/{path}"
        return os.path.normpath(p)

    def host_path(self, path: str) -> Path:
        p = self._abs(path)
        ws = self.spec.workspace_dir
        if ws is not None and (p == "/workspace" or p.startswith("/workspace/")):
            return ws / p[len("/workspace") :].lstrip("/")
        return self.root_dir / p.lstrip("/")

    def _check(self) -> None:
        if self.destroyed:
            raise ConflictError(f"sandbox {self.id} is destroyed")

    # ---- the tiny shell --------------------------------------------------------------------
    def _run_one(self, argv: list[str], out: list[str], err: list[str]) -> int:
        cmd, args = argv[0], argv[1:]
        to_err = args[-1:] == [">&2"]
        if to_err:
            args = args[:-1]
        sink = err if to_err else out
        if cmd == "echo":
            sink.append(" ".join(args) + "\n")
        elif cmd == "printf":
            sink.append(args[0].replace("\\n", "\n") if args else "")
        elif cmd == "pwd":
            sink.append(self.cwd + "\n")
        elif cmd == "cd":
            target = self._abs(args[0] if args else "/workspace")
            if not self.host_path(target).is_dir():
                err.append(f"cd: {args[0]}: No such file or directory\n")
                return 1
            self.cwd = target
        elif cmd == "cat":
            for a in args:
                try:
                    sink.append(self.host_path(a).read_text())
                except OSError:
                    err.append(f"cat: {a}: No such file or directory\n")
                    return 1
        elif cmd == "ls":
            d = self.host_path(args[0] if args else ".")
            sink.extend(n + "\n" for n in sorted(os.listdir(d)))
        elif cmd == "export":
            for a in args:
                k, _, v = a.partition("=")
                self.env[k] = v
        elif cmd in ("true", ":"):
            return 0
        elif cmd == "false":
            return 1
        elif cmd == "exit":
            return int(args[0]) if args else 0
        else:
            err.append(f"sh: {cmd}: not found\n")
            return 127
        return 0

    def _expand(self, word: str) -> str:
        return re.sub(r"\$(\w+)", lambda mt: self.env.get(mt.group(1), ""), word)

    async def _interpret(self, cmd: str, timeout_ms: int | None) -> tuple[int, str, str, bool]:
        out: list[str] = []
        err: list[str] = []
        code = 0
        for part in re.split(r";|&&", cmd):
            argv = [self._expand(w) for w in shlex.split(part)]
            if not argv:
                continue
            if argv[0] == "sleep":
                secs = float(argv[1])
                if timeout_ms is not None and secs * 1000 > timeout_ms:
                    await asyncio.sleep(timeout_ms / 1000)
                    return 124, "".join(out), "".join(err), True
                await asyncio.sleep(secs)
                code = 0
                continue
            code = self._run_one(argv, out, err)
        return code, "".join(out), "".join(err), False

    # ---- the Sandbox protocol ------------------------------------------------------------
    async def exec(
        self,
        cmd: str,
        *,
        timeout_ms: int | None = None,
        raw_output: bool = False,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        self._check()
        async with self._lock:
            t0 = time.monotonic()
            code, out, err, timed_out = await self._interpret(cmd, timeout_ms)
            self.execs += 1
            text = out + err
            truncated = len(text) > max_output
            return ExecResult(
                code,
                self.cwd,
                text[:max_output],
                truncated,
                int((time.monotonic() - t0) * 1000),
                timed_out,
            )

    async def exec_split(
        self, cmd: str, *, timeout_ms: int | None = None, max_output: int = DEFAULT_MAX_OUTPUT
    ) -> SplitExecResult:
        self._check()
        async with self._lock:
            t0 = time.monotonic()
            code, out, err, timed_out = await self._interpret(cmd, timeout_ms)
            return SplitExecResult(
                code, self.cwd, out, err, False, int((time.monotonic() - t0) * 1000), timed_out
            )

    async def exec_stream(
        self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False
    ) -> AsyncIterator[ExecChunk | ExecResult]:
        self._check()
        async with self._lock:
            t0 = time.monotonic()
            code, out, err, timed_out = await self._interpret(cmd, timeout_ms)
            for line in (out + err).splitlines(keepends=True):
                yield ExecChunk(line)
            yield ExecResult(
                code, self.cwd, "", False, int((time.monotonic() - t0) * 1000), timed_out
            )

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o644) -> str:
        self._check()
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode)
        return self._abs(path)

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> tuple[bytes, bool]:
        self._check()
        data = self.host_path(path).read_bytes()
        if max_bytes is not None and len(data) > max_bytes:
            return data[:max_bytes], True
        return data, False

    async def list_dir(self, path: str) -> list[FileEntry]:
        self._check()
        d = self.host_path(path)
        out = []
        for name in sorted(os.listdir(d)):
            st = os.lstat(d / name)
            kind = (
                "dir"
                if (d / name).is_dir() and not (d / name).is_symlink()
                else "symlink"
                if (d / name).is_symlink()
                else "file"
            )
            out.append(
                FileEntry(
                    name,
                    f"{self._abs(path).rstrip('/')}/{name}",
                    kind,  # type: ignore[arg-type]
                    st.st_size,
                    st.st_mode & 0o7777,
                    st.st_mtime,
                )
            )
        return out

    async def stats(self) -> Stats:
        self._check()
        limit = self.spec.mem_limit_mb * 1024 * 1024 if self.spec.mem_limit_mb else None
        return Stats(
            memory_bytes=4096 * (1 + self.execs),
            memory_limit=limit,
            cpu_usage_usec=1000 * self.execs,
            pids=1,
        )

    async def destroy(self) -> None:
        self.destroyed = True
        self.alive = False
        shutil.rmtree(self.root_dir, ignore_errors=True)


class FakeRuntime:
    """Creates :class:`FakeSandbox` es under ``root``; records every call for assertions."""

    def __init__(self, root: Path, *, create_delay: float = 0.0) -> None:
        self.root = root
        self.create_delay = create_delay
        self.live: dict[str, FakeSandbox] = {}
        self.created: list[str] = []
        self.cleaned: list[str] = []

    async def create(self, spec: SessionSpec) -> FakeSandbox:
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        sb = FakeSandbox(spec, self.root / spec.id / "rootfs")
        self.live[spec.id] = sb
        self.created.append(spec.id)
        return sb

    async def attach(self, session_id: str) -> FakeSandbox | None:
        sb = self.live.get(session_id)
        return sb if sb is not None and sb.alive else None

    async def cleanup(self, session_id: str) -> None:
        self.cleaned.append(session_id)
        self.live.pop(session_id, None)
        shutil.rmtree(self.root / session_id, ignore_errors=True)

    def kill(self, session_id: str) -> None:
        """Model a runner that died while the daemon was down."""
        self.live[session_id].alive = False


class FakeImages:
    """An :class:`~sandkasten.session.images.ImageSource` over a dict; leases recorded."""

    def __init__(self, names: list[str] | None = None) -> None:
        from sandkasten.session.images import ImageInfo

        self._info = ImageInfo
        self.images = {n: ImageInfo(n, f"sha256:{n:0<64}"[:71], []) for n in (names or ["python"])}
        self.leases: dict[str, str] = {}

    def resolve(self, name: str):  # type: ignore[no-untyped-def]
        from sandkasten.session.images import image_not_found

        if name not in self.images:
            raise image_not_found(name)
        return self.images[name]

    def lease(self, session_id: str, image) -> None:  # type: ignore[no-untyped-def]
        self.leases[session_id] = image.name

    def release(self, session_id: str) -> None:
        self.leases.pop(session_id, None)

    def list(self) -> list[dict]:  # type: ignore[type-arg]
        return [
            {
                "name": i.name,
                "reference": f"docker.io/library/{i.name}:latest",
                "digest": i.manifest_digest,
                "platform": "linux/amd64",
                "layers": 0,
                "size": 0,
                "created": None,
                "pulled_at": None,
                "source": "registry",
            }
            for i in self.images.values()
        ]

    def repull(self, name: str, digest: str) -> None:
        """The name now points at a new image (as after ``image pull`` of a newer tag)."""
        self.images[name] = self._info(name, digest, [Path(f"/layers/{digest}")])

    def delete(self, name: str) -> None:
        self.resolve(name)
        del self.images[name]

    def pull(self, ref: str, *, name, platform, progress):  # type: ignore[no-untyped-def]
        from sandkasten.errors import ValidationError

        if "missing" in ref:
            raise ValidationError(f"manifest unknown: {ref}")
        n = name or ref.rsplit("/", 1)[-1].split(":")[0]
        progress({"layer": "sha256:" + "a" * 64, "status": "downloading", "bytes": 10})
        progress({"layer": "sha256:" + "a" * 64, "status": "done", "bytes": 20})
        self.images[n] = self._info(n, "sha256:" + "b" * 64, [])
        return (
            self.list()[-1]
            if self.list()[-1]["name"] == n
            else next(i for i in self.list() if i["name"] == n)
        )
