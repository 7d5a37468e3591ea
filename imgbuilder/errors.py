"""The imgbuilder package's error tree.

    ImageError                 anything this package raises
    ├── ImageNotFoundError     no image of that name in the store
    ├── LayerError             a layer that cannot be extracted safely or is corrupt
    ├── StoreError             the data directory is unusable (filesystem, permissions, space)
    └── ImportFormatError      a tarball that is neither a rootfs, a docker save nor an OCI layout

Each carries a one-line message and an optional ``hint`` (the command that fixes it).
"""

from __future__ import annotations


class ImageError(Exception):
    """Base of every error raised by :mod:`imgbuilder`."""

    code = "image_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ImageNotFoundError(ImageError):
    """No image of that name in the store; the hint names the commands that create one."""

    code = "image_not_found"


class LayerError(ImageError):
    """A layer that cannot be extracted safely, is corrupt, or does not match its digest."""

    code = "layer_error"


class StoreError(ImageError):
    """The data directory is unusable: filesystem features, permissions or free space."""

    code = "store_error"


class ImportFormatError(ImageError):
    """An input that is neither a rootfs tarball, a ``docker save`` archive nor an OCI layout."""

    code = "import_format"
