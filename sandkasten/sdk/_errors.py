"""Exceptions the SDK raises; httpx errors are translated here and nowhere else.

    SandkastenClientError            anything the SDK raises on purpose
    ├── SandkastenConnectionError    the daemon could not be reached (after retries where safe)
    ├── SandkastenTimeoutError       the daemon did not answer in time
    └── SandkastenAPIError           the daemon answered with an error status
        ├── BadRequestError          400: a malformed request (bad path, cmd too large, ...)
        ├── UnauthorizedError        401: missing or wrong API key
        ├── ForbiddenError           403: the request is not allowed (image not in allowed_images)
        ├── NotFoundError            404: session, workspace, file or image unknown
        ├── ConflictError            409: state does not allow the request
        ├── PayloadTooLargeError     413: request body over the daemon's limit
        ├── UnprocessableEntityError 422: well-formed JSON with invalid values
        └── ServerError              5xx: a fault in the daemon (logged there with a request id)

Every ``SandkastenAPIError`` carries ``status`` (HTTP status), ``code`` (the daemon's
stable error code, e.g. ``"not_found"``) and ``message`` (the daemon's human message).
"""

from __future__ import annotations

import json
from typing import Any


class SandkastenClientError(Exception):
    """Base class of every error the SDK raises."""


class SandkastenConnectionError(SandkastenClientError):
    """The daemon could not be reached: not running, wrong URL, or the connection dropped."""


class SandkastenTimeoutError(SandkastenClientError):
    """The daemon did not answer within the client's timeout."""


class SandkastenAPIError(SandkastenClientError):
    """The daemon answered with an error status and (usually) a JSON ``{error, code}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        method: str = "",
        url: str = "",
        body: Any = None,
    ) -> None:
        self.status = status
        self.code = code or _default_code(status)
        self.message = message
        self.method = method
        self.url = url
        self.body = body
        super().__init__(f"{status} {self.code}: {message}")


class BadRequestError(SandkastenAPIError):
    pass


class UnauthorizedError(SandkastenAPIError):
    pass


class ForbiddenError(SandkastenAPIError):
    pass


class NotFoundError(SandkastenAPIError):
    pass


class ConflictError(SandkastenAPIError):
    pass


class PayloadTooLargeError(SandkastenAPIError):
    pass


class UnprocessableEntityError(SandkastenAPIError):
    pass


class ServerError(SandkastenAPIError):
    pass


_BY_STATUS: dict[int, type[SandkastenAPIError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
}


def _default_code(status: int) -> str:
    return {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
        409: "conflict", 413: "payload_too_large", 422: "validation_error",
    }.get(status, "server_error" if status >= 500 else f"http_{status}")


def error_from_response(
    status: int, content: bytes, *, method: str = "", url: str = ""
) -> SandkastenAPIError:
    """Build the exception for an error response; pure, so it is tested with tables.

    The daemon answers ``{"error": MESSAGE, "code": CODE}``; FastAPI's own 422 answers
    ``{"detail": [...]}``; a proxy in between may answer plain text. All three give one
    readable message.
    """
    body: Any = None
    message = ""
    code: str | None = None
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # {"error": {"message": ..., "code": ...}}
            message = str(err.get("message", ""))
            code = err.get("code") or body.get("code")
        elif err is not None:
            message = str(err)
            code = body.get("code")
        elif "detail" in body:
            detail = body["detail"]
            if isinstance(detail, list):
                message = "; ".join(
                    f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}"
                    if isinstance(d, dict) else str(d)
                    for d in detail
                )
            else:
                message = str(detail)
        if body.get("hint"):
            message = f"{message} (hint: {body['hint']})" if message else str(body["hint"])
    if not message:
        text = content.decode("utf-8", "replace").strip() if content else ""
        message = text[:500] or f"HTTP {status}"
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else SandkastenAPIError)
    return cls(status, message, code if isinstance(code, str) else None,
               method=method, url=url, body=body)
