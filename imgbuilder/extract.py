"""Extract one layer tar into a directory in overlayfs format, safely and fast.

``extract_layer(stream, dest)`` reads an uncompressed tar in one pass and writes every
member below ``dest``, turning OCI whiteouts into overlayfs whiteouts (see
:mod:`imgbuilder.whiteout`). It keeps file types, permission bits (setuid, setgid,
sticky), numeric owners, hardlinks, symlink targets (unchanged), xattrs, device nodes,
fifos, long names and mtimes (directories' after their content).

Safety (the layer comes from the network or a user's tarball and is hostile until
proven otherwise):

- names are split by :func:`imgbuilder.whiteout.split_name`: absolute names and ``..``
  components are refused before any system call;
- every parent directory is opened component by component with ``O_NOFOLLOW |
  O_DIRECTORY`` relative to its parent's file descriptor (openat-style), so a symlink or
  a non-directory in the path is an error, never followed: an entry cannot write
  through a symlink made by an earlier entry;
- files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: an existing entry of the same
  name (a symlink, a fifo, a device node from earlier in the archive) is unlinked first
  and never opened, so writes cannot land in a device or through a link;
- hardlink targets must be earlier members of this layer, resolved the same way;
- ``trusted.overlay.*`` xattrs in the archive are dropped: a layer must not forge
  overlayfs metadata (redirects, metacopy, opaque) other than through OCI whiteouts.

A later member replacing an earlier one of the same name behaves as tar does: a
directory over a directory updates its metadata, anything else replaces the old entry.

Speed: members come from :mod:`imgbuilder.tarstream` (a fast path for plain headers,
``tarfile`` for the rest); file contents go from the decompressor's buffers straight to
``os.write`` on raw descriptors; directory descriptors are cached; chown and chmod are
skipped when the kernel already set the right owner and mode.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from imgbuilder.compression import Readable
from imgbuilder.errors import LayerError, StoreError
from imgbuilder.tarstream import Entry, Source, iter_members
from imgbuilder.whiteout import OPAQUE_XATTR, classify, split_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE = 128


@dataclass
class ExtractStats:
    """Counts of what one extraction wrote; ``bytes`` is the regular files' content size."""

    entries: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    devices: int = 0
    fifos: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0
    bytes: int = 0
    tar_bytes: int = 0
    dropped_xattrs: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _Extractor:
    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.cache: OrderedDict[tuple[str, ...], int] = OrderedDict()
        # Directories' mode, owner, mtime and xattrs, applied after all content.
        self.dirs: dict[tuple[str, ...], Entry] = {}
        self.root = os.geteuid() == 0
        self.umask = _umask()
        self.stats = ExtractStats()
        self.name = ""

    # -- directory descriptors -------------------------------------------------------
    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.root_fd)

    def _forget(self, parts: tuple[str, ...]) -> None:
        n = len(parts)
        for key in [k for k in self.cache if k[:n] == parts]:
            os.close(self.cache.pop(key))
        for key in [k for k in self.dirs if k[:n] == parts and k]:
            del self.dirs[key]

    def dir_fd(self, parts: tuple[str, ...], create: bool = True) -> int:
        """A descriptor of directory ``parts``, created (0755) if missing and ``create``."""
        if not parts:
            return self.root_fd
        fd = self.cache.get(parts)
        if fd is not None:
            self.cache.move_to_end(parts)
            return fd
        parent = self.dir_fd(parts[:-1], create)  # never evicted while in use: see trim()
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise LayerError(
                    f"{self.name!r}: {'/'.join(parts)} does not exist in this layer"
                ) from None
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LayerError(
                    f"{self.name!r} would be written through {'/'.join(parts)}, "
                    "which is a symlink or not a directory"
                ) from None
            raise
        self.cache[parts] = fd
        return fd

    def trim(self) -> None:
        """Close the least recently used descriptors; called between members only, so no
        descriptor an operation holds is ever closed (and its number reused) under it."""
        while len(self.cache) > _DIR_CACHE:
            _, old = self.cache.popitem(last=False)
            os.close(old)

    def _remove(self, pfd: int, name: str, parts: tuple[str, ...]) -> os.stat_result:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self._forget(parts)
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return st

    # -- members -----------------------------------------------------------------------
    def member(self, ti: Entry, src: Source) -> None:
        self.name = ti.name
        if len(self.cache) > _DIR_CACHE:
            self.trim()
        m = classify(ti.name)
        st = self.stats
        st.entries += 1
        if m.kind == "ignore":
            return
        if m.kind == "opaque":
            os.setxattr(self.dir_fd(m.parts), OPAQUE_XATTR, b"y")
            st.opaque_dirs += 1
            return
        parts = m.parts
        if not parts:
            if ti.kind != b"5":
                raise LayerError(f"{ti.name!r}: the layer root must be a directory")
            self.dirs[()] = ti
            return
        pfd = self.dir_fd(parts[:-1])
        name = parts[-1]
        if m.kind == "whiteout":
            try:
                os.mknod(name, stat.S_IFCHR, 0, dir_fd=pfd)
            except FileExistsError:
                return  # this layer has its own entry here: it already hides the lower one
            st.whiteouts += 1
            return
        kind = ti.kind
        if kind == b"0":
            mode = ti.mode
            try:
                fd = os.open(name, _FILE_FLAGS, mode & 0o777, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, name, parts)
                fd = os.open(name, _FILE_FLAGS, mode & 0o777, dir_fd=pfd)
            try:
                if ti.size:
                    src.copy_to(fd, ti.size)
                chown = not self.root or ti.uid or ti.gid
                if chown:
                    os.fchown(fd, ti.uid, ti.gid)
                # open() applied the mode minus the umask; chmod only when that differs
                # or when there are setuid/setgid/sticky bits (which chown would clear).
                if mode & self.umask or mode > 0o777 or (chown and mode & 0o6000):
                    os.fchmod(fd, mode)
                if ti.xattrs:
                    for k, v in self._allowed(ti.xattrs):
                        os.setxattr(fd, k, v)
                os.utime(fd, ns=(ti.mtime_ns, ti.mtime_ns))
            finally:
                os.close(fd)
            st.files += 1
            st.bytes += ti.size
        elif kind == b"5":
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:
                old = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(old.st_mode):
                    os.unlink(name, dir_fd=pfd)
                    os.mkdir(name, 0o700, dir_fd=pfd)
                    if stat.S_ISCHR(old.st_mode) and old.st_rdev == 0:
                        # A whiteout then a directory in one layer: the directory
                        # starts empty, so nothing of the lower one may show through.
                        os.setxattr(self.dir_fd(parts), OPAQUE_XATTR, b"y")
            if not self.root or ti.uid or ti.gid:
                os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
            if parts not in self.dirs:
                st.dirs += 1
            self.dirs[parts] = ti
        elif kind == b"2":
            try:
                os.symlink(ti.linkname, name, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, name, parts)
                os.symlink(ti.linkname, name, dir_fd=pfd)
            self._meta_by_name(pfd, name, ti)
            st.symlinks += 1
        elif kind == b"1":
            self._hardlink(ti, pfd, name, parts)
            st.hardlinks += 1
        elif kind in (b"3", b"4", b"6"):
            ftype = {b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"6": stat.S_IFIFO}[kind]
            dev = os.makedev(ti.devmajor, ti.devminor) if kind != b"6" else 0
            try:
                os.mknod(name, ftype | 0o600, dev, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, name, parts)
                os.mknod(name, ftype | 0o600, dev, dir_fd=pfd)
            # The node was just made by us in a directory only we can write to, so the
            # path-based chmod below reaches it and nothing else.
            if not self.root or ti.uid or ti.gid:
                os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
            os.chmod(name, ti.mode, dir_fd=pfd)
            self._meta_by_name(pfd, name, ti, owner=False)
            if kind == b"6":
                st.fifos += 1
            else:
                st.devices += 1
        else:
            raise LayerError(f"{ti.name!r}: unsupported tar entry type {kind!r}")

    def _allowed(self, xattrs: dict[str, bytes]) -> list[tuple[str, bytes]]:
        out = []
        for k, v in xattrs.items():
            if k.startswith("trusted.overlay."):
                self.stats.dropped_xattrs += 1
                continue
            out.append((k, v))
        return out

    def _meta_by_name(self, pfd: int, name: str, ti: Entry, owner: bool = True) -> None:
        if owner and (not self.root or ti.uid or ti.gid):
            os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
        if ti.xattrs:
            # setxattr has no dir_fd form: /proc/self/fd/N names the parent we hold
            # open, and follow_symlinks=False keeps the last component unfollowed.
            path = f"/proc/self/fd/{pfd}/{name}"
            for k, v in self._allowed(ti.xattrs):
                os.setxattr(path, k, v, follow_symlinks=False)
        os.utime(name, ns=(ti.mtime_ns, ti.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, ti: Entry, pfd: int, name: str, parts: tuple[str, ...]) -> None:
        target = split_name(ti.linkname)
        if not target:
            raise LayerError(f"{ti.name!r}: hardlink to the layer root")
        tfd = self.dir_fd(target[:-1], create=False)
        try:
            tst = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
        except FileNotFoundError:
            raise LayerError(
                f"{ti.name!r}: hardlink target {ti.linkname!r} is not in this layer"
            ) from None
        if stat.S_ISDIR(tst.st_mode):
            raise LayerError(f"{ti.name!r}: hardlink to a directory {ti.linkname!r}")
        try:
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            old = self._remove_unless_same(pfd, name, parts, tst)
            if old:
                return
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _remove_unless_same(self, pfd: int, name: str, parts: tuple[str, ...],
                            tst: os.stat_result) -> bool:
        cur = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if (cur.st_ino, cur.st_dev) == (tst.st_ino, tst.st_dev):
            return True
        self._remove(pfd, name, parts)
        return False

    def finish_dirs(self) -> None:
        """Apply directories' metadata deepest first, so no later write changes an mtime."""
        if () not in self.dirs:
            os.chmod(self.root_fd, 0o755)  # noqa: S103 - a rootfs root is 0755
        for parts in sorted(self.dirs, key=len, reverse=True):
            ti = self.dirs[parts]
            self.name = ti.name
            self.trim()
            fd = self.dir_fd(parts, create=False)
            if not parts and (not self.root or ti.uid or ti.gid):
                os.fchown(fd, ti.uid, ti.gid)
            os.fchmod(fd, ti.mode)
            if ti.xattrs:
                for k, v in self._allowed(ti.xattrs):
                    os.setxattr(fd, k, v)
            os.utime(fd, ns=(ti.mtime_ns, ti.mtime_ns))


def _umask() -> int:
    # Read, not set: os.umask() would change it for every thread of the process.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777  # unknown: always chmod


def _translate(e: OSError, name: str, dest: Path) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"disk full while extracting {name!r} into {dest.parent}",
                          hint="free space in the data directory, or run `imgbuilder prune`")
    if e.errno == errno.EPERM and os.geteuid() != 0:
        return StoreError(f"extracting {name!r} needs root (file owners, device nodes)",
                          hint="run the command with sudo")
    if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return StoreError(f"the filesystem of {dest.parent} does not support xattrs or "
                          "device nodes needed by overlay layers",
                          hint="use a data directory on ext4, xfs or btrfs")
    return LayerError(f"cannot extract {name!r}: {e.strerror or e}")


def extract_layer(tar_stream: Readable | BinaryIO, dest: Path) -> ExtractStats:
    """Extract the uncompressed tar ``tar_stream`` into the existing, empty directory ``dest``.

    Guarantees: nothing is created, changed or followed outside ``dest`` (see the module
    docstring); the stream is read once, to EOF, so a hashing wrapper sees every byte;
    on error :class:`LayerError` (bad or hostile archive) or :class:`StoreError` (disk
    full, missing privileges, unsupported filesystem) is raised and ``dest`` holds a partial
    layer that the caller discards (the store never publishes it).
    """
    src = Source(tar_stream)
    ex = _Extractor(dest)
    try:
        for entry in iter_members(src):
            ex.member(entry, src)
        ex.finish_dirs()
        ex.stats.tar_bytes = src.offset
        return ex.stats
    except OSError as e:
        raise _translate(e, ex.name, dest) from None
    finally:
        ex.close()
