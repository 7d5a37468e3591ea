"""Python SDK of the Sandkasten REST API: ``SandboxClient`` (asyncio) and
``SyncSandboxClient`` (blocking), both on httpx. Imports nothing Linux-specific, so it
installs and runs on Windows and macOS as well."""

from ._client import SandboxClient, Session
from ._errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    SandkastenAPIError,
    SandkastenClientError,
    SandkastenConnectionError,
    SandkastenTimeoutError,
    ServerError,
    UnauthorizedError,
    UnprocessableEntityError,
)
from ._models import (
    ExecResult,
    FileContent,
    FileEntry,
    ImageInfo,
    SessionInfo,
    SessionStats,
    SplitExecResult,
    WorkspaceInfo,
)
from ._stream import ExecStream
from ._sync import SyncExecStream, SyncSandboxClient, SyncSession

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ExecResult",
    "ExecStream",
    "FileContent",
    "FileEntry",
    "ForbiddenError",
    "ImageInfo",
    "NotFoundError",
    "PayloadTooLargeError",
    "SandboxClient",
    "SandkastenAPIError",
    "SandkastenClientError",
    "SandkastenConnectionError",
    "SandkastenTimeoutError",
    "ServerError",
    "Session",
    "SessionInfo",
    "SessionStats",
    "SplitExecResult",
    "SyncExecStream",
    "SyncSandboxClient",
    "SyncSession",
    "UnauthorizedError",
    "UnprocessableEntityError",
    "WorkspaceInfo",
]
