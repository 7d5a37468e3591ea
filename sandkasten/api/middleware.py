"""Pure ASGI middleware (no per-request task or buffering, so streaming stays streaming).

- ``JsonBodyMiddleware``: curl's ``-d '{...}'`` sends JSON labelled
  ``application/x-www-form-urlencoded``. No endpoint takes urlencoded forms, so that label
  is read as JSON, which keeps the seed guide's curl lines working verbatim.
- Request ids: every request gets ``X-Request-ID`` (the client's, if it sent a sane one),
  echoed in the response and written to the log line of a 500.
- Body limits: ``Content-Length`` over the endpoint's limit is refused with 413 before a
  byte is read; bodies without a length are counted as they arrive.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandkasten.api.errors import internal_body
from sandkasten.errors import PayloadTooLargeError

log = logging.getLogger("sandkasten")

MiB = 1 << 20
MAX_JSON_BODY = 64 * MiB  # fs/write of a 48 MiB file in base64
MAX_UPLOAD_BODY = 1024 * MiB  # multipart uploads (spooled to disk by python-multipart)
_RID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


def _limit(path: str, headers: dict[bytes, bytes]) -> int | None:
    if path.endswith("/archive"):
        return None  # tar import streams to disk
    ctype = headers.get(b"content-type", b"")
    if ctype.startswith(b"multipart/"):
        return MAX_UPLOAD_BODY
    return MAX_JSON_BODY


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        headers = dict(raw_headers)
        rid = headers.get(b"x-request-id", b"")
        request_id = rid.decode() if _RID.match(rid) else secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = request_id

        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype == b"application/x-www-form-urlencoded":
            scope = dict(scope)
            scope["headers"] = [
                (k, b"application/json" if k == b"content-type" else v) for k, v in raw_headers
            ]

        limit = _limit(scope["path"], headers)
        if limit is not None:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                await _too_large(send, limit, request_id)
                return
            receive = _counting(receive, limit)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A real fault: logged with its traceback and request id; the client gets the id,
            # never the traceback.
            log.exception(
                "internal error request_id=%s %s %s",
                request_id,
                scope.get("method"),
                scope.get("path"),
            )
            if started:
                return  # the response is under way: the connection just ends
            await _send_json(send, 500, internal_body(request_id), request_id)


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError(f"request body over the {limit // MiB} MiB limit")
        return message

    return wrapped


async def _too_large(send: Send, limit: int, request_id: str) -> None:
    body = {"error": f"request body over the {limit // MiB} MiB limit", "code": "payload_too_large"}
    await _send_json(send, 413, body, request_id)


async def _send_json(send: Send, status: int, body: dict[str, Any], request_id: str) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
