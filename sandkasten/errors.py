"""The daemon's error tree; every error has a stable ``code`` and an HTTP status.

    SandkastenError            anything the daemon, CLI or runtime raises on purpose
    ├── ConfigError            a bad config key or value (names the key)
    ├── NotFoundError          session, workspace or image unknown (404)
    ├── ConflictError          state does not allow the request (409)
    ├── ValidationError        a request that is malformed (400)
    └── RuntimeSetupError      the host cannot run sandboxes (cgroups, overlayfs, privileges)
"""

from __future__ import annotations


class SandkastenError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
