"""File operations the daemon (root) performs in directories a sandbox controls.

A workspace directory and a sandbox's root (``/proc/<pid>/root``) are written by untrusted
code while the daemon reads or writes them. Path-based calls (``open(root / rel)``) would
follow a symlink the sandbox planted, or swapped in between a check and a use, and let
root read or overwrite host files. So every operation here works on directory file
descriptors:

- the starting path is resolved with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``:
  symlinks are followed as the sandbox would see them, never out of ``root``;
- below it, each name is opened relative to its parent fd with ``O_NOFOLLOW``: a symlink is
  archived as a symlink, never followed; writes refuse to pass through one.

Tar archives stream in both directions: no file is held in memory whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import secrets
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO

from sandkasten.errors import ConflictError, NotFoundError, ValidationError, with_code

SANDBOX_UID = 1000  # the unprivileged user commands run as (caps.drop_privileges default)
SANDBOX_GID = 1000
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE

_SYS_openat2 = 437  # the same number on x86_64 and aarch64
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int = os.O_RDONLY) -> int:
    """Open ``path`` as if ``root_fd`` were ``/``: no ``..`` or symlink escapes it."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    rel = path.lstrip("/") or "."
    fd = _libc.syscall(_SYS_openat2, root_fd, rel.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return int(fd)


# Kernel filesystems an archive never descends into: their files are not data (and some
# block or never end when read).
_PSEUDO_FS = {
    0x9FA0,  # proc
    0x62656572,  # sysfs
    0x1CD1,  # devpts
    0x27E0EB,  # cgroup
    0x63677270,  # cgroup2
    0x19800202,  # mqueue
    0x64626720,  # debugfs
    0x73636673,  # securityfs
    0x74726163,  # tracefs
    0xCAFE4A11,  # bpf
    0x6E736673,  # nsfs
}


def _fs_magic(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first member
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def clean_relpath(path: str, *, clamp: bool = False) -> list[str]:
    """Components of ``path`` below a root. NUL is refused; ``..`` is refused, or with
    ``clamp`` resolved lexically and never above the root (as ``/..`` is ``/``)."""
    if "\0" in path:
        raise with_code(ValidationError("path contains a NUL byte"), "invalid_path")
    parts: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not clamp:
                raise with_code(
                    ValidationError(f"path must not contain '..': {path!r}"), "invalid_path"
                )
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return parts


def _open_dir(root_fd: int, parts: list[str], *, create: bool, uid: int, gid: int) -> int:
    """Walk ``parts`` from ``root_fd`` without following any symlink; mkdir when asked."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                nfd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                nfd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            os.close(fd)
            fd = nfd
        return fd
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise with_code(
                ConflictError(
                    f"{'/'.join(parts)}: a path component is a symlink or not a directory"
                ),
                "path_conflict",
            ) from None
        raise


def write_stream(
    root_fd: int,
    path: str,
    src: IO[bytes] | bytes,
    *,
    mode: int = 0o644,
    uid: int = SANDBOX_UID,
    gid: int = SANDBOX_GID,
) -> int:
    """Write a file below ``root_fd`` atomically (temp name + rename); return bytes written.

    Parent directories are created (owned by ``uid``). The final name is replaced, never
    followed: a symlink there is replaced by the file.
    """
    parts = clean_relpath(path, clamp=True)
    if not parts:
        raise with_code(ValidationError("path names a directory, not a file"), "invalid_path")
    dfd = _open_dir(root_fd, parts[:-1], create=True, uid=uid, gid=gid)
    tmp = f".{parts[-1][:200]}.sk-{secrets.token_hex(4)}"
    written = 0
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode & 0o777,
            dir_fd=dfd,
        )
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                if isinstance(src, bytes):
                    out.write(src)
                    written = len(src)
                else:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        written += len(chunk)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode & 0o777)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, parts[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            raise with_code(ConflictError(f"{path}: is a directory"), "path_conflict") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)
    return written


# ---- tar export ---------------------------------------------------------------------------
def _header(name: str, st: os.stat_result, kind: bytes, *, size: int = 0, link: str = "") -> bytes:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.mtime = int(st.st_mtime)
    ti.size = size
    ti.linkname = link
    return ti.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _walk_tar(dfd: int, prefix: str) -> Iterator[bytes]:
    for name in sorted(os.listdir(dfd)):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we walk
        arc = f"{prefix}{name}"
        if stat.S_ISDIR(st.st_mode):
            try:
                cfd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
                )
            except OSError:
                continue  # replaced by a symlink or removed since the stat
            try:
                if _fs_magic(cfd) in _PSEUDO_FS:
                    continue  # /proc, /sys, /dev/pts …: the mount point alone is not worth it
                yield _header(arc + "/", st, tarfile.DIRTYPE)
                yield from _walk_tar(cfd, arc + "/")
            finally:
                os.close(cfd)
        elif stat.S_ISREG(st.st_mode):
            yield from _file_entry(dfd, name, arc)
        elif stat.S_ISLNK(st.st_mode):
            yield _header(arc, st, tarfile.SYMTYPE, link=os.readlink(name, dir_fd=dfd))
        # devices, fifos and sockets are not part of an archive of files


def _file_entry(dfd: int, name: str, arc: str) -> Iterator[bytes]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return  # swapped for a symlink or removed: skip rather than follow
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        size = st.st_size
        yield _header(arc, st, tarfile.REGTYPE, size=size)
        left = size
        while left > 0:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:  # the file shrank while we read it: pad to the announced size
                chunk = b"\0" * min(CHUNK, left)
            left -= len(chunk)
            yield chunk
        if size % _BLOCK:
            yield b"\0" * (_BLOCK - size % _BLOCK)
    finally:
        os.close(fd)


def iter_tar(root: str | os.PathLike[str], path: str = "/") -> Iterator[bytes]:
    """Stream a tar (PAX) of ``path`` inside ``root``: its contents, names relative to it.

    A regular file as ``path`` gives a one-entry archive. Raises NotFoundError before the
    first byte if ``path`` does not exist.
    """
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = open_in_root(rfd, path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise with_code(
                    NotFoundError(f"no such file or directory: {path}"), "file_not_found"
                ) from None
            if e.errno == errno.ELOOP:  # the last component is a symlink
                raise with_code(ValidationError(f"{path}: is a symlink"), "invalid_path") from None
            raise
    finally:
        os.close(rfd)
    return _stream(fd, path)


def _stream(fd: int, path: str) -> Iterator[bytes]:
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_tar(fd, "")
        elif stat.S_ISREG(st.st_mode):
            name = posixpath.basename(path.rstrip("/")) or "file"
            yield from _regular_from_fd(fd, name)
        yield b"\0" * (2 * _BLOCK)
    finally:
        os.close(fd)


def _regular_from_fd(fd: int, name: str) -> Iterator[bytes]:
    st = os.fstat(fd)
    yield _header(name, st, tarfile.REGTYPE, size=st.st_size)
    left = st.st_size
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left)) or b"\0" * min(CHUNK, left)
        left -= len(chunk)
        yield chunk
    if st.st_size % _BLOCK:
        yield b"\0" * (_BLOCK - st.st_size % _BLOCK)


# ---- tar import ---------------------------------------------------------------------------
@dataclass
class ImportStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    bytes: int = 0


def extract_tar(
    src: BinaryIO, root: str | os.PathLike[str], *, uid: int = SANDBOX_UID, gid: int = SANDBOX_GID
) -> ImportStats:
    """Extract a tar stream (any compression tarfile knows) below ``root`` in one pass.

    Names with ``..`` are refused; absolute names are taken relative to ``root``; nothing is
    written through a symlink; setuid/setgid bits are dropped; everything belongs to ``uid``.
    Hard links, devices and fifos are skipped (counted in ``skipped``).
    """
    stats = ImportStats()
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            with tarfile.open(fileobj=src, mode="r|*") as tf:
                for m in tf:
                    _extract_member(tf, m, rfd, uid, gid, stats)
        except tarfile.TarError as e:
            raise with_code(
                ValidationError(f"not a valid tar archive: {e}"), "invalid_archive"
            ) from None
    finally:
        os.close(rfd)
    return stats


def _extract_member(
    tf: tarfile.TarFile, m: tarfile.TarInfo, rfd: int, uid: int, gid: int, stats: ImportStats
) -> None:
    parts = clean_relpath(m.name)
    if not parts:
        return
    mode = m.mode & 0o777
    if m.isdir():
        os.close(_open_dir(rfd, parts, create=True, uid=uid, gid=gid))
        stats.dirs += 1
    elif m.isreg():
        f = tf.extractfile(m)
        assert f is not None
        stats.bytes += write_stream(rfd, "/".join(parts), f, mode=mode, uid=uid, gid=gid)
        stats.files += 1
    elif m.issym():
        dfd = _open_dir(rfd, parts[:-1], create=True, uid=uid, gid=gid)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=dfd)
            os.symlink(m.linkname, parts[-1], dir_fd=dfd)
            os.chown(parts[-1], uid, gid, dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
        stats.symlinks += 1
    else:
        stats.skipped += 1
