"""Tar member names, classified: pure functions, no I/O.

OCI layers mark deletions with whiteout files (image-spec ``layer.md``):

- ``dir/.wh.NAME`` hides ``dir/NAME`` of the layers below;
- ``dir/.wh..wh..opq`` makes ``dir`` opaque: nothing below shows through;
- other ``.wh..wh.*`` names are AUFS bookkeeping and carry no meaning for overlayfs.

overlayfs marks the same things differently, and the extracted layer uses its format so
that it can be a lowerdir as is: a whiteout is a 0:0 character device named ``NAME``, an
opaque directory carries the xattr ``trusted.overlay.opaque="y"``.

``split_name`` is the first line of defence against hostile archives: absolute names and
any ``..`` component are refused here, before any file system call.
"""

from __future__ import annotations

from typing import NamedTuple

from imgbuilder.errors import LayerError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
META_PREFIX = ".wh..wh."
OPAQUE_XATTR = "trusted.overlay.opaque"


class Member(NamedTuple):
    """What one tar member name means for the layer directory.

    ``kind`` is ``entry`` (create ``parts``), ``whiteout`` (hide ``parts``), ``opaque`` (make
    the directory ``parts`` opaque; ``()`` is the layer root) or ``ignore`` (AUFS metadata).
    """

    kind: str
    parts: tuple[str, ...]


def split_name(name: str) -> tuple[str, ...]:
    """Normalized path components of a member name; ``()`` is the layer root.

    ``./`` prefixes, repeated and trailing slashes and ``.`` components are dropped.
    Refused with LayerError: absolute names, ``..`` components, NUL bytes.
    """
    if "\x00" in name:
        raise LayerError(f"tar entry name contains a NUL byte: {name!r}")
    if name.startswith("/"):
        raise LayerError(f"absolute path in layer: {name!r}")
    parts = tuple(p for p in name.split("/") if p and p != ".")
    if ".." in parts:
        raise LayerError(f"path traversal in layer: {name!r}")
    return parts


def classify(name: str) -> Member:
    """Classify a member name (see the module docstring). Pure; raises LayerError."""
    plain = name[2:] if name.startswith("./") else name
    if plain and "/." not in plain and "//" not in plain and "\x00" not in plain and \
            plain[0] not in "./":
        # The common case, without a "." or ".." component or any dot-file: no whiteout.
        return Member("entry", tuple(plain.rstrip("/").split("/")))
    parts = split_name(name)
    if not parts:
        return Member("entry", ())
    base = parts[-1]
    if not base.startswith(WHITEOUT_PREFIX):
        return Member("entry", parts)
    if base == OPAQUE_MARKER:
        return Member("opaque", parts[:-1])
    if base.startswith(META_PREFIX):
        return Member("ignore", parts)
    target = base[len(WHITEOUT_PREFIX):]
    if target in ("", ".", ".."):
        raise LayerError(f"whiteout without a valid target: {name!r}")
    return Member("whiteout", (*parts[:-1], target))
