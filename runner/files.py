"""File requests: write, read, list. Relative paths resolve against the workspace.

Safety: the runner serves these after pivot_root, so "/" is the sandbox's root and every
path, symlinks included, resolves inside it; the host's files are not reachable by any
name. Each operation also runs with the filesystem uid and gid of the sandbox user
(``setfsuid``/``setfsgid`` act on the calling thread only, and a non-zero fsuid clears
the filesystem capabilities such as CAP_DAC_OVERRIDE), so a request can do exactly what
the sandbox user could do itself: no reading /etc/shadow or /proc/1/root, and files come
out owned by the sandbox user.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from runner import protocol as p

_libc = ctypes.CDLL(None, use_errno=True)
_PROC_SUPER_MAGIC = 0x9FA0
_SYSFS_MAGIC = 0x62656572
_statfs_buf = ctypes.create_string_buffer(256)
_statfs_lock = threading.Lock()


def _refuse_kernel_fs(fd: int, path: str) -> None:
    """Refuse /proc and /sys objects, checked on the opened fd (no symlink race).

    The runner is PID 1: through /proc it would see its own memory and descriptors, which
    no sandbox user may read. Commands in the sandbox see /proc as the sandbox user.
    """
    with _statfs_lock:
        if _libc.fstatfs(fd, _statfs_buf) != 0:
            return
        f_type = int.from_bytes(_statfs_buf.raw[:8], sys.byteorder)
    if f_type in (_PROC_SUPER_MAGIC, _SYSFS_MAGIC):
        raise FileOpError("permission_denied", f"{path}: not served by file requests")


class FileOpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def resolve(path: str, workdir: str) -> str:
    """Absolute, normalised path; relative ones are taken from ``workdir``."""
    if not path or "\0" in path:
        raise FileOpError("invalid", "path must be a non-empty string without NUL")
    return posixpath.normpath(posixpath.join(workdir, path))


@contextmanager
def as_user(uid: int, gid: int) -> Iterator[None]:
    """Switch this thread's filesystem identity; a no-op when already that user."""
    if os.geteuid() == uid:
        yield
        return
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        yield
    finally:
        _libc.setfsuid(os.geteuid())
        _libc.setfsgid(os.getegid())


def _translate(e: OSError, path: str) -> FileOpError:
    return FileOpError(ERRNO_CODES.get(e.errno or 0, "io_error"), f"{path}: {e.strerror}")


# errno → the protocol's stable file-error code. The daemon maps these codes (never the
# message text) to HTTP statuses; io_error is left for faults no caller can act on.
ERRNO_CODES: dict[int, str] = {
    errno.ENOENT: "not_found",
    errno.EEXIST: "exists",
    errno.ENAMETOOLONG: "name_too_long",
    errno.ENOTDIR: "not_a_directory",
    errno.EISDIR: "is_a_directory",
    errno.ENOTEMPTY: "not_empty",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "file_too_large",
    errno.EROFS: "read_only",
    errno.ELOOP: "invalid",
}


class Files:
    def __init__(self, uid: int, gid: int, workdir: str) -> None:
        self.uid, self.gid, self.workdir = uid, gid, workdir

    def write(self, files: list[p.FileSpec]) -> list[str]:
        written = []
        for f in files:
            path = resolve(f.path, self.workdir)
            data = p.unb64(f.data_b64)
            mode = f.mode & 0o7777 if isinstance(f.mode, int) else 0o644
            with as_user(self.uid, self.gid):
                try:
                    os.makedirs(posixpath.dirname(path), exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
                    try:
                        _refuse_kernel_fs(fd, path)
                        os.ftruncate(fd, 0)
                        view = memoryview(data)
                        while view:
                            view = view[os.write(fd, view):]
                        os.fchmod(fd, mode)
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise _translate(e, path) from None
            written.append(path)
        return written

    def read(self, path: str, max_bytes: int | None) -> tuple[bytes, bool]:
        path = resolve(path, self.workdir)
        with as_user(self.uid, self.gid):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                try:
                    _refuse_kernel_fs(fd, path)
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise FileOpError("invalid", f"{path}: not a regular file")
                    limit = max_bytes if max_bytes is not None and max_bytes >= 0 else None
                    chunks, size = [], 0
                    while limit is None or size <= limit:
                        chunk = os.read(fd, 1 << 20 if limit is None
                                        else min(1 << 20, limit + 1 - size))
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                finally:
                    os.close(fd)
            except OSError as e:
                raise _translate(e, path) from None
        data = b"".join(chunks)
        if limit is not None and len(data) > limit:
            return data[:limit], True
        return data, False

    def list(self, path: str) -> list[p.Entry]:
        path = resolve(path, self.workdir)
        entries = []
        with as_user(self.uid, self.gid):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    _refuse_kernel_fs(fd, path)
                finally:
                    os.close(fd)
                with os.scandir(path) as it:
                    for de in it:
                        try:
                            st = de.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        kind = ("symlink" if stat.S_ISLNK(st.st_mode) else
                                "dir" if stat.S_ISDIR(st.st_mode) else
                                "file" if stat.S_ISREG(st.st_mode) else "other")
                        entries.append(p.Entry(
                            name=de.name, path=posixpath.join(path, de.name), type=kind,
                            size=st.st_size, mode=stat.S_IMODE(st.st_mode),
                            mtime=st.st_mtime))
            except OSError as e:
                raise _translate(e, path) from None
        entries.sort(key=lambda e: e.name)
        return entries
