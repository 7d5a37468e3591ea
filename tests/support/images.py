"""Build layer tarballs and OCI image layouts by hand for the image-store tests.

``TarBuilder`` writes members with exact metadata (types, owners, modes, xattrs, long
names, hardlinks, whiteouts) in any tar format; ``write_oci_layout`` lays out blobs,
manifest, config and index as the OCI image-layout spec says, so tests need neither
Docker nor a registry to make images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import zstandard

MTIME = 1_700_000_000


class TarBuilder:
    """An in-memory tar with members added by type; ``bytes()`` returns the archive."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=fmt,  # noqa: SIM115
                               encoding="utf-8", errors="surrogateescape")

    def _info(self, name: str, type_: bytes, mode: int, uid: int, gid: int,
              xattrs: dict[str, bytes] | None, mtime: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, mtime
        ti.uname = ti.gname = ""
        if xattrs:
            ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                              for k, v in xattrs.items()}
        return ti

    def dir(self, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
            xattrs: dict[str, bytes] | None = None, mtime: int = MTIME) -> TarBuilder:
        self.tf.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid, xattrs, mtime))
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
             xattrs: dict[str, bytes] | None = None, mtime: int = MTIME) -> TarBuilder:
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid, xattrs, mtime)
        ti.size = len(data)
        self.tf.addfile(ti, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str, uid: int = 0, gid: int = 0) -> TarBuilder:
        ti = self._info(name, tarfile.SYMTYPE, 0o777, uid, gid, None, MTIME)
        ti.linkname = target
        self.tf.addfile(ti)
        return self

    def hardlink(self, name: str, target: str) -> TarBuilder:
        ti = self._info(name, tarfile.LNKTYPE, 0o644, 0, 0, None, MTIME)
        ti.linkname = target
        self.tf.addfile(ti)
        return self

    def device(self, name: str, kind: bytes, major: int = 0, minor: int = 0,
               mode: int = 0o666, uid: int = 0, gid: int = 0) -> TarBuilder:
        ti = self._info(name, kind, mode, uid, gid, None, MTIME)
        ti.devmajor, ti.devminor = major, minor
        self.tf.addfile(ti)
        return self

    def fifo(self, name: str, mode: int = 0o644) -> TarBuilder:
        self.tf.addfile(self._info(name, tarfile.FIFOTYPE, mode, 0, 0, None, MTIME))
        return self

    def whiteout(self, path: str) -> TarBuilder:
        parent, _, base = path.rpartition("/")
        return self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}")

    def opaque(self, directory: str) -> TarBuilder:
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq")

    def raw(self, ti: tarfile.TarInfo, data: bytes = b"") -> TarBuilder:
        ti.size = len(data) if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else ti.size
        self.tf.addfile(ti, io.BytesIO(data) if data else None)
        return self

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, data: bytes) -> str:
    d = sha256(data)
    p = layout / "blobs" / "sha256" / d[7:]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return d


LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}


def write_oci_layout(layout: Path, layers: list[bytes], *, compression: str = "gzip",
                     ref: str = "latest", config: dict[str, Any] | None = None,
                     arch: str = "amd64") -> dict[str, str]:
    """Write an OCI image layout with ``layers`` (uncompressed tars, bottom first).

    Returns the digests: ``manifest``, ``config`` and ``layers`` (comma-joined).
    """
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs = []
    for tar in layers:
        blob = compress(tar, compression)
        descs.append({"mediaType": LAYER_TYPES[compression], "digest": _blob(layout, blob),
                      "size": len(blob)})
    cfg = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": config or {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"],
                                "WorkingDir": "/root"},
           "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layers]}}
    cfg_bytes = json.dumps(cfg).encode()
    cfg_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _blob(layout, cfg_bytes), "size": len(cfg_bytes)}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cfg_desc, "layers": descs}
    mbytes = json.dumps(manifest).encode()
    mdigest = _blob(layout, mbytes)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest,
        "size": len(mbytes), "annotations": {"org.opencontainers.image.ref.name": ref},
        "platform": {"os": "linux", "architecture": arch}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return {"manifest": mdigest, "config": cfg_desc["digest"],
            "layers": ",".join(d["digest"] for d in descs)}


def tar_directory(src: Path, out: Path) -> Path:
    """Tar the contents of ``src`` (names relative to it) into ``out``."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return out
