"""Typed results. Each ``from_json`` accepts the daemon's JSON and keeps unknown keys in
``extra``, so a newer daemon that adds fields never breaks an older SDK."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


def _known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = {f.name for f in fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value).astimezone()
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class SessionInfo:
    """A session as the daemon describes it (``POST/GET /v1/sessions``)."""

    id: str
    image: str = ""
    status: str = ""
    cwd: str = "/workspace"
    workspace_id: str | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionInfo:
        known, extra = _known(cls, data)
        for key in ("created_at", "expires_at"):
            if key in known:
                known[key] = _parse_time(known[key])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class ExecResult:
    """One command's result; ``output`` is stdout and stderr as the terminal showed them."""

    exit_code: int
    output: str
    cwd: str = ""
    truncated: bool = False
    duration_ms: int = 0
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        known, extra = _known(cls, data)
        known.setdefault("output", "")
        known.setdefault("exit_code", -1)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class SplitExecResult:
    """A command's result with stdout and stderr kept apart (``split_output``)."""

    exit_code: int
    stdout: str
    stderr: str
    cwd: str = ""
    truncated: bool = False
    duration_ms: int = 0
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitExecResult:
        known, extra = _known(cls, data)
        known.setdefault("stdout", "")
        known.setdefault("stderr", "")
        known.setdefault("exit_code", -1)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class FileContent:
    path: str
    content: bytes
    truncated: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileContent:
        raw = data.get("content_base64")
        content = base64.b64decode(raw) if raw else str(data.get("text", "")).encode()
        return cls(path=str(data.get("path", "")), content=content,
                   truncated=bool(data.get("truncated", False)))


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str = ""
    type: str = "file"
    size: int = 0
    mode: int = 0
    mtime: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        known, extra = _known(cls, data)
        if "is_dir" in extra and "type" not in known:
            known["type"] = "dir" if extra["is_dir"] else "file"
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class SessionStats:
    memory_bytes: int = 0
    memory_limit: int | None = None
    cpu_usage_usec: int = 0
    pids: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionStats:
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class WorkspaceInfo:
    id: str
    size_bytes: int | None = None
    created_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> WorkspaceInfo:
        if isinstance(data, str):
            return cls(id=data)
        known, extra = _known(cls, data)
        if "id" not in known and "workspace_id" in extra:
            known["id"] = extra.pop("workspace_id")
        if "created_at" in known:
            known["created_at"] = _parse_time(known["created_at"])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class ImageInfo:
    """An image in the daemon's store (``GET /v1/images``)."""

    name: str
    reference: str = ""
    digest: str = ""
    platform: str = ""
    layers: int = 0
    size: int = 0
    source: str = ""
    created: datetime | None = None
    pulled_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        known, extra = _known(cls, data)
        for key in ("created", "pulled_at"):
            if key in known:
                known[key] = _parse_time(known[key])
        return cls(**known, extra=extra)


def unwrap_list(data: Any, key: str) -> list[Any]:
    """The daemon may answer a bare list or ``{key: [...]}``; both mean the list."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        value = data.get(key)
        if isinstance(value, list):
            return value
        for alt in ("items", "entries", "data"):
            if isinstance(data.get(alt), list):
                return list(data[alt])
    return []
