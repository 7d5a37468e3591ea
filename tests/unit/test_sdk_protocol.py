"""The SDK's pure core: URLs, paths, request bodies, error mapping, SSE, retry policy."""

from __future__ import annotations

import base64
import json

import pytest

from sandkasten.sdk import (
    BadRequestError,
    ConflictError,
    ExecResult,
    NotFoundError,
    PayloadTooLargeError,
    SandkastenAPIError,
    ServerError,
    UnauthorizedError,
)
from sandkasten.sdk import _protocol as P
from sandkasten.sdk._errors import error_from_response
from sandkasten.sdk._models import FileEntry, SessionInfo, unwrap_list


@pytest.mark.parametrize(("given", "want"), [
    ("http://localhost:8080", "http://localhost:8080"),
    ("http://localhost:8080/", "http://localhost:8080"),
    ("http://localhost:8080/v1", "http://localhost:8080"),
    ("http://localhost:8080/v1/", "http://localhost:8080"),
    ("localhost:8080", "http://localhost:8080"),
    ("https://sk.example/prefix", "https://sk.example/prefix"),
])
def test_normalize_base_url(given: str, want: str) -> None:
    assert P.normalize_base_url(given) == want


@pytest.mark.parametrize(("given", "want"), [
    ("test.py", "/workspace/test.py"),
    ("dir/a.txt", "/workspace/dir/a.txt"),
    ("/etc/hostname", "/etc/hostname"),
    ("/workspace/x", "/workspace/x"),
])
def test_relative_paths_land_in_workspace(given: str, want: str) -> None:
    assert P.sandbox_path(given) == want
    assert P.write_file("sessions", "abc", given, "x").json["path"] == want


def test_write_body_text_and_bytes() -> None:
    assert P.write_file("sessions", "s1", "a", "hi").json == {"path": "/workspace/a", "text": "hi"}
    blob = bytes(range(256))
    body = P.write_file("sessions", "s1", "b", blob).json
    assert base64.b64decode(body["content_base64"]) == blob and "text" not in body
    with pytest.raises(TypeError):
        P.write_file("sessions", "s1", "c", 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "..", ".", "a/b"])
def test_ids_cannot_escape_the_url(bad: str) -> None:
    with pytest.raises(ValueError):
        P.get_session(bad)


def test_create_session_sends_only_given_fields() -> None:
    assert P.create_session("python").json == {"image": "python"}
    call = P.create_session(None, ttl_seconds=60, workspace_id="w1", mem_limit_mb=256)
    assert call.method == "POST" and call.path == "/v1/sessions"
    assert call.json == {"ttl_seconds": 60, "workspace_id": "w1", "mem_limit_mb": 256}


def test_exec_call_waits_longer_than_the_command() -> None:
    c = P.exec_call("s", "sleep 1", timeout_ms=30_000, default_reply_timeout=600)
    assert c.json == {"cmd": "sleep 1", "timeout_ms": 30_000}
    assert c.timeout == 30 + P.EXEC_REPLY_MARGIN_S
    assert P.exec_call("s", "x", default_reply_timeout=600).timeout == 600
    split = P.exec_call("s", "x", split_output=True, default_reply_timeout=1)
    assert split.json == {"cmd": "x", "split_output": True}
    stream = P.exec_call("s", "x", stream=True, raw_output=True, default_reply_timeout=1)
    assert stream.path == "/v1/sessions/s/exec/stream" and stream.json["raw_output"] is True
    with pytest.raises(ValueError):
        P.exec_call("s", "x", timeout_ms=0, default_reply_timeout=1)


@pytest.mark.parametrize(("status", "body", "cls", "code", "message"), [
    (404, b'{"error":"session not found: abc","code":"not_found"}', NotFoundError,
     "not_found", "session not found: abc"),
    (401, b'{"error":"missing or invalid API key","code":"unauthorized"}', UnauthorizedError,
     "unauthorized", "missing or invalid API key"),
    (400, b'{"error":"cmd too large","code":"cmd_too_large","hint":"use fs/write"}',
     BadRequestError, "cmd_too_large", "cmd too large (hint: use fs/write)"),
    (409, b'{"error":"busy","code":"conflict"}', ConflictError, "conflict", "busy"),
    (413, b"", PayloadTooLargeError, "payload_too_large", "HTTP 413"),
    (422, b'{"detail":[{"loc":["body","cmd"],"msg":"Field required"}]}',
     SandkastenAPIError, "validation_error", "body.cmd: Field required"),
    (500, b"Internal Server Error", ServerError, "server_error", "Internal Server Error"),
    (502, b"<html>bad gateway</html>", ServerError, "server_error", "<html>bad gateway</html>"),
    (418, b'{"error":{"message":"teapot","code":"tea"}}', SandkastenAPIError, "tea", "teapot"),
])
def test_error_mapping(status: int, body: bytes, cls: type, code: str, message: str) -> None:
    err = error_from_response(status, body, method="GET", url="http://x/v1/y")
    assert isinstance(err, cls)
    assert (err.status, err.code, err.message) == (status, code, message)
    assert str(status) in str(err) and message in str(err)


