"""``imgbuilder import``: rootfs tarballs, ``docker save`` archives and OCI image layouts.

The input's kind is decided by its content, never its file name:

- a directory holding ``oci-layout`` is an OCI image layout; one holding ``manifest.json``
  is an extracted ``docker save``;
- a file or stdin is decompressed (gzip, zstd or none, by magic bytes) and its first tar
  members are looked at: an archive made only of ``blobs/``, ``<hex>/``, ``<hex>.json|.tar``,
  ``manifest.json``, ``index.json``, ``oci-layout`` and ``repositories`` is an image archive
  (``docker save``, legacy or OCI-style, or a tarred OCI layout); anything else is a root
  filesystem (``docker export``), streamed straight into one layer.

Image archives need random access, so when compressed or read from stdin they are first
spooled, decompressed, into a private temporary directory in the data directory. Every
layer then goes through :func:`imgbuilder.layers.add_layer`: blob digests and diff_ids are
verified against the manifest and config before a layer is published.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform as _platform
import re
import shutil
import sys
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from imgbuilder.compression import open_decompressed
from imgbuilder.errors import ImportFormatError, LayerError
from imgbuilder.images import ImageRecord, LayerRecord, is_digest, runtime_config
from imgbuilder.layers import add_layer, add_layer_stream, unpacked_size
from imgbuilder.store import Store
from imgbuilder.whiteout import split_name

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCHIVE_NAME = re.compile(
    r"^(blobs(/.*)?|[0-9a-f]{64}(/.*|\.json|\.tar)?|manifest\.json|index\.json|oci-layout|repositories)$"
)
_INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json")
REF_ANNOTATION = "org.opencontainers.image.ref.name"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_platform() -> str:
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(_platform.machine(), _platform.machine())
    return f"linux/{arch}"


def _member_names(head: bytes, limit: int = 16) -> list[str]:
    names: list[str] = []
    with contextlib.suppress(tarfile.TarError, EOFError, OSError), \
            tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tf:
        for ti in tf:
            names.append("/".join(x for x in ti.name.split("/") if x not in ("", ".")))
            if len(names) >= limit:
                break
    return [n for n in names if n]


def is_image_archive(head: bytes) -> bool:
    """True when the first members of an uncompressed tar look like an image archive."""
    names = _member_names(head)
    return bool(names) and all(_ARCHIVE_NAME.match(n) for n in names)


# -- sources: a directory or a tar file, read by relative path ------------------------------
class _Layout(ABC):
    @abstractmethod
    def open(self, rel: str) -> BinaryIO: ...

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    def read(self, rel: str, limit: int = 16 << 20) -> bytes:
        with self.open(rel) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImportFormatError(f"{rel} is too large for a manifest or config")
        return data

    def blob(self, digest: str) -> str:
        if not is_digest(digest):
            raise ImportFormatError(f"unsupported digest {digest!r} in the layout")
        return "blobs/sha256/" + digest.split(":", 1)[1]


class _DirLayout(_Layout):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, rel: str) -> Path:
        p = (self.root / "/".join(split_name(rel))).resolve()
        if p != self.root and self.root not in p.parents:  # a symlink out of the layout
            raise ImportFormatError(f"{rel} points outside the image layout")
        return p

    def open(self, rel: str) -> BinaryIO:
        try:
            return open(self._path(rel), "rb")
        except FileNotFoundError:
            raise ImportFormatError(f"the image layout has no {rel}") from None

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()


class _TarLayout(_Layout):
    def __init__(self, path: Path) -> None:
        try:
            self.tf = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
        except tarfile.TarError as e:
            raise ImportFormatError(f"not a readable image archive: {e}") from None
        self.members = {"/".join(x for x in m.name.split("/") if x not in ("", ".")): m
                        for m in self.tf.getmembers()}

    def open(self, rel: str) -> BinaryIO:
        m = self.members.get("/".join(split_name(rel)))
        f = self.tf.extractfile(m) if m is not None else None
        if f is None:
            raise ImportFormatError(f"the image archive has no file {rel}")
        return f  # type: ignore[return-value]

    def exists(self, rel: str) -> bool:
        m = self.members.get("/".join(split_name(rel)))
        return m is not None and (m.isfile() or m.issym() or m.islnk())

    def close(self) -> None:
        self.tf.close()


# -- image archives ---------------------------------------------------------------------------
def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise ImportFormatError(f"{what} is not valid JSON: {e}") from None


def _verified(layout: _Layout, digest: str, what: str) -> bytes:
    data = layout.read(layout.blob(digest))
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise LayerError(f"{what} {digest} does not match its content")
    return data


def _platform_of(d: dict[str, Any]) -> str:
    p = d.get("platform") or d
    s = f"{p.get('os', 'linux')}/{p.get('architecture', 'unknown')}"
    return f"{s}/{p['variant']}" if p.get("variant") else s


def _pick(manifests: list[dict[str, Any]], ref: str | None, plat: str | None) -> dict[str, Any]:
    if ref:
        named = [m for m in manifests if (m.get("annotations") or {}).get(REF_ANNOTATION) in (
            ref, ref.rsplit(":", 1)[-1]) or ref in (m.get("annotations") or {}).values()]
        if not named:
            raise ImportFormatError(f"no image named {ref!r} in the layout")
        manifests = named
    if len(manifests) == 1:
        return manifests[0]
    want = plat or host_platform()
    fits = [m for m in manifests if "platform" in m and (_platform_of(m) == want or
            _platform_of(m).split("/")[:2] == want.split("/")[:2])]
    if fits:
        return fits[0]
    have = ", ".join(sorted({_platform_of(m) for m in manifests if "platform" in m})) or "none"
    raise ImportFormatError(f"no image for platform {want} in the layout (available: {have})",
                            hint="choose one with --platform or --ref")


def _oci_image(store: Store, layout: _Layout, ref: str | None, plat: str | None,
               sync: bool) -> tuple[ImageRecord, bytes]:
    index = _json(layout.read("index.json"), "index.json")
    desc = _pick(list(index.get("manifests") or []), ref, plat)
    while desc.get("mediaType") in _INDEX_TYPES:
        nested = _json(_verified(layout, desc["digest"], "index"), "index")
        desc = _pick(list(nested.get("manifests") or []), None, plat)
    manifest_bytes = _verified(layout, desc["digest"], "manifest")
    manifest = _json(manifest_bytes, "manifest")
    config_bytes = _verified(layout, manifest["config"]["digest"], "config")
    config = _json(config_bytes, "config")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    descs = list(manifest.get("layers") or [])
    if len(diff_ids) != len(descs):
        raise ImportFormatError("manifest and config disagree on the number of layers")
    layers = []
    for ld, diff_id in zip(descs, diff_ids, strict=True):
        if store.has_layer(diff_id):
            layers.append(LayerRecord(diff_id, ld["digest"], int(ld.get("size") or 0),
                                      ld.get("mediaType") or "", unpacked_size(
                                          store.layer_path(diff_id))))
            continue
        with layout.open(layout.blob(ld["digest"])) as f:
            layers.append(add_layer(store, f, media_type=ld.get("mediaType"),
                                    expected_digest=ld["digest"], expected_diff_id=diff_id,
                                    sync=sync))
    reference = (desc.get("annotations") or {}).get(REF_ANNOTATION) or ref or ""
    rec = _record(config, layers, reference=reference, manifest_digest=desc["digest"],
                  config_digest=manifest["config"]["digest"])
    return rec, config_bytes


def _docker_image(store: Store, layout: _Layout, ref: str | None,
                  sync: bool) -> tuple[ImageRecord, bytes]:
    entries = _json(layout.read("manifest.json"), "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImportFormatError("manifest.json lists no images")
    if ref:
        entries = [e for e in entries if ref in (e.get("RepoTags") or [])] or []
        if not entries:
            raise ImportFormatError(f"no image tagged {ref!r} in the archive")
    elif len(entries) > 1:
        tags = ", ".join(t for e in entries for t in e.get("RepoTags") or []) or "untagged"
        raise ImportFormatError(f"the archive holds {len(entries)} images ({tags})",
                                hint="choose one with --ref TAG")
    entry = entries[0]
    config_bytes = layout.read(entry["Config"])
    config = _json(config_bytes, "image config")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    paths = list(entry.get("Layers") or [])
    if len(diff_ids) != len(paths):
        raise ImportFormatError("manifest.json and the config disagree on the number of layers")
    layers = []
    for layer_path, diff_id in zip(paths, diff_ids, strict=True):
        if store.has_layer(diff_id):
            layers.append(LayerRecord(diff_id, None, 0, "application/vnd.oci.image.layer.v1.tar",
                                      unpacked_size(store.layer_path(diff_id))))
            continue
        with layout.open(layer_path) as f:
            layer = add_layer(store, f, expected_diff_id=diff_id, sync=sync)
        layer.digest = None if layer.digest == layer.diff_id else layer.digest
        layers.append(layer)
    repo_tags: list[str] = entry.get("RepoTags") or []
    rec = _record(config, layers, reference=ref or (repo_tags[0] if repo_tags else ""),
                  manifest_digest=None,
                  config_digest="sha256:" + hashlib.sha256(config_bytes).hexdigest())
    return rec, config_bytes


def _record(config: dict[str, Any], layers: list[LayerRecord], *, reference: str,
            manifest_digest: str | None, config_digest: str) -> ImageRecord:
    return ImageRecord(name="", reference=reference, manifest_digest=manifest_digest,
                       config_digest=config_digest, platform=_platform_of(config),
                       created=config.get("created"), pulled_at=now_iso(), source="import",
                       config=runtime_config(config), layers=layers)


def import_layout(store: Store, layout: _Layout, *, ref: str | None, plat: str | None,
                  sync: bool) -> ImageRecord:
    """Import the image a layout or archive describes (records are returned, not written)."""
    try:
        if layout.exists("oci-layout") or layout.exists("index.json"):
            rec, config_bytes = _oci_image(store, layout, ref, plat, sync)
        elif layout.exists("manifest.json"):
            rec, config_bytes = _docker_image(store, layout, ref, sync)
        else:
            raise ImportFormatError("neither an OCI layout (oci-layout, index.json) nor a "
                                    "docker save archive (manifest.json)")
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ImportFormatError(f"malformed image metadata (missing or wrong field {e})") from None
    _keep_blob(store, config_bytes)
    return rec


def _keep_blob(store: Store, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not store.has_blob(digest):
        tmp = store.partial_dir / f".import-{os.getpid()}-{digest[7:19]}"
        tmp.write_bytes(data)
        store.commit_blob(tmp, digest)
    return digest


# -- rootfs tarballs --------------------------------------------------------------------------
def rootfs_config(diff_id: str, cmd: list[str] | None = None) -> dict[str, Any]:
    """An OCI image config for a bare root filesystem: PATH set, a shell as command."""
    os_, _, arch = host_platform().partition("/")
    arch, _, variant = arch.partition("/")
    cfg: dict[str, Any] = {
        "created": now_iso(), "architecture": arch, "os": os_,
        "config": {"Env": [DEFAULT_PATH], "Cmd": cmd or ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": now_iso(), "created_by": "imgbuilder import"}],
    }
    if variant:
        cfg["variant"] = variant
    return cfg


def record_for_rootfs(store: Store, layer: LayerRecord, *, reference: str, source: str,
                      cmd: list[str] | None = None) -> ImageRecord:
    config = rootfs_config(layer.diff_id, cmd)
    config_bytes = json.dumps(config, sort_keys=True).encode()
    digest = _keep_blob(store, config_bytes)
    return ImageRecord(name="", reference=reference, manifest_digest=None, config_digest=digest,
                       platform=_platform_of(config), created=config["created"],
                       pulled_at=now_iso(), source=source, config=runtime_config(config),
                       layers=[layer])


@contextlib.contextmanager
def _input(source: str) -> Iterator[BinaryIO]:
    if source == "-":
        yield sys.stdin.buffer
        return
    try:
        f = open(source, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise ImportFormatError(f"no such file: {source}") from None
    except IsADirectoryError:
        raise ImportFormatError(f"{source} is a directory without oci-layout or "
                                "manifest.json") from None
    with f:
        yield f


def import_image(store: Store, source: str, name: str, *, ref: str | None = None,
                 plat: str | None = None, sync: bool = True) -> ImageRecord:
    """Import ``source`` (path, directory or ``-``) into the store; returns the unnamed record.

    The caller names, flattens if needed, and writes the record.
    """
    path = Path(source)
    if source != "-" and path.is_dir():
        if not ((path / "oci-layout").exists() or (path / "manifest.json").exists()):
            raise ImportFormatError(f"{source} is a directory without oci-layout or "
                                    "manifest.json")
        return import_layout(store, _DirLayout(path), ref=ref, plat=plat, sync=sync)
    with _input(source) as f, open_decompressed(f) as stream:
        if not is_image_archive(stream.peek()):
            # No blob is kept for a rootfs, so only the diff_id is computed.
            layer = add_layer_stream(store, stream, None, sync=sync)
            layer.digest = None
            ref_name = "" if source == "-" else f"file://{path.absolute()}"
            return record_for_rootfs(store, layer, reference=ref_name, source="import")
        if source != "-" and stream.compression == "none":
            archive: Path | None = path
            spool = None
        else:
            spool = store.new_layer_tmpdir()
            archive = spool / "archive.tar"
            with open(archive, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
    try:
        assert archive is not None
        layout = _TarLayout(archive)
        try:
            return import_layout(store, layout, ref=ref, plat=plat, sync=sync)
        finally:
            layout.close()
    finally:
        if spool is not None:
            store.discard_layer_tmpdir(spool)
