"""``/v1/sessions/{id}/fs/*``: write, read, upload, list and archive files in a session."""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from sandkasten.api.deps import Manager, require_api_key
from sandkasten.api.errors import CONFLICT, FORBIDDEN, NOT_FOUND, TOO_LARGE, responses
from sandkasten.api.models import (
    PATH_PATTERN,
    Entry,
    ListOut,
    ReadOut,
    UploadedFile,
    UploadOut,
    WriteFile,
    WriteOut,
)
from sandkasten.errors import (
    PayloadTooLargeError,
    SandkastenError,
    ValidationError,
    with_code,
)
from sandkasten.session import hostfs

T = TypeVar("T")

DEFAULT_READ_BYTES = 10 << 20
MAX_READ_BYTES = 64 << 20
MAX_SESSION_UPLOAD_FILE = 256 << 20  # a session upload passes through the runner in memory

router = APIRouter(prefix="/v1/sessions", tags=["files"], dependencies=[Depends(require_api_key)])

TAR_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "a tar (PAX) stream",
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def decode_content(body: WriteFile) -> bytes:
    """The bytes of a write request: exactly one of ``text`` or ``content_base64``."""
    if body.text is not None and body.content_base64 is not None:
        raise with_code(
            ValidationError("give 'text' or 'content_base64', not both"), "invalid_request"
        )
    if body.text is not None:
        return body.text.encode("utf-8", "surrogateescape")
    try:
        return base64.b64decode(body.content_base64 or "", validate=True)
    except (binascii.Error, ValueError):
        raise with_code(
            ValidationError("content_base64 is not valid base64"), "invalid_request"
        ) from None


# The runner's file-operation codes (runner.files.ERRNO_CODES) → (status, code) of the API.
FILE_ERRORS: dict[str, tuple[int, str]] = {
    "not_found": (404, "file_not_found"),
    "permission_denied": (403, "permission_denied"),
    "exists": (409, "path_conflict"),
    "is_a_directory": (409, "path_conflict"),
    "not_a_directory": (409, "path_conflict"),
    "not_empty": (409, "path_conflict"),
    "invalid": (409, "path_conflict"),
    "read_only": (409, "read_only"),
    "name_too_long": (400, "invalid_path"),
    "no_space": (413, "no_space"),
    "file_too_large": (413, "file_too_large"),
}


