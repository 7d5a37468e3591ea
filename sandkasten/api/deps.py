"""Request dependencies: API-key authentication and access to the daemon's parts."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sandkasten.errors import UnauthorizedError
from sandkasten.session.manager import SessionManager

bearer = HTTPBearer(
    auto_error=False,
    description="The daemon's `api_key` from sandkasten.yaml (`Authorization: Bearer <api_key>`).",
)


async def require_api_key(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Refuse the request unless it carries the configured key (no key configured: open)."""
    key: str = request.app.state.config.api_key
    if not key:
        return
    given = creds.credentials if creds is not None else ""
    # Constant-time comparison: the time taken does not reveal how much of a guess matched.
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise UnauthorizedError(
            "missing or invalid API key" if given else "missing API key",
            hint="send the header 'Authorization: Bearer <api_key>' (api_key in sandkasten.yaml)",
        )


async def manager(request: Request) -> SessionManager:
    """The session manager (async: a plain function would cost a worker-thread hop)."""
    m: SessionManager = request.app.state.manager
    return m


Manager = Annotated[SessionManager, Depends(manager)]
