"""Manifests, indexes, image configs and platform choice (pure; bytes in, objects out).

Understood media types:

- OCI image manifest ``application/vnd.oci.image.manifest.v1+json`` and Docker v2 schema 2
  ``application/vnd.docker.distribution.manifest.v2+json`` → :class:`Manifest`;
- OCI image index ``application/vnd.oci.image.index.v1+json`` and Docker manifest list
  ``application/vnd.docker.distribution.manifest.list.v2+json`` → :class:`Index`.

Docker schema 1 (signed or not) is refused with a clear :class:`ManifestError`: it has no
config blob and no diff_ids, so its layers could not be verified.

Platforms follow containerd's normalization: ``x86_64``→``amd64``, ``aarch64``→``arm64``
(variant ``v8`` is arm64's default and compares equal to no variant), ``armhf``→``arm/v7``,
``armel``→``arm/v6``, and ``arm`` without variant means ``v7``.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from registry.errors import ManifestError, PlatformError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
#: The Accept header a pull sends: everything we can use, best first.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}


@dataclass(frozen=True)
class Platform:
    """An os/architecture/variant triple, normalized."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s

    def matches(self, other: Platform) -> bool:
        """True if ``other`` (an index entry) can serve a request for ``self``."""
        a, b = normalize_platform(self), normalize_platform(other)
        if a.os != b.os or a.architecture != b.architecture:
            return False
        return not a.variant or a.variant == b.variant


_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "386": ("386", ""),
}


def normalize_platform(p: Platform) -> Platform:
    """Apply containerd's aliases: arm64's default variant is v8, arm's is v7."""
    os_ = p.os.lower()
    arch, variant = _ARCH_ALIASES.get(p.architecture.lower(), (p.architecture.lower(), ""))
    variant = (p.variant or variant).lower()
    if arch == "arm64" and variant in ("v8", "8"):
        variant = ""
    if arch == "arm":
        variant = variant or "v7"
        if variant.isdigit():
            variant = f"v{variant}"
    return Platform(os_, arch, variant)


def parse_platform(s: str) -> Platform:
    """``linux/arm64``, ``linux/arm/v7``, ``arm64`` (os defaults to linux) → :class:`Platform`."""
    parts = s.strip().split("/")
    if not s.strip() or len(parts) > 3 or any(not p for p in parts):
        raise PlatformError(
            f"invalid platform {s!r}: use os/arch[/variant], e.g. linux/arm64 or linux/arm/v7"
        )
    if len(parts) == 1:
        parts = ["linux", parts[0]]
    return normalize_platform(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else ""))


def host_platform() -> Platform:
    """The platform of this machine (``linux/amd64`` on x86_64)."""
    return normalize_platform(Platform("linux", _platform.machine() or "amd64"))


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about one blob."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2s2): one config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): one manifest per platform."""

    media_type: str
    manifests: list[Descriptor]

    def platforms(self) -> list[str]:
        """The distinct platforms offered, skipping attestation entries (``unknown/unknown``)."""
        seen: list[str] = []
        for d in self.manifests:
            if d.platform and d.platform.os != "unknown" and str(d.platform) not in seen:
                seen.append(str(d.platform))
        return seen


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config a pull needs: platform, diff_ids and the run config."""

    os: str
    architecture: str
    variant: str
    diff_ids: list[str]
    config: dict[str, Any]
    created: str | None
    raw: dict[str, Any]

    @property
    def platform(self) -> Platform:
        return normalize_platform(Platform(self.os, self.architecture, self.variant))


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return doc


def _descriptor(d: Any, what: str) -> Descriptor:
    if not isinstance(d, dict):
        raise ManifestError(f"{what}: descriptor is not an object")
    try:
        media_type = str(d.get("mediaType", ""))
        digest = str(d["digest"])
        size = int(d["size"])
    except (KeyError, TypeError, ValueError):
        raise ManifestError(f"{what}: descriptor lacks digest or size") from None
    if size < 0 or not digest.startswith("sha256:") or len(digest) != 71:
        raise ManifestError(f"{what}: unsupported digest {digest!r} or size {size}")
    plat = None
    p = d.get("platform")
    if isinstance(p, dict) and p.get("os") and p.get("architecture"):
        plat = Platform(str(p["os"]), str(p["architecture"]), str(p.get("variant", "")))
    urls = tuple(str(u) for u in d.get("urls") or ())
    return Descriptor(media_type, digest, size, plat, urls, dict(d.get("annotations") or {}))


def detect_media_type(data: bytes, header: str | None) -> str:
    """The media type of a manifest: the Content-Type header, else the document's own field."""
    ct = (header or "").split(";", 1)[0].strip()
    if ct in MANIFEST_TYPES + INDEX_TYPES + (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        return ct
    doc = _load(data, "manifest")
    mt = doc.get("mediaType")
    if isinstance(mt, str) and mt:
        return mt
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc and "config" in doc:
        return OCI_MANIFEST
    return ct or "unknown"


def parse_manifest(data: bytes, media_type: str) -> Manifest | Index:
    """Parse manifest bytes; raise :class:`ManifestError` for schema 1 and unknown kinds."""
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise ManifestError(
            "Docker schema 1 manifests are not supported (no config, layers unverifiable)",
            hint="push the image again with a current client to get a schema 2 / OCI manifest",
        )
    doc = _load(data, "manifest")
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("index has no 'manifests' list")
        return Index(media_type, [_descriptor(m, "index entry") for m in entries])
    if media_type in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list) or "config" not in doc:
            raise ManifestError("manifest has no 'config' or no 'layers' list")
        config = _descriptor(doc["config"], "manifest config")
        if config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
            raise ManifestError(
                f"not a container image (config media type {config.media_type or 'missing'!r})",
                hint="this reference names an OCI artifact, not something that can be run",
            )
        descs = [_descriptor(layer, "manifest layer") for layer in layers]
        for d in descs:
            if d.media_type not in LAYER_TYPES:
                raise ManifestError(f"unsupported layer media type {d.media_type!r}")
        return Manifest(media_type, config, descs, dict(doc.get("annotations") or {}))
    raise ManifestError(f"unsupported manifest media type {media_type!r}")


def parse_config(data: bytes) -> ImageConfig:
    """Parse an image config; require ``rootfs.diff_ids`` so every layer can be verified."""
    doc = _load(data, "image config")
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and d.startswith("sha256:") and len(d) == 71 for d in diff_ids
    ):
        raise ManifestError("image config has no valid rootfs.diff_ids")
    cfg = doc.get("config") or {}
    return ImageConfig(
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        variant=str(doc.get("variant", "")),
        diff_ids=list(diff_ids),
        config=cfg if isinstance(cfg, dict) else {},
        created=doc.get("created") if isinstance(doc.get("created"), str) else None,
        raw=doc,
    )


def select_platform(index: Index, wanted: Platform | None = None) -> Descriptor:
    """The index entry for ``wanted`` (default: this host); :class:`PlatformError` lists others.

    An exact variant match is preferred; a request without variant takes the first entry
    of the right os/arch (for ``arm`` that is v7, the normalized default).
    """
    want = normalize_platform(wanted or host_platform())
    candidates = [d for d in index.manifests if d.media_type in (*MANIFEST_TYPES, "")]
    for d in candidates:
        if d.platform and normalize_platform(d.platform) == want:
            return d
    for d in candidates:
        if d.platform and want.matches(d.platform):
            return d
    available = index.platforms()
    raise PlatformError(
        f"no image for platform {want} (available: {', '.join(available) or 'none'})",
        available=available,
        hint="choose one with --platform",
    )
