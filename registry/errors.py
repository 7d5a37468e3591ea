"""The registry package's error tree.

    RegistryError                 anything this package raises
    ├── ReferenceError_           an image reference that does not parse
    ├── AuthError                 credentials refused or missing (names the registry)
    ├── NotFoundError             repository, tag or blob unknown to the registry
    ├── PlatformError             no manifest for the requested platform (lists those available)
    ├── DigestMismatchError       bytes received do not match the expected digest or size
    └── UnreachableError          connection refused, DNS failure, TLS failure, timeouts

Each carries a one-line message fit for a terminal and an optional ``hint``.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error raised by :mod:`registry`."""

    code = "registry_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
