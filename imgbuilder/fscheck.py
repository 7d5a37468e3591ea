"""Can this data directory hold overlay layers? Filesystem probes, asked once per command.

Layers need what overlayfs needs from a lower directory: ``trusted.*`` xattrs (opaque
directories), 0:0 character devices (whiteouts), owners and modes. NTFS, FAT and the 9p
shares WSL2 uses for ``/mnt/c`` provide none of that reliably, so they are named outright
(statfs magic); anything else is probed by creating a whiteout and setting a trusted xattr.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import tempfile
from pathlib import Path

from imgbuilder.errors import StoreError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# statfs f_type values of filesystems that cannot hold overlay layers.
UNSUITABLE = {
    0x5346544E: "NTFS",
    0x65735546: "FUSE (e.g. ntfs-3g)",
    0x01021997: "9p (WSL2's /mnt/c drives)",
    0x4D44: "FAT",
    0x2011BAB0: "exFAT",
    0xFE534D42: "SMB2",
    0xFF534D42: "CIFS",
}
OVERLAYFS_MAGIC = 0x794C7630

_HINT = ("use a directory on the Linux filesystem, e.g. --data-dir /var/lib/sandkasten "
         "(not /mnt/c/...: NTFS does not support overlayfs)")


def fs_magic(path: Path) -> int:
    """statfs(2) ``f_type`` of the filesystem holding ``path``."""
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(str(path)), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int.from_bytes(buf.raw[:8], "little", signed=False) & 0xFFFFFFFF


def syncfs(path: Path) -> None:
    """Flush the whole filesystem holding ``path`` (one syscall instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def check_layer_filesystem(layers_dir: Path) -> None:
    """Raise StoreError, with the seed's WSL advice, if ``layers_dir`` cannot hold layers."""
    magic = fs_magic(layers_dir)
    if magic in UNSUITABLE:
        raise StoreError(
            f"data directory {layers_dir.parent} is on {UNSUITABLE[magic]}, which does not "
            "support overlayfs or xattrs", hint=_HINT)
    if magic == OVERLAYFS_MAGIC:
        raise StoreError(
            f"data directory {layers_dir.parent} is itself on overlayfs, which cannot hold "
            "whiteouts for another overlay", hint=_HINT)
    if os.geteuid() != 0:
        return  # trusted xattrs and device nodes need root: the commands say so themselves
    probe = Path(tempfile.mkdtemp(prefix=".tmp-probe-", dir=layers_dir))
    try:
        try:
            os.setxattr(probe, "trusted.overlay.opaque", b"y")
            os.mknod(probe / "wh", stat.S_IFCHR, 0)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL):
                raise StoreError(
                    f"data directory {layers_dir.parent} does not support trusted xattrs or "
                    "whiteout devices, which overlay layers need", hint=_HINT) from None
            raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe / "wh")
        os.rmdir(probe)
