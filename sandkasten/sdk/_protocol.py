"""The REST API as data: request descriptions, response parsing, SSE decoding, retry policy.

Sans-IO: nothing here touches a socket, so the async and the sync client share it and the
unit tests drive it with tables. Paths and bodies follow the daemon's API (docs/api.md).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import posixpath
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ._errors import SandkastenAPIError, ServerError, error_from_response
from ._models import ExecResult, ImageInfo, unwrap_list

WORKSPACE = "/workspace"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Seconds added to an exec's own timeout before the client gives up waiting for the reply,
#: so the daemon's timeout (which kills the command and answers) always fires first.
EXEC_REPLY_MARGIN_S = 15.0


@dataclass(frozen=True)
class Call:
    """One HTTP request. ``timeout`` None means the client's default."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    timeout: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def idempotent(self) -> bool:
        return self.method in IDEMPOTENT_METHODS


def normalize_base_url(url: str) -> str:
    """``http://host:8080``, ``http://host:8080/`` and ``http://host:8080/v1`` all mean the
    daemon's root; the client adds ``/v1`` itself."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if "://" not in url:
        url = "http://" + url
    return url


def sandbox_path(path: str) -> str:
    """Relative paths land in /workspace (not in the shell's current directory, which
    may have moved). Nothing else is changed: the daemon decides what may be reached."""
    if not path:
        raise ValueError("path must not be empty")
    return path if path.startswith("/") else posixpath.join(WORKSPACE, path)


def _seg(value: str) -> str:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"invalid id {value!r}")
    return quote(value, safe="")


# ---- sessions -------------------------------------------------------------------------

def create_session(
    image: str | None = None,
    *,
    ttl_seconds: int | None = None,
    workspace_id: str | None = None,
    cpu_limit: float | None = None,
    mem_limit_mb: int | None = None,
    pids_limit: int | None = None,
    network_mode: str | None = None,
    timeout: float | None = None,
) -> Call:
    body = {
        "image": image, "ttl_seconds": ttl_seconds, "workspace_id": workspace_id,
        "cpu_limit": cpu_limit, "mem_limit_mb": mem_limit_mb, "pids_limit": pids_limit,
        "network_mode": network_mode,
    }
    return Call("POST", "/v1/sessions", json={k: v for k, v in body.items() if v is not None},
                timeout=timeout)


def get_session(session_id: str) -> Call:
    return Call("GET", f"/v1/sessions/{_seg(session_id)}")


def list_sessions() -> Call:
    return Call("GET", "/v1/sessions")


def delete_session(session_id: str) -> Call:
    return Call("DELETE", f"/v1/sessions/{_seg(session_id)}")


def session_stats(session_id: str) -> Call:
    return Call("GET", f"/v1/sessions/{_seg(session_id)}/stats")


def exec_call(
    session_id: str,
    cmd: str,
    *,
    timeout_ms: int | None = None,
    raw_output: bool = False,
    split_output: bool = False,
    stream: bool = False,
    default_reply_timeout: float,
) -> Call:
    body: dict[str, Any] = {"cmd": cmd}
    if timeout_ms is not None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        body["timeout_ms"] = int(timeout_ms)
    if raw_output:
        body["raw_output"] = True
    if split_output:
        body["split_output"] = True
    reply = (timeout_ms / 1000 + EXEC_REPLY_MARGIN_S) if timeout_ms else default_reply_timeout
    suffix = "/exec/stream" if stream else "/exec"
    headers = {"Accept": "text/event-stream"} if stream else {}
    return Call("POST", f"/v1/sessions/{_seg(session_id)}{suffix}", json=body,
                timeout=reply, headers=headers)


# ---- files ----------------------------------------------------------------------------

def write_file(owner: str, owner_id: str, path: str, data: str | bytes) -> Call:
    """``owner`` is ``sessions`` or ``workspaces``. Text goes as ``text``; bytes as base64,
    so any binary content survives JSON."""
    body: dict[str, Any] = {"path": sandbox_path(path) if owner == "sessions" else path}
    if isinstance(data, str):
        body["text"] = data
    elif isinstance(data, bytes | bytearray | memoryview):
        body["content_base64"] = base64.b64encode(bytes(data)).decode("ascii")
    else:
        raise TypeError(f"write expects str or bytes, not {type(data).__name__}")
    return Call("POST", f"/v1/{owner}/{_seg(owner_id)}/fs/write", json=body)


def read_file(session_id: str, path: str, max_bytes: int | None = None) -> Call:
    params: dict[str, Any] = {"path": sandbox_path(path)}
    if max_bytes is not None:
        params["max_bytes"] = int(max_bytes)
    return Call("GET", f"/v1/sessions/{_seg(session_id)}/fs/read", params=params)


def list_dir(session_id: str, path: str = WORKSPACE) -> Call:
    return Call("GET", f"/v1/sessions/{_seg(session_id)}/fs/list",
                params={"path": sandbox_path(path)})


def upload(
    owner: str, owner_id: str, files: list[tuple[str, bytes]], path: str | None = None
) -> Call:
    """Multipart upload of ``(filename, content)`` pairs into directory ``path``."""
    if not files:
        raise ValueError("upload needs at least one file")
    field_name = "file" if len(files) == 1 else "files"
    parts = [(field_name, (name, content, "application/octet-stream")) for name, content in files]
    data = {"path": sandbox_path(path) if owner == "sessions" else path} if path else None
    return Call("POST", f"/v1/{owner}/{_seg(owner_id)}/fs/upload", files=parts, data=data,
                timeout=None)


def session_archive(session_id: str, path: str = WORKSPACE) -> Call:
    return Call("GET", f"/v1/sessions/{_seg(session_id)}/fs/archive",
                params={"path": sandbox_path(path)})


# ---- workspaces -----------------------------------------------------------------------

def list_workspaces() -> Call:
    return Call("GET", "/v1/workspaces")


def delete_workspace(workspace_id: str) -> Call:
    return Call("DELETE", f"/v1/workspaces/{_seg(workspace_id)}")


def export_workspace(workspace_id: str) -> Call:
    return Call("GET", f"/v1/workspaces/{_seg(workspace_id)}/archive")


def import_workspace(workspace_id: str, tar_bytes: bytes) -> Call:
    return Call("PUT", f"/v1/workspaces/{_seg(workspace_id)}/archive", content=tar_bytes,
                headers={"Content-Type": "application/x-tar"})


# ---- images ---------------------------------------------------------------------------

def list_images() -> Call:
    return Call("GET", "/v1/images")


def delete_image(name: str) -> Call:
    return Call("DELETE", f"/v1/images/{_seg(name)}")


def pull_image(ref: str, *, name: str | None = None, platform: str | None = None) -> Call:
    body = {"ref": ref, "name": name, "platform": platform}
    # A pull of a large image takes minutes; the stream carries progress all along.
    return Call("POST", "/v1/images/pull", json={k: v for k, v in body.items() if v},
                timeout=3600.0, headers={"Accept": "text/event-stream"})


def pull_event(event: str, data: str) -> dict[str, Any] | ImageInfo:
    """``progress`` → its dict, ``done`` → the image, ``error`` → the matching exception."""
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        payload = {"message": data}
    if event == "error":
        status = STREAM_ERROR_STATUS.get(str(payload.get("code", "")), 502)
        raise error_from_response(status, json.dumps(payload).encode())
    if event == "done":
        return ImageInfo.from_json(payload)
    return payload if isinstance(payload, dict) else {"message": payload}


def health() -> Call:
    return Call("GET", "/healthz")


# ---- responses ------------------------------------------------------------------------

def check(status: int, content: bytes, *, method: str, url: str) -> Any:
    """Raise the typed error for an error status; otherwise return the decoded JSON body
    (None for an empty body)."""
    if status >= 400:
        raise error_from_response(status, content, method=method, url=url)
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError as e:
        raise SandkastenAPIError(status, f"response is not JSON: {content[:200]!r}",
                                 "bad_response", method=method, url=url) from e


# ---- server-sent events ---------------------------------------------------------------

@dataclass
class SSEDecoder:
    """Turns text lines of an ``text/event-stream`` into ``(event, data)`` pairs
    (the WHATWG rules: ``event:``/``data:`` fields, multi-line data joined by newlines,
    ``:`` comments ignored, a blank line dispatches)."""

    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> tuple[str, str] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data and not self._event:
                return None
            out = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


#: Status of an ``error`` event by its code (the HTTP status is already 200 by then).
STREAM_ERROR_STATUS = {
    "not_found": 404, "session_not_found": 404, "conflict": 409, "session_busy": 409,
    "invalid_request": 400, "validation_error": 400, "cmd_too_large": 400,
    "image_not_found": 404, "manifest_unknown": 404, "unauthorized": 401,
}


def stream_event(event: str, data: str) -> str | ExecResult:
    """Interpret one event of ``/exec/stream``: ``chunk`` → text, ``done`` → the final
    result, ``error`` → the matching exception."""
    payload: Any
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        payload = data
    if event == "done":
        return ExecResult.from_json(dict(payload) if isinstance(payload, Mapping) else {})
    if event == "error":
        if isinstance(payload, Mapping):
            status = int(payload.get("status") or STREAM_ERROR_STATUS.get(
                str(payload.get("code", "")), 500))
            body = json.dumps(dict(payload)).encode()
            raise error_from_response(status, body)
        raise SandkastenAPIError(500, str(payload), "stream_error")
    if isinstance(payload, Mapping):
        for key in ("data", "chunk", "output", "text"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
        return ""
    return payload if isinstance(payload, str) else str(payload)


def with_output(result: ExecResult, chunks: list[str]) -> ExecResult:
    """The ``done`` event carries no output: the result's output is the chunks joined."""
    if result.output or not chunks:
        return result
    return dataclasses.replace(result, output="".join(chunks))


def uploaded_paths(data: Any) -> list[str]:
    """``{"ok": true, "files": [{"path", "bytes"}]}`` → the paths."""
    return [str(f["path"]) for f in unwrap_list(data, "files") if isinstance(f, Mapping)]


def stream_ended_early() -> ServerError:
    return ServerError(502, "the exec stream ended without a result", "stream_incomplete")


# ---- retries --------------------------------------------------------------------------

def may_retry(call: Call, *, sent: bool) -> bool:
    """Idempotent requests are retried after any connection failure. Others (exec, write,
    create) only when the connection could not be opened, so the daemon never saw them:
    a command is never run twice."""
    return call.idempotent or not sent


def backoff_seconds(attempt: int, *, base: float = 0.2, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter (attempt 0 → up to 0.2 s, then 0.4, 0.8, …)."""
    return random.uniform(0, min(cap, base * (2**attempt)))  # noqa: S311 - jitter, not crypto
