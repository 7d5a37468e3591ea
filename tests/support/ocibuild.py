"""Build OCI / Docker images from layer specs and push them to a test registry.

A layer is a list of :class:`Entry` (tar headers made by hand, as umoci's tests do), so
tests can express whiteouts (``.wh.x``), opaque directories (``.wh..wh..opq``), hardlinks,
setuid bits, owners, xattrs (PAX ``SCHILY.xattr.*``), fifos, devices and long names exactly.
``push_image`` uploads the layers (gzip, zstd or uncompressed), a config with the right
``rootfs.diff_ids`` and an OCI or Docker v2s2 manifest; ``push_index`` ties several
per-platform manifests into an OCI index or Docker manifest list.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field

import zstandard

from tests.support.registry import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    LocalRegistry,
    sha256,
)

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MTIME = 1_700_000_000


@dataclass
class Entry:
    """One tar member. ``kind``: file, dir, symlink, hardlink, fifo, char, block."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0
    mtime: int = MTIME


def file(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry(name, "file", data, mode, **kw)  # type: ignore[arg-type]


def directory(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, "dir", b"", mode, **kw)  # type: ignore[arg-type]


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", linkname=target)


def fifo(name: str, mode: int = 0o644) -> Entry:
    return Entry(name, "fifo", mode=mode)


def whiteout(path: str) -> Entry:
    """An OCI whiteout deleting ``path`` from the layers below."""
    parent, _, base = path.rstrip("/").rpartition("/")
    return file(f"{parent + '/' if parent else ''}.wh.{base}")


def opaque(dirpath: str) -> Entry:
    """Mark ``dirpath`` opaque: nothing below it from lower layers shows through."""
    return file(f"{dirpath.rstrip('/')}/.wh..wh..opq")


_KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
}


def build_tar(entries: list[Entry]) -> bytes:
    """A PAX tar of ``entries`` in order (xattrs as ``SCHILY.xattr.*`` records)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _KINDS[e.kind]
            ti.mode = e.mode
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = ""
            ti.mtime = e.mtime
            ti.linkname = e.linkname
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(compression)


def layer_media_type(fmt: str, compression: str) -> str:
    if fmt == "docker":
        return {"gzip": DOCKER_LAYER_GZIP, "none": DOCKER_LAYER_TAR,
                "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd"}[compression]
    return {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER_TAR}[compression]


@dataclass
class PushedImage:
    repo: str
    tag: str
    manifest_digest: str
    manifest: bytes
    media_type: str
    config: dict[str, object]
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str]
    blobs: dict[str, bytes]

    @property
    def manifest_size(self) -> int:
        return len(self.manifest)


def push_image(
    reg: LocalRegistry,
    repo: str,
    tag: str | None,
    layers: list[list[Entry] | bytes],
    *,
    compression: str | list[str] = "gzip",
    fmt: str = "oci",
    arch: str = "amd64",
    variant: str = "",
    run_config: dict[str, object] | None = None,
) -> PushedImage:
    """Push an image whose layers are entry lists (or ready tar bytes); returns its digests.

    With ``tag=None`` the manifest is pushed by digest only (for use in an index).
    """
    comps = compression if isinstance(compression, list) else [compression] * len(layers)
    descs, diff_ids, digests, blobs = [], [], [], {}
    for layer, comp in zip(layers, comps, strict=True):
        tar = layer if isinstance(layer, bytes) else build_tar(layer)
        blob = compress(tar, comp)
        digest = reg.push_blob(repo, blob)
        blobs[digest] = blob
        digests.append(digest)
        diff_ids.append(sha256(tar))
        descs.append({"mediaType": layer_media_type(fmt, comp), "digest": digest,
                      "size": len(blob)})
    config: dict[str, object] = {
        "architecture": arch, "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": run_config if run_config is not None else {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["/bin/sh"], "WorkingDir": "/work", "User": "1000:1000",
            "Labels": {"org.example.test": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    config_digest = reg.push_blob(repo, config_bytes)
    media_type = DOCKER_MANIFEST if fmt == "docker" else OCI_MANIFEST
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": DOCKER_CONFIG if fmt == "docker" else OCI_CONFIG,
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": descs,
    }).encode()
    mdigest = reg.push_manifest(repo, tag or sha256(manifest), manifest, media_type)
    return PushedImage(repo, tag or "", mdigest, manifest, media_type, config, config_digest,
                       digests, diff_ids, blobs)


def push_index(
    reg: LocalRegistry, repo: str, tag: str, images: list[PushedImage], *, fmt: str = "oci"
) -> str:
    """Push an index (``fmt='oci'``) or manifest list (``'docker'``) over ``images``."""
    entries = []
    for im in images:
        plat: dict[str, str] = {"os": "linux", "architecture": str(im.config["architecture"])}
        if im.config.get("variant"):
            plat["variant"] = str(im.config["variant"])
        entries.append({"mediaType": im.media_type, "digest": im.manifest_digest,
                        "size": im.manifest_size, "platform": plat})
    media_type = DOCKER_LIST if fmt == "docker" else OCI_INDEX
    doc = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}).encode()
    return reg.push_manifest(repo, tag, doc, media_type)
