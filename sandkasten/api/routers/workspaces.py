"""``/v1/workspaces``: list, delete, write and upload files, export and import tar archives."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Annotated

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from sandkasten.api.deps import Manager, require_api_key
from sandkasten.api.errors import CONFLICT, NOT_FOUND, POLICY, TOO_LARGE, responses
from sandkasten.api.models import (
    NAME_PATTERN,
    PATH_PATTERN,
    ImportOut,
    Ok,
    UploadedFile,
    UploadOut,
    WorkspaceList,
    WorkspaceOut,
    WriteFile,
    WriteOut,
)
from sandkasten.api.routers.files import TAR_DOC, decode_content, part_name, upload_parts
from sandkasten.errors import ConflictError, UnprocessableError, with_code
from sandkasten.session import hostfs
from sandkasten.session.manager import SessionManager, iso

WorkspaceId = Annotated[str, PathParam(pattern=NAME_PATTERN, description="workspace id")]

router = APIRouter(
    prefix="/v1/workspaces", tags=["workspaces"], dependencies=[Depends(require_api_key)]
)


def _enabled(m: SessionManager) -> None:
    if not m.config.workspace.enabled:
        raise with_code(
            UnprocessableError(
                "workspaces are disabled", hint="set workspace.enabled: true in the config"
            ),
            "workspaces_disabled",
        )


def in_workspace(path: str) -> str:
    """A path as sessions see it → relative to the workspace root.

    ``/workspace/a/b`` and ``a/b`` name the same file; any other absolute path is read
    inside the workspace as if it were ``/`` (``/a/b`` is ``a/b``), and ``..`` never climbs
    above it.
    """
    if path == "/workspace" or path.startswith("/workspace/"):
        path = path[len("/workspace") :]
    return "/".join(hostfs.clean_relpath(path, clamp=True))


def _open_root(p: Path) -> int:
    return os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


@router.get("", response_model=WorkspaceList, summary="List workspaces", responses=responses())
async def list_workspaces(m: Manager) -> WorkspaceList:
    rows = await anyio.to_thread.run_sync(m.workspaces.list)
    return WorkspaceList(
        workspaces=[
            WorkspaceOut(
                id=r.id,
                created_at=iso(r.created_at),
                labels=r.labels,
                sessions=m.workspace_in_use(r.id),
            )
            for r in rows
        ]
    )


@router.delete(
    "/{workspace_id}",
    response_model=Ok,
    summary="Delete a workspace and its files",
    responses=responses(NOT_FOUND, CONFLICT),
)
async def delete_workspace(m: Manager, workspace_id: WorkspaceId) -> Ok:
    users = m.workspace_in_use(workspace_id)
    if users:
        raise with_code(
            ConflictError(
                f"workspace {workspace_id} is in use by session(s) {', '.join(users)}",
                hint="destroy those sessions first",
            ),
            "workspace_in_use",
        )
    await anyio.to_thread.run_sync(m.workspaces.delete, workspace_id)
    return Ok()


def _write(root: Path, path: str, data: bytes | IO[bytes], mode: int) -> int:
    fd = _open_root(root)
    try:
        return hostfs.write_stream(fd, path, data, mode=mode)
    finally:
        os.close(fd)


@router.post(
    "/{workspace_id}/fs/write",
    response_model=WriteOut,
    summary="Write a file into a workspace (created if new)",
    responses=responses(CONFLICT, TOO_LARGE, POLICY),
)
async def write_file(m: Manager, workspace_id: WorkspaceId, body: WriteFile) -> WriteOut:
    _enabled(m)
    rel = in_workspace(body.path)
    data = decode_content(body)
    root = await anyio.to_thread.run_sync(m.workspaces.ensure, workspace_id)
    n = await anyio.to_thread.run_sync(_write, root, rel, data, body.mode or 0o644)
    return WriteOut(path="/workspace/" + rel, bytes=n)


@router.post(
    "/{workspace_id}/fs/upload",
    response_model=UploadOut,
    summary="Upload files into a workspace (multipart 'file'/'files', optional 'path')",
    responses=responses(CONFLICT, TOO_LARGE, POLICY),
)
async def upload(
    m: Manager,
    workspace_id: WorkspaceId,
    file: Annotated[list[UploadFile], File(default_factory=list)],
    files: Annotated[list[UploadFile], File(default_factory=list)],
    path: str = Form("/workspace", max_length=4096, pattern=PATH_PATTERN),
) -> UploadOut:
    _enabled(m)
    base = in_workspace(path)
    parts = upload_parts(file, files)
    root = await anyio.to_thread.run_sync(m.workspaces.ensure, workspace_id)
    out = []
    for p in parts:
        rel = f"{base}/{part_name(p)}".lstrip("/")
        # UploadFile.file is python-multipart's spooled temp file: copied in chunks.
        n = await anyio.to_thread.run_sync(_write, root, rel, p.file, 0o644)
        out.append(UploadedFile(path="/workspace/" + rel, bytes=n))
    return UploadOut(files=out)


@router.get(
    "/{workspace_id}/archive",
    response_class=StreamingResponse,
    summary="Export a workspace as a tar stream",
    responses={**TAR_DOC, **responses(NOT_FOUND)},
)
async def export_archive(m: Manager, workspace_id: WorkspaceId) -> StreamingResponse:
    root = m.workspaces.existing(workspace_id)
    return StreamingResponse(
        hostfs.iter_tar(root, "/"),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{workspace_id}.tar"'},
    )


class _BodyReader(io.RawIOBase):
    """A blocking file object over the request's async body, for a worker thread."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._it = chunks.__aiter__()
        self._buf = b""
        self._eof = False

    async def _next(self) -> bytes:
        return await self._it.__anext__()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf and not self._eof:
            try:
                self._buf = anyio.from_thread.run(self._next)
            except StopAsyncIteration:
                self._eof = True
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


@router.put(
    "/{workspace_id}/archive",
    response_model=ImportOut,
    summary="Import a tar stream into a workspace (created if new)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses=responses(CONFLICT, TOO_LARGE, POLICY),
)
async def import_archive(m: Manager, workspace_id: WorkspaceId, request: Request) -> ImportOut:
    _enabled(m)
    root = await anyio.to_thread.run_sync(m.workspaces.ensure, workspace_id)
    reader = io.BufferedReader(_BodyReader(request.stream()), hostfs.CHUNK)
    stats = await anyio.to_thread.run_sync(hostfs.extract_tar, reader, root)
    return ImportOut(
        files=stats.files,
        dirs=stats.dirs,
        symlinks=stats.symlinks,
        skipped=stats.skipped,
        bytes=stats.bytes,
    )
