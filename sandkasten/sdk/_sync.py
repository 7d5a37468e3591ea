"""The synchronous client, for scripts and notebooks: the same shape as ``SandboxClient``.

    with SyncSandboxClient(base_url="http://localhost:8080", api_key="sk-sandbox-test") as c:
        with c.create_session(image="python") as session:
            print(session.exec("python3 -c 'print(2 + 2)'").output)

Same guarantees as the async client (typed results or ``SandkastenClientError``; retries
only where nothing can run twice; ``with`` blocks destroy the session / close the client).
"""

from __future__ import annotations

import builtins
import itertools
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import httpx

from . import _protocol as P
from ._client import (
    DEFAULT_EXEC_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    UploadSource,
    _client_settings,
    _upload_parts,
)
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


class SyncSandboxClient:
    """Blocking client of one Sandkasten daemon; see ``SandboxClient`` for the arguments."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
        max_retries: int = DEFAULT_RETRIES,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, hdrs = _client_settings(base_url, api_key, headers)
        self._exec_timeout = exec_timeout
        self._max_retries = max(0, max_retries)
        self._http = httpx.Client(
            base_url=self.base_url, headers=hdrs, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncSandboxClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _kwargs(self, call: P.Call) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "params": call.params, "json": call.json, "content": call.content,
            "files": call.files, "data": call.data, "headers": call.headers or None,
        }
        if call.timeout is not None:
            kw["timeout"] = httpx.Timeout(call.timeout, connect=10.0)
        return {k: v for k, v in kw.items() if v is not None}

    def _send(self, call: P.Call, *, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                req = self._http.build_request(call.method, call.path, **self._kwargs(call))
                return self._http.send(req, stream=stream)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout) and attempt < self._max_retries:
                    time.sleep(P.backoff_seconds(attempt))
                    attempt += 1
                    continue
                raise SandkastenTimeoutError(
                    f"{call.method} {call.path}: no answer from {self.base_url} in time"
                ) from e
            except httpx.TransportError as e:
                sent = not isinstance(e, httpx.ConnectError)
                if attempt < self._max_retries and P.may_retry(call, sent=sent):
                    time.sleep(P.backoff_seconds(attempt))
                    attempt += 1
                    continue
                raise SandkastenConnectionError(
                    f"cannot reach the Sandkasten daemon at {self.base_url} "
                    f"({type(e).__name__}: {e}); is it running? (sandkasten daemon -d)"
                ) from e

    def _call(self, call: P.Call) -> Any:
        resp = self._send(call)
        return P.check(resp.status_code, resp.content, method=call.method, url=str(resp.url))

    def _bytes(self, call: P.Call) -> bytes:
        resp = self._send(call)
        if resp.status_code >= 400:
            P.check(resp.status_code, resp.content, method=call.method, url=str(resp.url))
        return resp.content

    @contextmanager
    def _stream(self, call: P.Call) -> Iterator[httpx.Response]:
        resp = self._send(call, stream=True)
        try:
            if resp.status_code >= 400:
                P.check(resp.status_code, resp.read(), method=call.method, url=str(resp.url))
            yield resp
        except httpx.TransportError as e:
            raise SandkastenConnectionError(f"connection to {self.base_url} lost: {e}") from e
        finally:
            resp.close()

    def health(self) -> bool:
        data = self._call(P.health())
        return isinstance(data, dict) and data.get("status") == "ok"

    def create_session(
        self,
        image: str | None = None,
        *,
        ttl_seconds: int | None = None,
        workspace_id: str | None = None,
        cpu_limit: float | None = None,
        mem_limit_mb: int | None = None,
        pids_limit: int | None = None,
        network_mode: str | None = None,
    ) -> SyncSession:
        call = P.create_session(
            image, ttl_seconds=ttl_seconds, workspace_id=workspace_id, cpu_limit=cpu_limit,
            mem_limit_mb=mem_limit_mb, pids_limit=pids_limit, network_mode=network_mode,
            timeout=max(self._http.timeout.read or DEFAULT_TIMEOUT, 120.0),
        )
        return SyncSession(self, SessionInfo.from_json(self._call(call)))

    def get_session(self, session_id: str) -> SyncSession:
        return SyncSession(self, SessionInfo.from_json(self._call(P.get_session(session_id))))

    def list_sessions(self) -> list[SessionInfo]:
        return [SessionInfo.from_json(d)
                for d in unwrap_list(self._call(P.list_sessions()), "sessions")]

    def destroy_session(self, session_id: str) -> None:
        self._call(P.delete_session(session_id))

    def list_workspaces(self) -> list[WorkspaceInfo]:
        return [WorkspaceInfo.from_json(d)
                for d in unwrap_list(self._call(P.list_workspaces()), "workspaces")]

    def delete_workspace(self, workspace_id: str) -> None:
        self._call(P.delete_workspace(workspace_id))

    def export_workspace(self, workspace_id: str) -> bytes:
        return self._bytes(P.export_workspace(workspace_id))

    def import_workspace(self, workspace_id: str, tar_bytes: bytes) -> None:
        self._call(P.import_workspace(workspace_id, tar_bytes))

    def write_workspace_file(self, workspace_id: str, path: str, data: str | bytes) -> None:
        self._call(P.write_file("workspaces", workspace_id, path, data))

    def list_images(self) -> builtins.list[ImageInfo]:
        return [ImageInfo.from_json(d)
                for d in unwrap_list(self._call(P.list_images()), "images")]

    def delete_image(self, name: str) -> None:
        self._call(P.delete_image(name))

    def pull_image(
        self, ref: str, *, name: str | None = None, platform: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> ImageInfo:
        with self._stream(P.pull_image(ref, name=name, platform=platform)) as resp:
            decoder = P.SSEDecoder()
            for line in resp.iter_lines():
                event = decoder.feed(line)
                if event is None:
                    continue
                item = P.pull_event(*event)
                if isinstance(item, ImageInfo):
                    return item
                if progress is not None:
                    progress(item)
        raise P.stream_ended_early()


class SyncExecStream:
    """Output chunks of a streaming exec; after iterating, ``result``/``exit_code``."""

    def __init__(self, client: SyncSandboxClient, call: P.Call) -> None:
        self._client = client
        self._call = call
        self._events_gen: Generator[str, None, None] | None = None
        self.result: ExecResult | None = None
        self._chunks: list[str] = []

    @property
    def exit_code(self) -> int | None:
        return self.result.exit_code if self.result else None

    def __iter__(self) -> Iterator[str]:
        """The chunks, once: a second iteration continues where the first stopped."""
        if self._events_gen is None:
            self._events_gen = self._events()
        return self._events_gen

    def _events(self) -> Generator[str, None, None]:
        with self._client._stream(self._call) as resp:
            decoder = P.SSEDecoder()
            for line in itertools.chain(resp.iter_lines(), [""]):  # "" flushes the last event
                event = decoder.feed(line)
                if event is None:
                    continue
                item = P.stream_event(*event)
                if isinstance(item, ExecResult):
                    self.result = P.with_output(item, self._chunks)
                    return
                if item:
                    self._chunks.append(item)
                    yield item
        raise P.stream_ended_early()

    def close(self) -> None:
        """Stop reading (after a ``break``): closes the HTTP response at once."""
        if self._events_gen is not None:
            self._events_gen.close()

    def __enter__(self) -> SyncExecStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait(self) -> ExecResult:
        for _ in self:  # drain what is left (all of it, if nothing was read yet)
            pass
        if self.result is None:
            raise RuntimeError("the stream was closed before it finished")
        return self.result


class SyncSession:
    """One live sandbox; ``with`` destroys it on exit."""

    def __init__(self, client: SyncSandboxClient, info: SessionInfo) -> None:
        self._client = client
        self._info = info

    def __repr__(self) -> str:
        return f"SyncSession(id={self.id!r}, image={self._info.image!r})"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def image(self) -> str:
        return self._info.image

    @property
    def workspace_id(self) -> str | None:
        return self._info.workspace_id

    def __enter__(self) -> SyncSession:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def info(self) -> SessionInfo:
        self._info = SessionInfo.from_json(self._client._call(P.get_session(self.id)))
        return self._info

    def exec(self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False
             ) -> ExecResult:
        return ExecResult.from_json(self._client._call(P.exec_call(
            self.id, cmd, timeout_ms=timeout_ms, raw_output=raw_output,
            default_reply_timeout=self._client._exec_timeout,
        )))

    def exec_split(self, cmd: str, *, timeout_ms: int | None = None) -> SplitExecResult:
        return SplitExecResult.from_json(self._client._call(P.exec_call(
            self.id, cmd, timeout_ms=timeout_ms, split_output=True,
            default_reply_timeout=self._client._exec_timeout,
        )))

    def exec_stream(self, cmd: str, *, timeout_ms: int | None = None, raw_output: bool = False
                    ) -> SyncExecStream:
        return SyncExecStream(self._client, P.exec_call(
            self.id, cmd, timeout_ms=timeout_ms, raw_output=raw_output, stream=True,
            default_reply_timeout=self._client._exec_timeout,
        ))

    def write(self, path: str, data: str | bytes) -> None:
        self._client._call(P.write_file("sessions", self.id, path, data))

    def read_file(self, path: str, *, max_bytes: int | None = None) -> FileContent:
        return FileContent.from_json(self._client._call(P.read_file(self.id, path, max_bytes)))

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return self.read_file(path, max_bytes=max_bytes).content

    def read_text(self, path: str, *, encoding: str = "utf-8", errors: str = "replace",
                  max_bytes: int | None = None) -> str:
        return self.read(path, max_bytes=max_bytes).decode(encoding, errors)

    def upload(self, files: UploadSource | Iterable[UploadSource], path: str | None = None
               ) -> builtins.list[str]:
        data = self._client._call(P.upload("sessions", self.id, _upload_parts(files), path))
        return P.uploaded_paths(data)

    def archive(self, path: str = P.WORKSPACE) -> bytes:
        return self._client._bytes(P.session_archive(self.id, path))

    def stats(self) -> SessionStats:
        return SessionStats.from_json(self._client._call(P.session_stats(self.id)))

    def destroy(self) -> None:
        with suppress(NotFoundError):
            self._client._call(P.delete_session(self.id))

    def list(self, path: str = P.WORKSPACE) -> builtins.list[FileEntry]:
        data = self._client._call(P.list_dir(self.id, path))
        return [FileEntry.from_json(d) for d in unwrap_list(data, "entries")]
