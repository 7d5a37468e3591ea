"""Image records: what ``images/<name>.json`` holds.

An :class:`ImageRecord` names an image and lists its layers bottom-most first; each
:class:`LayerRecord` points at an extracted layer directory by its ``diff_id`` (the sha256
of the uncompressed tar) and, when the compressed blob is kept, at that blob by ``digest``.
The JSON form is stable: unknown keys are ignored on read, so newer writers stay readable.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from imgbuilder.errors import StoreError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")

#: The config keys a session uses, copied from the image config's ``config`` object.
CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels", "ExposedPorts",
               "StopSignal", "Volumes")


def is_digest(value: str) -> bool:
    """True for ``sha256:`` followed by 64 lower-case hex digits."""
    return bool(_DIGEST_RE.match(value))


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest; raises StoreError for anything else."""
    if not is_digest(digest):
        raise StoreError(f"not a sha256 digest: {digest!r}")
    return digest.split(":", 1)[1]


def validate_name(name: str) -> str:
    """Image names become file names: letters, digits, ``_ . -``; at most 128 characters."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise StoreError(
            f"invalid image name {name!r}: use letters, digits, '_', '.', '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return name


@dataclass
class LayerRecord:
    """One layer: ``diff_id`` keys ``layers/<hex>/``; ``digest`` the compressed blob (if any)."""

    diff_id: str
    digest: str | None = None
    size: int = 0
    media_type: str = "application/vnd.oci.image.layer.v1.tar"
    unpacked_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRecord:
        return cls(
            diff_id=str(d["diff_id"]),
            digest=d.get("digest"),
            size=int(d.get("size") or 0),
            media_type=str(d.get("media_type") or "application/vnd.oci.image.layer.v1.tar"),
            unpacked_size=int(d.get("unpacked_size") or 0),
        )


@dataclass
class ImageRecord:
    """A named image: where it came from, its runtime config and its layers (bottom first)."""

    name: str
    reference: str = ""
    manifest_digest: str | None = None
    config_digest: str | None = None
    platform: str = "linux/amd64"
    created: str | None = None
    pulled_at: str | None = None
    source: str = "import"  # registry | import | bootstrap
    config: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    flattened: bool = False

    @property
    def size(self) -> int:
        """Bytes of file content once unpacked, summed over the layers."""
        return sum(layer.unpacked_size for layer in self.layers)

    @property
    def digest(self) -> str | None:
        """The identity shown by ``image list``: the manifest digest, else the config digest."""
        return self.manifest_digest or self.config_digest

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [layer.to_dict() for layer in self.layers]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(
            name=str(d["name"]),
            reference=str(d.get("reference") or ""),
            manifest_digest=d.get("manifest_digest"),
            config_digest=d.get("config_digest"),
            platform=str(d.get("platform") or "linux/amd64"),
            created=d.get("created"),
            pulled_at=d.get("pulled_at"),
            source=str(d.get("source") or "import"),
            config=dict(d.get("config") or {}),
            layers=[LayerRecord.from_dict(x) for x in d.get("layers") or []],
            flattened=bool(d.get("flattened", False)),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ImageRecord:
        try:
            data = json.loads(text)
            return cls.from_dict(data)
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"corrupt image record: {e}") from e


def runtime_config(image_config: dict[str, Any]) -> dict[str, Any]:
    """The parts of an OCI/Docker image config a session uses (``config.Env`` and friends)."""
    inner = image_config.get("config") or image_config.get("container_config") or {}
    out = {k: inner[k] for k in CONFIG_KEYS if inner.get(k) not in (None, "", [], {})}
    return out
