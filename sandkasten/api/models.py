"""Request and response bodies of the REST API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator


def json_number(v: Any, *, integer: bool) -> Any:
    """Only JSON numbers, as the schema says: no true for 1, no "1" for 1 (pydantic's lax
    mode would take both)."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
        raise ValueError(f"Input should be a valid {'integer' if integer else 'number'}")
    return v


#: image and workspace names: they become file names on the host
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: a file path: no NUL byte, no component over 255 bytes (the kernel's NAME_MAX)
PATH_PATTERN = r"^/*(?:[^/\x00]{1,255}/+)*[^/\x00]{0,255}$"
#: a file to write: like PATH_PATTERN, ending in a name that is not "." or ".."
FILE_PATTERN = (
    r"^/*(?:[^/\x00]{1,255}/+)*"
    r"(?:[^/\x00.][^/\x00]{0,254}|\.[^/\x00.][^/\x00]{0,253}|\.\.[^/\x00]{1,253})$"
)


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(_Req):
    image: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="image name; default: default_image"
    )
    ttl_seconds: int | None = Field(
        default=None, gt=0, le=30 * 24 * 3600, description="lifetime; default: session_ttl_seconds"
    )
    workspace_id: str | None = Field(
        default=None, pattern=NAME_PATTERN, description="persistent workspace at /workspace"
    )
    cpu_limit: float | None = Field(default=None, ge=0.01, le=1024)
    mem_limit_mb: int | None = Field(default=None, ge=16, le=1 << 22)
    pids_limit: int | None = Field(default=None, ge=8, le=1 << 22)
    network_mode: Literal["none"] | None = None

    @field_validator("ttl_seconds", "mem_limit_mb", "pids_limit", mode="before")
    @classmethod
    def _ints(cls, v: Any) -> Any:
        return json_number(v, integer=True)

    @field_validator("cpu_limit", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return json_number(v, integer=False)


class SessionOut(BaseModel):
    id: str
    image: str
    status: str
    cwd: str
    workspace_id: str | None
    created_at: str
    expires_at: str


class Ok(BaseModel):
    ok: bool = True


class StatsOut(BaseModel):
    memory_bytes: int
    memory_limit: int | None
    cpu_usage_usec: int
    pids: int


class ExecRequest(_Req):
    cmd: str = Field(
        pattern=r"\S", description="shell command line, run in the session's persistent shell"
    )
    timeout_ms: int | None = Field(default=None, gt=0, description="capped by max_exec_timeout_ms")
    raw_output: StrictBool = False
    split_output: StrictBool = Field(default=False, description="separate stdout and stderr")

    @field_validator("timeout_ms", mode="before")
    @classmethod
    def _ints(cls, v: Any) -> Any:
        return json_number(v, integer=True)


class ExecOut(BaseModel):
    exit_code: int
    cwd: str
    output: str
    truncated: bool
    duration_ms: int
    timed_out: bool | None = Field(
        default=None, description="present (true) only when the timeout hit"
    )


class SplitExecOut(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    cwd: str
    duration_ms: int
    truncated: bool | None = Field(
        default=None, description="present (true) only when output was cut"
    )
    timed_out: bool | None = Field(
        default=None, description="present (true) only when the timeout hit"
    )


class WriteFile(_Req):
    """``text`` (UTF-8) or ``content_base64``, not both; neither writes an empty file."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "not": {
                "required": ["text", "content_base64"],
                "properties": {"text": {"type": "string"}, "content_base64": {"type": "string"}},
            }
        },
    )

    path: str = Field(min_length=1, max_length=4096, pattern=FILE_PATTERN)
    text: str | None = None
    content_base64: str | None = Field(default=None, pattern=r"^[A-Za-z0-9+/]*={0,2}$")
    mode: int | None = Field(
        default=None, ge=0, le=0o777, description="permission bits, default 0644"
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _ints(cls, v: Any) -> Any:
        return json_number(v, integer=True)


class WriteOut(BaseModel):
    ok: bool = True
    path: str
    bytes: int


class ReadOut(BaseModel):
    path: str
    content_base64: str
    truncated: bool


class Entry(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float


class ListOut(BaseModel):
    path: str
    entries: list[Entry]


class UploadedFile(BaseModel):
    path: str
    bytes: int


class UploadOut(BaseModel):
    ok: bool = True
    files: list[UploadedFile]


class WorkspaceOut(BaseModel):
    id: str
    created_at: str
    labels: dict[str, str]
    sessions: list[str] = Field(description="live sessions using it")


class WorkspaceList(BaseModel):
    workspaces: list[WorkspaceOut]


class ImportOut(BaseModel):
    ok: bool = True
    files: int
    dirs: int
    symlinks: int
    skipped: int
    bytes: int


class ImageOut(BaseModel):
    name: str
    reference: str
    digest: str
    platform: str
    layers: int
    size: int
    created: str | None = None
    pulled_at: str | None = None
    source: str


class ImageList(BaseModel):
    images: list[ImageOut]


class PullRequest(_Req):
    ref: str = Field(min_length=1, max_length=1024, examples=["python:3.12-slim"])
    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    platform: str | None = Field(default=None, examples=["linux/amd64"])


class Health(BaseModel):
    status: str = "ok"


def sse_schema(events: list[str]) -> dict[str, object]:
    """The OpenAPI schema of one Server-Sent Event as clients parse it."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "description": "a JSON object",
            },
        },
    }
