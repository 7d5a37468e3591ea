"""The asynchronous client: ``SandboxClient`` and the ``Session`` it creates.

    client = SandboxClient(base_url="http://localhost:8080", api_key="sk-sandbox-test")
    async with await client.create_session(image="python") as session:
        result = await session.exec("python3 -c 'print(2 + 2)'")
        print(result.output)   # 4

Guarantees: every method either returns a typed result or raises a
``SandkastenClientError`` subclass (never a bare httpx error; bad arguments such as an empty
path raise ``ValueError``/``TypeError`` before anything is sent); a request is retried only
when that cannot run anything twice (see ``_protocol.may_retry``); leaving a session's
``async with`` block destroys the session, and leaving the client's closes its connections.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sandkasten import __version__

from . import _protocol as P
from ._errors import NotFoundError, SandkastenConnectionError, SandkastenTimeoutError
from ._models import (
    ExecResult,
    FileContent,
    FileEntry,
    ImageInfo,
    SessionInfo,
    SessionStats,
    SplitExecResult,
    WorkspaceInfo,
    unwrap_list,
)
from ._stream import ExecStream

DEFAULT_BASE_URL = "http://localhost:8080"
DEFAULT_TIMEOUT = 30.0
#: How long to wait for an exec that gives no ``timeout_ms`` (the daemon applies its own
#: default and cap, ``defaults.max_exec_timeout_ms``; this only bounds a hung connection).
DEFAULT_EXEC_TIMEOUT = 630.0
DEFAULT_RETRIES = 3

UploadSource = str | os.PathLike[str] | tuple[str, bytes]


def _client_settings(
    base_url: str | None, api_key: str | None, headers: dict[str, str] | None
) -> tuple[str, dict[str, str]]:
    url = P.normalize_base_url(base_url or os.environ.get("SANDKASTEN_URL") or DEFAULT_BASE_URL)
    key = api_key if api_key is not None else os.environ.get("SANDKASTEN_API_KEY", "")
    hdrs = {"User-Agent": f"sandkasten-python/{__version__}"}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    hdrs.update(headers or {})
    return url, hdrs


def _upload_parts(files: UploadSource | Iterable[UploadSource]) -> list[tuple[str, bytes]]:
    items: list[UploadSource] = (
        [files] if isinstance(files, str | os.PathLike | tuple) else list(files)
    )
    parts: list[tuple[str, bytes]] = []
    for item in items:
        if isinstance(item, tuple):
            parts.append((str(item[0]), bytes(item[1])))
        else:
            p = Path(item)
            parts.append((p.name, p.read_bytes()))
    return parts


class SandboxClient:
    """Asynchronous client of one Sandkasten daemon.

    ``base_url`` defaults to ``$SANDKASTEN_URL`` or http://localhost:8080 and ``api_key`` to
    ``$SANDKASTEN_API_KEY``. ``timeout`` bounds ordinary requests (seconds); an exec waits
    for its own ``timeout_ms`` plus a margin. ``max_retries`` applies to connection failures
    that are safe to retry. ``transport`` swaps the network (e.g. ``httpx.ASGITransport``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
        max_retries: int = DEFAULT_RETRIES,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, hdrs = _client_settings(base_url, api_key, headers)
        self._exec_timeout = exec_timeout
        self._max_retries = max(0, max_retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=hdrs, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    # ---- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._http.aclose()

    close = aclose

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ---- transport --------------------------------------------------------------------

    def _kwargs(self, call: P.Call) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "params": call.params, "json": call.json, "content": call.content,
            "files": call.files, "data": call.data, "headers": call.headers or None,
        }
        if call.timeout is not None:
            kw["timeout"] = httpx.Timeout(call.timeout, connect=10.0)
        return {k: v for k, v in kw.items() if v is not None}

    async def _send(self, call: P.Call, *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                req = self._http.build_request(call.method, call.path, **self._kwargs(call))
                return await self._http.send(req, stream=stream)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout) and attempt < self._max_retries:
                    await asyncio.sleep(P.backoff_seconds(attempt))
                    attempt += 1
                    continue
                raise SandkastenTimeoutError(
                    f"{call.method} {call.path}: no answer from {self.base_url} in time"
                ) from e
            except httpx.TransportError as e:
                sent = not isinstance(e, httpx.ConnectError)
                if attempt < self._max_retries and P.may_retry(call, sent=sent):
                    await asyncio.sleep(P.backoff_seconds(attempt))
                    attempt += 1
                    continue
                raise SandkastenConnectionError(
                    f"cannot reach the Sandkasten daemon at {self.base_url} "
                    f"({type(e).__name__}: {e}); is it running? (sandkasten daemon -d)"
                ) from e

    async def _call(self, call: P.Call) -> Any:
        resp = await self._send(call)
        return P.check(resp.status_code, resp.content, method=call.method, url=str(resp.url))

    async def _bytes(self, call: P.Call) -> bytes:
        resp = await self._send(call)
        if resp.status_code >= 400:
            P.check(resp.status_code, resp.content, method=call.method, url=str(resp.url))
        return resp.content

    @asynccontextmanager
    async def _stream(self, call: P.Call) -> AsyncIterator[httpx.Response]:
        resp = await self._send(call, stream=True)
        try:
            if resp.status_code >= 400:
                body = await resp.aread()
                P.check(resp.status_code, body, method=call.method, url=str(resp.url))
            yield resp
        except httpx.TransportError as e:
            raise SandkastenConnectionError(f"connection to {self.base_url} lost: {e}") from e
        finally:
            await resp.aclose()

    # ---- API --------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when ``/healthz`` answers ``{"status": "ok"}``."""
        data = await self._call(P.health())
        return isinstance(data, dict) and data.get("status") == "ok"

    async def create_session(
        self,
        image: str | None = None,
        *,
        ttl_seconds: int | None = None,
        workspace_id: str | None = None,
        cpu_limit: float | None = None,
        mem_limit_mb: int | None = None,
        pids_limit: int | None = None,
        network_mode: str | None = None,
    ) -> Session:
        """Create a sandbox; ``image`` None means the daemon's ``default_image``.
        Use the result with ``async with`` to destroy it on exit."""
        call = P.create_session(
            image, ttl_seconds=ttl_seconds, workspace_id=workspace_id, cpu_limit=cpu_limit,
            mem_limit_mb=mem_limit_mb, pids_limit=pids_limit, network_mode=network_mode,
            timeout=max(self._http.timeout.read or DEFAULT_TIMEOUT, 120.0),
        )
        return Session(self, SessionInfo.from_json(await self._call(call)))

    async def get_session(self, session_id: str) -> Session:
        return Session(self, SessionInfo.from_json(await self._call(P.get_session(session_id))))

    async def list_sessions(self) -> list[SessionInfo]:
        data = await self._call(P.list_sessions())
        return [SessionInfo.from_json(d) for d in unwrap_list(data, "sessions")]

    async def destroy_session(self, session_id: str) -> None:
        await self._call(P.delete_session(session_id))

    async def list_workspaces(self) -> list[WorkspaceInfo]:
        data = await self._call(P.list_workspaces())
        return [WorkspaceInfo.from_json(d) for d in unwrap_list(data, "workspaces")]

    async def delete_workspace(self, workspace_id: str) -> None:
        await self._call(P.delete_workspace(workspace_id))

    async def export_workspace(self, workspace_id: str) -> bytes:
        """The workspace's files as an uncompressed tar archive."""
        return await self._bytes(P.export_workspace(workspace_id))

    async def import_workspace(self, workspace_id: str, tar_bytes: bytes) -> None:
        """Unpack a tar archive into the workspace (created if missing)."""
        await self._call(P.import_workspace(workspace_id, tar_bytes))

    async def write_workspace_file(self, workspace_id: str, path: str, data: str | bytes) -> None:
        await self._call(P.write_file("workspaces", workspace_id, path, data))

    async def list_images(self) -> builtins.list[ImageInfo]:
        data = await self._call(P.list_images())
        return [ImageInfo.from_json(d) for d in unwrap_list(data, "images")]

    async def delete_image(self, name: str) -> None:
        await self._call(P.delete_image(name))

    async def pull_image(
        self, ref: str, *, name: str | None = None, platform: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> ImageInfo:
        """Have the daemon pull ``ref`` from its registry; ``progress`` receives each
        per-layer event. Returns the stored image."""
        async with self._stream(P.pull_image(ref, name=name, platform=platform)) as resp:
            decoder = P.SSEDecoder()
            async for line in resp.aiter_lines():
                event = decoder.feed(line)
                if event is None:
                    continue
                item = P.pull_event(*event)
                if isinstance(item, ImageInfo):
                    return item
                if progress is not None:
                    progress(item)
        raise P.stream_ended_early()


class Session:
    """One live sandbox. ``async with`` destroys it on exit (a session already gone is fine)."""

    def __init__(self, client: SandboxClient, info: SessionInfo) -> None:
        self._client = client
        self._info = info

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, image={self._info.image!r})"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def image(self) -> str:
        return self._info.image

    @property
    def workspace_id(self) -> str | None:
        return self._info.workspace_id

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.destroy()

    async def info(self) -> SessionInfo:
        """Fetch the session's current description from the daemon."""
        self._info = SessionInfo.from_json(await self._client._call(P.get_session(self.id)))
        return self._info

    async def exec(
        self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False
    ) -> ExecResult:
        """Run ``cmd`` in the session's persistent shell (cwd and env carry over)."""
        return ExecResult.from_json(await self._client._call(P.exec_call(
            self.id, cmd, timeout_ms=timeout_ms, raw_output=raw_output,
            default_reply_timeout=self._client._exec_timeout,
        )))

    async def exec_split(self, cmd: str, *, timeout_ms: int | None = None) -> SplitExecResult:
        """Run ``cmd`` and keep stdout and stderr apart."""
        return SplitExecResult.from_json(await self._client._call(P.exec_call(
            self.id, cmd, timeout_ms=timeout_ms, split_output=True,
            default_reply_timeout=self._client._exec_timeout,
        )))

    def exec_stream(
        self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False
    ) -> ExecStream:
        """Run ``cmd`` and receive its output while it runs (Server-Sent Events)."""
        return ExecStream(self._client, P.exec_call(
            self.id, cmd, timeout_ms=timeout_ms, raw_output=raw_output, stream=True,
            default_reply_timeout=self._client._exec_timeout,
        ))

    async def write(self, path: str, data: str | bytes) -> None:
        """Write a file (text or bytes); relative paths land in /workspace."""
        await self._client._call(P.write_file("sessions", self.id, path, data))

    async def read_file(self, path: str, *, max_bytes: int | None = None) -> FileContent:
        data = await self._client._call(P.read_file(self.id, path, max_bytes))
        return FileContent.from_json(data)

    async def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """A file's bytes (at most ``max_bytes`` when given)."""
        return (await self.read_file(path, max_bytes=max_bytes)).content

    async def read_text(
        self, path: str, *, encoding: str = "utf-8", errors: str = "replace",
        max_bytes: int | None = None,
    ) -> str:
        return (await self.read(path, max_bytes=max_bytes)).decode(encoding, errors)

    async def upload(
        self, files: UploadSource | Iterable[UploadSource], path: str | None = None
    ) -> builtins.list[str]:
        """Upload local files (paths) or ``(name, bytes)`` pairs into directory ``path``
        (default /workspace). Returns the paths written in the sandbox."""
        data = await self._client._call(P.upload("sessions", self.id, _upload_parts(files), path))
        return P.uploaded_paths(data)

    async def list(self, path: str = P.WORKSPACE) -> builtins.list[FileEntry]:
        data = await self._client._call(P.list_dir(self.id, path))
        return [FileEntry.from_json(d) for d in unwrap_list(data, "entries")]

    async def archive(self, path: str = P.WORKSPACE) -> bytes:
        """A directory of the sandbox as an uncompressed tar archive."""
        return await self._client._bytes(P.session_archive(self.id, path))

    async def stats(self) -> SessionStats:
        return SessionStats.from_json(await self._client._call(P.session_stats(self.id)))

    async def destroy(self) -> None:
        """Destroy the sandbox. Idempotent: a session that is already gone is not an error."""
        with suppress(NotFoundError):
            await self._client._call(P.delete_session(self.id))
