"""The content-addressed layer store under the data directory.

Layout (see docs/images.md)::

    blobs/sha256/<hex>      verified blobs (compressed layers, configs, manifests)
    blobs/partial/<hex>     bytes of an unfinished download, kept for resuming
    layers/<hex>/           one extracted layer (overlay format), keyed by its diff_id
    layers/.tmp-<pid>-*/    layers being extracted: never referenced, removed when stale
    images/<name>.json      image records
    leases/<id>.json        layers a live session uses: prune keeps them
    locks/store.lock        flock: writers of layers/images hold it shared, prune/rm exclusive

Every publication is an atomic rename of something complete and fsynced (a blob, a layer
directory, a record), followed by an fsync of the directory: a crash or ``kill -9`` at any
moment leaves either the old state or the new one, never a half layer under its final name.
Layers and blobs are immutable once published, so readers need no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgbuilder.errors import ImageNotFoundError, LayerError, StoreError
from imgbuilder.fscheck import syncfs
from imgbuilder.images import ImageRecord, digest_hex, is_digest, validate_name


@dataclass
class PruneReport:
    """What ``prune`` removed and the bytes it freed (allocated blocks, hardlinks once)."""

    layers_removed: list[str] = field(default_factory=list)
    blobs_removed: list[str] = field(default_factory=list)
    partial_removed: int = 0
    tmp_removed: int = 0
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: temp name, fsync, rename, fsync of the dir."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def disk_usage(path: Path) -> int:
    """Allocated bytes below ``path`` (hardlinked inodes counted once), like ``du``."""
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    total += st.st_blocks * 512
    if not os.path.isdir(path) or os.path.islink(path):
        return total
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not os.path.isdir(os.path.join(dirpath, name)):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total


class Store:
    """The layer store rooted at ``data_dir`` (created if missing)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.blobs_dir = self.data_dir / "blobs" / "sha256"
        self.partial_dir = self.data_dir / "blobs" / "partial"
        self.layers_dir = self.data_dir / "layers"
        self.images_dir = self.data_dir / "images"
        self.leases_dir = self.data_dir / "leases"
        self.locks_dir = self.data_dir / "locks"
        self.writable = True
        try:
            for d in (self.blobs_dir, self.partial_dir, self.layers_dir, self.images_dir,
                      self.leases_dir, self.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            # Reading (list, inspect) works without write access, e.g. `imgbuilder list`
            # as a normal user; a write later fails with "permission denied … sudo".
            self.writable = False
        except OSError as e:
            raise StoreError(f"cannot create the data directory {self.data_dir}: "
                             f"{e.strerror}") from None
        if self.writable:
            self.remove_stale_tmp()

    def _writable(self) -> None:
        if not self.writable:
            raise StoreError(f"cannot write to the data directory {self.data_dir} "
                             "(permission denied)", hint="run it with sudo, or choose --data-dir")

    # -- locks -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, op: int) -> Iterator[None]:
        self._writable()
        fd = os.open(self.locks_dir / "store.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, op)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def shared_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held by pulls and imports while they add blobs, layers and records."""
        return self._flock(fcntl.LOCK_SH)

    def exclusive_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held by prune and rm: no writer runs meanwhile, so nothing half-added is removed."""
        return self._flock(fcntl.LOCK_EX)

    # -- blobs -------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def partial_blob_path(self, digest: str) -> Path:
        """Where the bytes of an unfinished download of ``digest`` live (for HTTP Range)."""
        return self.partial_dir / digest_hex(digest)

    def commit_blob(self, tmp_path: Path, digest: str) -> Path:
        """Publish ``tmp_path`` (already verified against ``digest`` by the caller) as a blob.

        fsync, then atomic rename into ``blobs/sha256/<hex>``; idempotent: if the blob is
        already there the new copy is dropped. ``tmp_path`` must be on the same filesystem.
        """
        self._writable()
        dest = self.blob_path(digest)
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, dest)
        _fsync_dir(self.blobs_dir)
        return dest

    # -- layers ------------------------------------------------------------------------
    def layer_path(self, diff_id: str) -> Path:
        return self.layers_dir / digest_hex(diff_id)

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_path(diff_id).is_dir()

    def new_layer_tmpdir(self) -> Path:
        """A fresh, private (0700) directory under ``layers/`` to extract one layer into.

        Its name starts with ``.tmp-<pid>-`` so it is never mistaken for a layer and can be
        removed once its creator is gone.
        """
        self._writable()
        return Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.layers_dir))

    def commit_layer(self, tmpdir: Path, diff_id: str, *, sync: bool = True) -> Path:
        """Publish an extracted layer under its diff_id; the caller verified the diff_id.

        With ``sync`` the filesystem is flushed (syncfs) first, so a power loss cannot leave
        a published layer with missing content. The rename is atomic; if the layer is
        already present (a concurrent pull or import won), ``tmpdir`` is discarded and the
        existing layer is returned.
        """
        dest = self.layer_path(diff_id)
        if dest.is_dir():
            shutil.rmtree(tmpdir, ignore_errors=True)
            return dest
        if sync:
            syncfs(tmpdir)
        try:
            os.rename(tmpdir, dest)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                shutil.rmtree(tmpdir, ignore_errors=True)
                return dest
            raise
        _fsync_dir(self.layers_dir)
        return dest

    def discard_layer_tmpdir(self, tmpdir: Path) -> None:
        """Remove an abandoned extraction directory (never a published layer)."""
        if Path(tmpdir).name.startswith(".tmp-"):
            shutil.rmtree(tmpdir, ignore_errors=True)

    def remove_stale_tmp(self) -> int:
        """Remove ``layers/.tmp-*`` whose creating process is gone; returns how many."""
        removed = 0
        for entry in self.layers_dir.glob(".tmp-*"):
            try:
                pid = int(entry.name.split("-")[1])
            except (IndexError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                continue
            if pid == os.getpid():
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        return removed

    # -- images ------------------------------------------------------------------------
    def _image_file(self, name: str) -> Path:
        return self.images_dir / f"{validate_name(name)}.json"

    def write_image(self, rec: ImageRecord) -> None:
        """Atomically create or replace the record ``images/<name>.json``."""
        self._writable()
        atomic_write(self._image_file(rec.name), rec.to_json().encode())

    def get_image(self, name: str) -> ImageRecord:
        """The record of ``name``; ImageNotFoundError (with the commands that add one)."""
        try:
            text = self._image_file(name).read_text()
        except FileNotFoundError:
            raise ImageNotFoundError(
                f"image not found: {name} (see `imgbuilder list`)",
                hint=f"sandkasten image pull --name {name} REF, or "
                f"imgbuilder import --name {name} --tar /tmp/{name}.tar.gz",
            ) from None
        return ImageRecord.from_json(text)

    def list_images(self) -> list[ImageRecord]:
        out: list[ImageRecord] = []
        if not self.images_dir.is_dir():
            return out
        for p in sorted(self.images_dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError, StoreError):
                out.append(ImageRecord.from_json(p.read_text()))
        return out

    def delete_image(self, name: str) -> None:
        """Remove the record; its layers stay until ``prune`` (other images may share them)."""
        try:
            self._image_file(name).unlink()
        except FileNotFoundError:
            self.get_image(name)  # raises the not-found error with its hint
            raise
        _fsync_dir(self.images_dir)

    def layer_paths(self, rec: ImageRecord) -> list[Path]:
        """The image's layer directories, bottom-most first; LayerError if one is missing."""
        paths = []
        for layer in rec.layers:
            p = self.layer_path(layer.diff_id)
            if not p.is_dir():
                raise LayerError(
                    f"image {rec.name}: layer {layer.diff_id[:19]} is missing from the store",
                    hint=f"imgbuilder validate {rec.name}; pull or import the image again",
                )
            paths.append(p)
        return paths

    # -- leases ------------------------------------------------------------------------
    def lease(self, session_id: str, rec: ImageRecord) -> None:
        """Record that ``session_id`` uses ``rec``'s layers: prune keeps them until release."""
        self._writable()
        validate_name(session_id)
        data = {"session_id": session_id, "image": rec.name,
                "layers": [layer.diff_id for layer in rec.layers], "created": time.time()}
        atomic_write(self.leases_dir / f"{session_id}.json", json.dumps(data).encode())

    def release(self, session_id: str) -> None:
        """Drop the lease of ``session_id`` (no error if there is none)."""
        validate_name(session_id)
        with contextlib.suppress(FileNotFoundError):
            (self.leases_dir / f"{session_id}.json").unlink()

    def leased_layers(self) -> set[str]:
        out: set[str] = set()
        for p in self.leases_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                out.update(json.loads(p.read_text())["layers"])
        return out

    # -- garbage collection --------------------------------------------------------------
    def prune(self) -> PruneReport:
        """Remove layers and blobs no image record or lease references; report bytes freed.

        Runs under the exclusive lock, so no pull or import is half-way through adding
        something; leased layers (live sessions) are never removed.
        """
        report = PruneReport()
        with self.exclusive_lock():
            keep_layers = self.leased_layers()
            keep_blobs: set[str] = set()
            for rec in self.list_images():
                for layer in rec.layers:
                    keep_layers.add(layer.diff_id)
                    if layer.digest:
                        keep_blobs.add(layer.digest)
                for d in (rec.manifest_digest, rec.config_digest):
                    if d:
                        keep_blobs.add(d)
            keep_hex = {d.split(":", 1)[1] for d in keep_layers if is_digest(d)}
            report.tmp_removed = self.remove_stale_tmp()
            for p in self.layers_dir.iterdir():
                if p.name.startswith(".tmp-"):
                    continue  # a live extraction (its creator still runs)
                if p.name not in keep_hex:
                    report.bytes_freed += disk_usage(p)
                    shutil.rmtree(p)
                    report.layers_removed.append(f"sha256:{p.name}")
            blob_hex = {d.split(":", 1)[1] for d in keep_blobs if is_digest(d)}
            for p in self.blobs_dir.iterdir():
                if p.name not in blob_hex:
                    report.bytes_freed += disk_usage(p)
                    p.unlink()
                    report.blobs_removed.append(f"sha256:{p.name}")
            for p in self.partial_dir.iterdir():
                report.bytes_freed += disk_usage(p)
                p.unlink()
                report.partial_removed += 1
        return report


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