class FileError(SandkastenError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


async def _fs(call: Awaitable[T]) -> T:
    """Await a sandbox file operation, giving its failures the API's statuses and codes."""
    try:
        return await call
    except FileNotFoundError as e:
        msg = f"no such file or directory: {e.filename or ''}"
        raise FileError(404, "file_not_found", msg) from None
    except SandkastenError as e:
        if e.code in FILE_ERRORS:
            raise FileError(*FILE_ERRORS[e.code], e.message) from None
        raise


def _check_path(path: str) -> str:
    if "\0" in path:
        raise with_code(ValidationError("path contains a NUL byte"), "invalid_path")
    return path


@router.post(
    "/{session_id}/fs/write",
    response_model=WriteOut,
    summary="Write a file",
    responses=responses(NOT_FOUND, FORBIDDEN, CONFLICT, TOO_LARGE),
)
async def write_file(m: Manager, session_id: str, body: WriteFile) -> WriteOut:
    sandbox = m.sandbox(session_id)
    data = decode_content(body)
    kwargs = {"mode": body.mode} if body.mode is not None else {}
    path = await _fs(sandbox.write_file(_check_path(body.path), data, **kwargs))
    return WriteOut(path=path, bytes=len(data))


@router.get(
    "/{session_id}/fs/read",
    response_model=ReadOut,
    summary="Read a file",
    responses=responses(NOT_FOUND, FORBIDDEN, CONFLICT),
)
async def read_file(
    m: Manager,
    session_id: str,
    path: str = Query(min_length=1, max_length=4096, pattern=PATH_PATTERN),
    max_bytes: int | None = Query(None, gt=0, le=MAX_READ_BYTES),
) -> ReadOut:
    sandbox = m.sandbox(session_id)
    data, truncated = await _fs(
        sandbox.read_file(_check_path(path), max_bytes=max_bytes or DEFAULT_READ_BYTES)
    )
    return ReadOut(path=path, content_base64=base64.b64encode(data).decode(), truncated=truncated)


@router.get(
    "/{session_id}/fs/list",
    response_model=ListOut,
    summary="List a directory",
    responses=responses(NOT_FOUND, FORBIDDEN, CONFLICT),
)
async def list_dir(
    m: Manager,
    session_id: str,
    path: str = Query("/workspace", min_length=1, max_length=4096, pattern=PATH_PATTERN),
) -> ListOut:
    entries = await _fs(m.sandbox(session_id).list_dir(_check_path(path)))
    return ListOut(
        path=path,
        entries=[
            Entry(name=e.name, path=e.path, type=e.type, size=e.size, mode=e.mode, mtime=e.mtime)
            for e in entries
        ],
    )


def upload_parts(file: list[UploadFile] | None, files: list[UploadFile] | None) -> list[UploadFile]:
    parts = [*(file or []), *(files or [])]
    for p in parts:
        name = posixpath.basename((p.filename or "").replace("\\", "/"))
        if name in ("", ".", ".."):
            raise with_code(
                ValidationError("every uploaded file needs a file name"), "invalid_request"
            )
    return parts


def part_name(p: UploadFile) -> str:
    return posixpath.basename((p.filename or "").replace("\\", "/"))


@router.post(
    "/{session_id}/fs/upload",
    response_model=UploadOut,
    summary="Upload files (multipart: 'file'/'files', optional target directory 'path')",
    responses=responses(NOT_FOUND, FORBIDDEN, CONFLICT, TOO_LARGE),
)
async def upload(
    m: Manager,
    session_id: str,
    file: Annotated[list[UploadFile], File(default_factory=list)],
    files: Annotated[list[UploadFile], File(default_factory=list)],
    path: str = Form("/workspace", max_length=4096, pattern=PATH_PATTERN),
) -> UploadOut:
    sandbox = m.sandbox(session_id)
    out = []
    for p in upload_parts(file, files):
        if (p.size or 0) > MAX_SESSION_UPLOAD_FILE:
            raise PayloadTooLargeError(
                f"{p.filename}: over {MAX_SESSION_UPLOAD_FILE >> 20} MiB",
                hint="upload large files into a workspace (POST /v1/workspaces/{id}/fs/upload)",
            )
        data = await p.read()
        target = posixpath.join(_check_path(path), part_name(p))
        written = await _fs(sandbox.write_file(target, data))
        out.append(UploadedFile(path=written, bytes=len(data)))
    return UploadOut(files=out)


def sandbox_root(sandbox: object) -> Path:
    """The sandbox's ``/`` as the host sees it (``/proc/<pid>/root``)."""
    root = getattr(sandbox, "root_dir", None)
    return Path(root) if root else Path(f"/proc/{getattr(sandbox, 'pid', 0)}/root")


@router.get(
    "/{session_id}/fs/archive",
    response_class=StreamingResponse,
    summary="Download a directory or file as a tar stream",
    responses={**TAR_DOC, **responses(NOT_FOUND, FORBIDDEN, CONFLICT)},
)
async def archive(
    m: Manager,
    session_id: str,
    path: str = Query("/workspace", min_length=1, max_length=4096, pattern=PATH_PATTERN),
) -> StreamingResponse:
    sandbox = m.sandbox(session_id)
    stream = hostfs.iter_tar(sandbox_root(sandbox), _check_path(path))
    name = posixpath.basename(path.rstrip("/")) or "root"
    return StreamingResponse(
        stream,
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{_safe_filename(name)}.tar"'},
    )


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:100] or "archive"
