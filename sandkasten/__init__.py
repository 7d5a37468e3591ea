"""Sandkasten: a self-hosted sandbox runtime for AI agents.

``from sandkasten import SandboxClient`` loads only the SDK (httpx), lazily, so importing
this package stays light and works on any OS; the daemon's modules load when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


if TYPE_CHECKING:
    from sandkasten.sdk import (
        ExecResult,
        NotFoundError,
        SandboxClient,
        SandkastenAPIError,
        SandkastenClientError,
        Session,
        SplitExecResult,
        SyncSandboxClient,
        SyncSession,
        UnauthorizedError,
    )

__all__ = [
    "ExecResult",
    "NotFoundError",
    "SandboxClient",
    "SandkastenAPIError",
    "SandkastenClientError",
    "Session",
    "SplitExecResult",
    "SyncSandboxClient",
    "SyncSession",
    "UnauthorizedError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from sandkasten import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'sandkasten' has no attribute {name!r}")
