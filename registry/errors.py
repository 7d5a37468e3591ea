"""The registry package's error tree.

    RegistryError                 anything this package raises
    ├── ReferenceError_           an image reference that does not parse
    ├── AuthError                 credentials refused or missing (names the registry)
    ├── NotFoundError             repository, tag or blob unknown to the registry
    ├── PlatformError             no manifest for the requested platform (lists those available)
    ├── ManifestError             a manifest or config that is malformed or of an unsupported kind
    ├── DigestMismatchError       bytes received do not match the expected digest or size
    └── UnreachableError          connection refused, DNS failure, TLS failure, timeouts,
                                  or a registry that keeps failing (5xx, 429) after retries

Each carries a one-line message fit for a terminal and an optional ``hint``. Foreign
exceptions (httpx, json, OSError from credential helpers) are translated into this tree in
:mod:`registry.transport` and :mod:`registry.auth`; nothing else escapes the package.
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


class ReferenceError_(RegistryError):  # the builtin ReferenceError is about weakrefs
    """An image reference that does not follow the distribution grammar."""

    code = "invalid_reference"


InvalidReferenceError = ReferenceError_


class AuthError(RegistryError):
    """The registry refused the credentials we sent, or wanted some and we had none."""

    code = "registry_auth"


class NotFoundError(RegistryError):
    """The repository, tag, manifest or blob does not exist on the registry."""

    code = "not_found"


class PlatformError(RegistryError):
    """No manifest in an index matches the requested platform."""

    code = "no_matching_platform"

    def __init__(
        self, message: str, *, available: list[str] | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.available = available or []


class ManifestError(RegistryError):
    """A manifest, index or config that is malformed or of a kind we do not pull."""

    code = "bad_manifest"


class DigestMismatchError(RegistryError):
    """Content whose sha256 or size differs from what the reference or manifest promised."""

    code = "digest_mismatch"


class UnreachableError(RegistryError):
    """The registry could not be reached, or kept failing after every retry."""

    code = "registry_unreachable"
