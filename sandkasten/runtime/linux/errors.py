"""Errors of the Linux driver, under the daemon's tree (``sandkasten.errors``).

    RuntimeSetupError
    └── SessionSetupError    one sandbox could not be built (names the failed step)
    SandkastenError
    ├── ImageLayoutError     the image cannot be mounted as it is (too many layers...)
    └── SandboxGoneError     the sandbox's runner is not answering any more
"""

from __future__ import annotations

from sandkasten.errors import RuntimeSetupError, SandkastenError


class SessionSetupError(RuntimeSetupError):
    code = "session_setup_failed"
    status = 500


class ImageLayoutError(SandkastenError):
    code = "invalid_image"
    status = 400


class SandboxGoneError(SandkastenError):
    code = "sandbox_gone"
    status = 409
