"""Every error leaves the API as JSON ``{"error": "...", "code": "...", "hint"?: "..."}``.

Translation happens here, once: the daemon's :class:`~sandkasten.errors.SandkastenError`
tree carries its status and code; request validation becomes 400 ``invalid_request``;
OS errors from file operations get their natural status; anything else is a real fault:
500 ``internal`` with a request id, logged with its traceback, never sent to the client.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sandkasten.errors import SandkastenError

log = logging.getLogger("sandkasten")


class ErrorBody(BaseModel):
    error: str
    code: str
    hint: str | None = None
    request_id: str | None = None


Responses = dict[int | str, dict[str, Any]]


def _err(status: int, description: str) -> Responses:
    return {status: {"model": ErrorBody, "description": description}}


AUTH = _err(401, "missing or wrong API key (`Authorization: Bearer <api_key>`)")
BAD = _err(400, "malformed request (invalid JSON, missing or invalid fields)")
NOT_FOUND = _err(404, "unknown session, workspace, image or file")
FORBIDDEN = _err(403, "the sandbox user may not do that (file permissions)")
CONFLICT = _err(409, "the resource's state does not allow the request")
TOO_LARGE = _err(413, "request body over the limit")
POLICY = _err(422, "refused by policy (image not allowed, workspaces disabled)")


def responses(*groups: Responses) -> Responses:
    out: Responses = {}
    for g in (AUTH, BAD, *groups):
        out.update(g)
    return out


def error_response(
    status: int,
    message: str,
    code: str,
    hint: str | None = None,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "code": code}
    if hint:
        body["hint"] = hint
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def internal_body(request_id: str) -> dict[str, str]:
    return {
        "error": f"internal error (request id {request_id})",
        "code": "internal",
        "request_id": request_id,
    }


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "json_invalid":
        return f"request body is not valid JSON: {err.get('ctx', {}).get('error', msg)}"
    if err.get("type") in ("model_attributes_type", "dict_type") and not where:
        return "request body must be a JSON object"
    return f"{where}: {msg}" if where else msg


_OS_STATUS = {
    errno.ENOENT: (404, "file_not_found"),
    errno.ENOTDIR: (409, "path_conflict"),
    errno.EISDIR: (409, "path_conflict"),
    errno.ELOOP: (409, "path_conflict"),
    errno.ENAMETOOLONG: (400, "invalid_path"),
    errno.EEXIST: (409, "exists"),
    errno.ENOTEMPTY: (409, "not_empty"),
    errno.EACCES: (403, "permission_denied"),
    errno.EPERM: (403, "permission_denied"),
    errno.EROFS: (409, "read_only"),
    errno.ENOSPC: (413, "no_space"),
    errno.EDQUOT: (413, "no_space"),
    errno.EFBIG: (413, "file_too_large"),
    # A runner connection that broke under a request: the sandbox died or is being torn down.
    errno.ECONNRESET: (409, "sandbox_gone"),
    errno.EPIPE: (409, "sandbox_gone"),
    errno.ECONNREFUSED: (409, "sandbox_gone"),
}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette reports only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(SandkastenError)
    async def _sandkasten(request: Request, exc: SandkastenError) -> JSONResponse:
        if exc.status >= 500:
            rid = _request_id(request)
            log.error("request failed request_id=%s code=%s error=%s", rid, exc.code, exc)
            return error_response(exc.status, exc.message, exc.code, exc.hint, rid)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, exc.code, exc.hint, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        msg = "; ".join(_describe(e) for e in errs[:3]) or "invalid request"
        return error_response(400, msg, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(exc.status_code, str(exc.detail), code, headers=headers or None)

    @app.exception_handler(asyncio.IncompleteReadError)
    async def _eof(request: Request, exc: asyncio.IncompleteReadError) -> JSONResponse:
        return error_response(409, "the sandbox's runner stopped answering", "sandbox_gone")

    @app.exception_handler(OSError)
    async def _os(request: Request, exc: OSError) -> JSONResponse:
        status, code = _OS_STATUS.get(exc.errno or 0, (0, ""))
        if not status:
            raise exc  # a real fault: the middleware answers 500 and logs it
        what = f": {exc.filename}" if exc.filename else ""
        return error_response(status, f"{exc.strerror or exc}{what}", code)
