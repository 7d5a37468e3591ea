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


class ConfigError(SandkastenError):
    code = "config_error"


class ValidationError(SandkastenError):
    code = "invalid_request"
    status = 400


class UnauthorizedError(SandkastenError):
    code = "unauthorized"
    status = 401


class NotFoundError(SandkastenError):
    code = "not_found"
    status = 404


class ConflictError(SandkastenError):
    code = "conflict"
    status = 409


class PayloadTooLargeError(SandkastenError):
    code = "payload_too_large"
    status = 413


class UnprocessableError(SandkastenError):
    """A well-formed request the daemon's policy refuses (image not allowed, feature disabled)."""

    code = "unprocessable"
    status = 422


def with_code(err: SandkastenError, code: str) -> SandkastenError:
    """Give one error instance a more precise stable code (``image_not_found``, …)."""
    err.code = code
    return err
class RuntimeSetupError(SandkastenError):
    """The host cannot run sandboxes as configured (cgroups, overlayfs, privileges)."""

    code = "runtime_setup"
    status = 503


CGROUP_HINT = (
    "Sandkasten needs cgroup v2 (or cgroup v1 with the memory, cpu and pids controllers) "
    "to limit sandboxes. On WSL2, add to C:\\Users\\<YourUsername>\\.wslconfig under [wsl2]: "
    "kernelCommandLine=systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all, "
    "then run `wsl --shutdown` in PowerShell, wait 5-10 seconds, start WSL again and check "
    "that `stat -fc %T /sys/fs/cgroup` prints cgroup2fs. "
    "To run without limits anyway, set allow_unlimited: true in the config."
)


class CgroupsUnavailableError(RuntimeSetupError):
    """Neither cgroup v2 nor cgroup v1 can enforce memory, cpu and pids limits here."""

    code = "cgroups_unavailable"

    def __init__(self, message: str, *, hint: str | None = CGROUP_HINT) -> None:
        super().__init__(message, hint=hint)