def test_check_returns_json_and_raises() -> None:
    assert P.check(200, b'{"ok":true}', method="GET", url="u") == {"ok": True}
    assert P.check(204, b"", method="DELETE", url="u") is None
    with pytest.raises(NotFoundError):
        P.check(404, b'{"error":"x","code":"not_found"}', method="GET", url="u")


def test_sse_decoder() -> None:
    dec = P.SSEDecoder()
    lines = [": keepalive", "event: chunk", 'data: {"data":"a"}', "", "event: chunk",
             "data: line1", "data: line2", "", 'data: {"x":1}', "",
             "event: done", 'data: {"exit_code":3,"cwd":"/tmp"}', ""]
    events = [e for e in (dec.feed(line) for line in lines) if e]
    assert events == [("chunk", '{"data":"a"}'), ("chunk", "line1\nline2"),
                      ("message", '{"x":1}'), ("done", '{"exit_code":3,"cwd":"/tmp"}')]
    assert dec.feed("") is None


def test_stream_events() -> None:
    assert P.stream_event("chunk", json.dumps({"data": "hello\n"})) == "hello\n"
    assert P.stream_event("chunk", json.dumps({"output": "x"})) == "x"
    assert P.stream_event("chunk", "plain text") == "plain text"
    done = P.stream_event("done", json.dumps({"exit_code": 0, "cwd": "/workspace",
                                              "duration_ms": 5}))
    assert isinstance(done, ExecResult) and done.exit_code == 0 and done.cwd == "/workspace"
    with pytest.raises(SandkastenAPIError) as e:
        P.stream_event("error", json.dumps({"error": "timed out", "code": "timeout"}))
    assert e.value.code == "timeout" and e.value.message == "timed out"


@pytest.mark.parametrize(("method", "sent", "retry"), [
    ("GET", False, True), ("GET", True, True), ("DELETE", True, True), ("PUT", True, True),
    ("POST", False, True),   # the connection never opened: nothing ran
    ("POST", True, False),   # an exec may have started: never run it twice
])
def test_retry_policy(method: str, sent: bool, retry: bool) -> None:
    assert P.may_retry(P.Call(method, "/v1/x"), sent=sent) is retry


def test_backoff_grows_and_is_capped() -> None:
    for attempt in range(10):
        assert 0 <= P.backoff_seconds(attempt) <= min(5.0, 0.2 * 2**attempt)


def test_models_keep_unknown_fields() -> None:
    info = SessionInfo.from_json({"id": "a1", "image": "python", "status": "running",
                                  "cwd": "/workspace", "workspace_id": None,
                                  "created_at": "2026-01-02T03:04:05Z", "new_field": 1})
    assert info.id == "a1" and info.created_at is not None and info.created_at.year == 2026
    assert info.extra == {"new_field": 1}
    assert unwrap_list({"sessions": [1]}, "sessions") == [1]
    assert unwrap_list([2], "sessions") == [2]
    assert unwrap_list({"entries": [3]}, "sessions") == [3]
    assert FileEntry.from_json({"name": "d", "is_dir": True}).is_dir
    r = ExecResult.from_json({"exit_code": 0, "cwd": "/w", "output": "4\n", "truncated": False,
                              "duration_ms": 3})
    assert r.ok and r.output == "4\n"


def test_stream_result_gets_the_chunks_and_uploads_their_paths() -> None:
    done = ExecResult.from_json({"exit_code": 0, "cwd": "/w", "duration_ms": 1})
    assert P.with_output(done, ["a\n", "b\n"]).output == "a\nb\n"
    assert P.with_output(done, []).output == ""
    assert P.uploaded_paths({"ok": True, "files": [{"path": "/workspace/a", "bytes": 1},
                                                   {"path": "/workspace/b", "bytes": 2}]}) \
        == ["/workspace/a", "/workspace/b"]


def test_pull_events() -> None:
    from sandkasten.sdk import ImageInfo

    assert P.pull_event("progress", '{"layer":"sha256:aa","status":"done"}') == \
        {"layer": "sha256:aa", "status": "done"}
    img = P.pull_event("done", json.dumps({"name": "py", "digest": "sha256:bb", "layers": 2,
                                           "pulled_at": "2026-01-01T00:00:00Z"}))
    assert isinstance(img, ImageInfo) and img.layers == 2 and img.pulled_at is not None
    with pytest.raises(NotFoundError):
        P.pull_event("error", '{"error":"manifest unknown","code":"manifest_unknown"}')
    with pytest.raises(ServerError):
        P.pull_event("error", '{"error":"connection reset","code":"pull_failed"}')
