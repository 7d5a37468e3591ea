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

Speed: headers are parsed by the standard library's ``tarfile.TarInfo`` (PAX, GNU long
names), while file contents go from the decompressor's buffers straight to ``os.write``
on raw descriptors; directory descriptors are cached; chown is skipped when the owner
is already right.
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
import stat
import tarfile
import urllib.parse
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from imgbuilder.compression import Readable
from imgbuilder.errors import LayerError, StoreError
from imgbuilder.whiteout import OPAQUE_XATTR, classify, split_name

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_SIZE = 1 << 20
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


class _Source:
    """Sequential reader with the file-object subset ``TarInfo.fromtarfile`` uses."""

    def __init__(self, stream: Readable | BinaryIO) -> None:
        self._read = getattr(stream, "read1", None) or stream.read
        self.buf = b""
        self.mv = memoryview(self.buf)
        self.pos = 0
        self.offset = 0  # absolute position of buf[pos]

    def _fill(self) -> bool:
        data = self._read(_READ_SIZE)
        if not data:
            return False
        self.buf = bytes(data) if not isinstance(data, bytes) else data
        self.mv = memoryview(self.buf)
        self.pos = 0
        return True

    def tell(self) -> int:
        return self.offset

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at EOF) without consuming them."""
        end = self.pos + n
        if end <= len(self.buf):
            return self.buf[self.pos:end]
        parts = [self.buf[self.pos:]]
        have = len(parts[0])
        while have < n:
            data = self._read(_READ_SIZE)
            if not data:
                break
            parts.append(bytes(data))
            have += len(data)
        self.buf = b"".join(parts)
        self.mv = memoryview(self.buf)
        self.pos = 0
        return self.buf[:n]

    def consume(self, n: int) -> None:
        self.pos += n
        self.offset += n

    def read(self, n: int) -> bytes:
        end = self.pos + n
        if end <= len(self.buf):
            out = self.buf[self.pos:end]
            self.pos = end
            self.offset += n
            return out
        parts = [self.buf[self.pos:]]
        got = len(parts[0])
        self.pos = len(self.buf)
        while got < n and self._fill():
            take = min(n - got, len(self.buf))
            parts.append(self.buf[:take])
            self.pos = take
            got += take
        self.offset += got
        return b"".join(parts)

    def skip_to(self, offset: int) -> None:
        n = offset - self.offset
        while n > 0:
            avail = len(self.buf) - self.pos
            if not avail:
                if not self._fill():
                    raise LayerError("truncated layer: unexpected end of tar data")
                continue
            k = min(avail, n)
            self.pos += k
            self.offset += k
            n -= k

    def copy_to(self, fd: int, n: int) -> None:
        write = os.write
        while n > 0:
            avail = len(self.buf) - self.pos
            if not avail:
                if not self._fill():
                    raise LayerError("truncated layer: unexpected end of tar data")
                continue
            k = avail if avail < n else n
            view = self.mv[self.pos:self.pos + k]
            done = write(fd, view)
            while done < k:  # short writes happen on signals and nearly full disks
                done += write(fd, view[done:])
            self.pos += k
            self.offset += k
            n -= k

    def drain(self) -> int:
        """Read to EOF (so a hashing stream sees every byte); returns bytes skipped."""
        skipped = len(self.buf) - self.pos
        while self._fill():
            skipped += len(self.buf)
        self.pos = len(self.buf)
        self.offset += skipped
        return skipped


class _TarShim:
    """The attributes of ``TarFile`` that ``TarInfo.fromtarfile`` reads and writes."""

    def __init__(self, source: _Source) -> None:
        self.fileobj = source
        self.encoding = "utf-8"
        self.errors = "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


def _xattrs(pax: Mapping[str, str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in pax.items():
        if key.startswith("SCHILY.xattr."):
            out[key[13:]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[17:])
            out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
    return out


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    if raw:  # keep PAX's nanoseconds, which a float would round
        sec, _, frac = raw.partition(".")
        try:
            ns = int(sec) * 1_000_000_000
            if frac:
                ns += int((frac + "000000000")[:9]) * (-1 if sec.startswith("-") else 1)
            return ns
        except ValueError:
            pass
    return int(ti.mtime * 1_000_000_000)


_REG_TYPES = frozenset((b"0", b"\0", b"7"))
_FAST_TYPES = frozenset((b"0", b"\0", b"7", b"1", b"2", b"3", b"4", b"5", b"6"))
_TYPE_OF_TARINFO = {tarfile.REGTYPE: b"0", tarfile.AREGTYPE: b"0", tarfile.CONTTYPE: b"0",
                    tarfile.LNKTYPE: b"1", tarfile.SYMTYPE: b"2", tarfile.CHRTYPE: b"3",
                    tarfile.BLKTYPE: b"4", tarfile.DIRTYPE: b"5", tarfile.FIFOTYPE: b"6"}


class Entry:
    """One tar member as the extractor needs it (``kind`` is the ustar type byte)."""

    __slots__ = ("devmajor", "devminor", "gid", "kind", "linkname", "mode", "mtime_ns",
                 "name", "size", "uid", "xattrs")

    def __init__(self, name: str, kind: bytes, mode: int, uid: int, gid: int, size: int,
                 mtime_ns: int, linkname: str = "", devmajor: int = 0, devminor: int = 0,
                 xattrs: dict[str, bytes] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.xattrs = xattrs

    @classmethod
    def from_tarinfo(cls, ti: tarfile.TarInfo) -> Entry:
        if ti.issparse():
            raise LayerError(f"{ti.name!r}: sparse files are not supported")
        kind = _TYPE_OF_TARINFO.get(ti.type)
        if kind is None:
            raise LayerError(f"{ti.name!r}: unsupported tar entry type {ti.type!r}")
        return cls(ti.name, kind, ti.mode & 0o7777, ti.uid, ti.gid,
                   ti.size if kind == b"0" else 0, _mtime_ns(ti), ti.linkname,
                   ti.devmajor, ti.devminor, _xattrs(ti.pax_headers) or None)


def _octal(field: bytes) -> int:
    field = field.rstrip(b"\0 ")
    return int(field, 8) if field else 0


def _half_sum(block: bytes) -> int:
    # adler32's low half is 1 + the byte sum mod 65521; 256 bytes sum to at most 65280,
    # so each half of a header is summed exactly, in C.
    return (zlib.adler32(block) & 0xFFFF) - 1


def fast_header(buf: bytes) -> Entry | None:
    """Parse a plain ustar/GNU header of a common type, or None to let tarfile do it.

    Falls back (None) for PAX and GNU long-name headers, base-256 numbers, v7 headers and
    bad checksums, so every unusual case goes through the standard library's parser.
    """
    kind = buf[156:157]
    if kind not in _FAST_TYPES:
        return None
    magic = buf[257:265]
    posix = magic == b"ustar\x0000"
    if not posix and magic != b"ustar  \x00":
        return None
    if buf[124] & 0x80 or buf[136] & 0x80 or buf[108] & 0x80 or buf[116] & 0x80:
        return None
    try:
        chk = _octal(buf[148:156])
        if chk != _half_sum(buf[:256]) + _half_sum(buf[256:]) - _half_sum(buf[148:156]) + 256:
            return None
        name_b = buf[:100].split(b"\0", 1)[0]
        if posix and buf[345]:
            name_b = buf[345:500].split(b"\0", 1)[0] + b"/" + name_b
        name = name_b.decode("utf-8", "surrogateescape")
        if kind == b"\0" and name.endswith("/"):
            kind = b"5"  # old tars mark directories only by the trailing slash
        size = _octal(buf[124:136]) if kind in _REG_TYPES else 0
        entry = Entry(name, b"0" if kind in _REG_TYPES else kind, _octal(buf[100:108]) & 0o7777,
                      _octal(buf[108:116]), _octal(buf[116:124]), size,
                      _octal(buf[136:148]) * 1_000_000_000)
        if kind in b"12":
            entry.linkname = buf[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind in b"34":
            entry.devmajor = _octal(buf[329:337])
            entry.devminor = _octal(buf[337:345])
    except ValueError:
        return None
    return entry


class _Extractor:
    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.root_fd = os.open(dest, _DIR_FLAGS)
        self.cache: OrderedDict[tuple[str, ...], int] = OrderedDict()
        # Directories' mode, owner, mtime and xattrs, applied after all content.
        self.dirs: dict[tuple[str, ...], Entry] = {}
        self.root = os.geteuid() == 0
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
        parent = self.dir_fd(parts[:-1], create)
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
        if len(self.cache) > _DIR_CACHE:
            _, old = self.cache.popitem(last=False)
            os.close(old)
        return fd

    def _remove(self, pfd: int, name: str, parts: tuple[str, ...]) -> os.stat_result:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self._forget(parts)
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return st

    # -- members -----------------------------------------------------------------------
    def member(self, ti: Entry, src: _Source) -> None:
        self.name = ti.name
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
            try:
                fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, name, parts)
                fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
            try:
                if ti.size:
                    src.copy_to(fd, ti.size)
                if not self.root or ti.uid or ti.gid:
                    os.fchown(fd, ti.uid, ti.gid)
                os.fchmod(fd, ti.mode)
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
            fd = self.dir_fd(parts, create=False)
            if not parts and (not self.root or ti.uid or ti.gid):
                os.fchown(fd, ti.uid, ti.gid)
            os.fchmod(fd, ti.mode)
            if ti.xattrs:
                for k, v in self._allowed(ti.xattrs):
                    os.setxattr(fd, k, v)
            os.utime(fd, ns=(ti.mtime_ns, ti.mtime_ns))


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
    src = _Source(tar_stream)
    shim = _TarShim(src)
    ex = _Extractor(dest)
    next_offset = 0
    try:
        while True:
            src.skip_to(next_offset)
            head = src.peek(512)
            entry = fast_header(head) if len(head) == 512 and not shim.pax_headers else None
            if entry is not None:
                src.consume(512)
                next_offset = src.offset + ((entry.size + 511) & ~511)
                ex.member(entry, src)
                continue
            try:
                ti = tarfile.TarInfo.fromtarfile(shim)  # type: ignore[arg-type]
            except tarfile.EOFHeaderError:  # type: ignore[attr-defined]  # a zero block: the end-of-archive marker
                break
            except tarfile.EmptyHeaderError:  # type: ignore[attr-defined]
                if src.offset == 0:
                    raise LayerError("empty layer: no tar data") from None
                break  # no end marker; tar accepts this too
            except tarfile.TruncatedHeaderError:  # type: ignore[attr-defined]
                raise LayerError("truncated layer: incomplete tar header") from None
            except tarfile.HeaderError as e:
                raise LayerError(f"corrupt tar header at byte {src.offset}: {e}") from None
            next_offset = shim.offset
            ex.member(Entry.from_tarinfo(ti), src)
        ex.finish_dirs()
        src.drain()
        ex.stats.tar_bytes = src.offset
        return ex.stats
    except OSError as e:
        raise _translate(e, ex.name, dest) from None
    finally:
        ex.close()
