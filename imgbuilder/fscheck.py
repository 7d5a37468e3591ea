"""Is the data directory on a filesystem that can hold overlay lowerdirs?

Layers need what overlayfs needs from a lower filesystem: POSIX modes and owners, device
nodes for whiteouts, and ``trusted.*`` extended attributes (``trusted.overlay.opaque``).
NTFS/DrvFs under WSL (``/mnt/c``), 9p, FAT and SMB shares lack them; extracting there
would silently lose whiteouts and ownership, so we refuse up front with one clear line.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from imgbuilder.errors import StoreError

UNSUITABLE_FS = {"9p", "v9fs", "drvfs", "vfat", "msdos", "exfat", "ntfs", "ntfs3", "fuseblk",
                 "cifs", "smb3", "smbfs", "vboxsf", "virtiofs"}
_HINT = "use a directory on the Linux filesystem, e.g. --data-dir /var/lib/sandkasten"


def filesystem_type(path: Path) -> str:
    """The fstype of the mount holding ``path`` (longest mount point prefix), or ''."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return ""
    return fstype


def check_data_dir(store: object) -> None:
    """Raise StoreError unless the store's layers directory supports trusted xattrs."""
    data_dir = Path(getattr(store, "data_dir"))  # noqa: B009 - any object with data_dir
    existing = data_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fstype = filesystem_type(existing)
    if fstype in UNSUITABLE_FS:
        raise StoreError(
            f"data directory {data_dir} is on a {fstype} filesystem, which does not support "
            "overlayfs layers (no xattrs/device nodes)",
            hint=_HINT,
        )
    tmp = store.new_layer_tmpdir()  # type: ignore[attr-defined]
    try:
        os.setxattr(tmp, "trusted.overlay.opaque", b"y")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise StoreError(
                f"data directory {data_dir} is on a filesystem without extended attribute "
                f"support ({fstype or 'unknown'}); overlayfs layers cannot be stored there",
                hint=_HINT,
            ) from None
        if e.errno == errno.EPERM:
            raise StoreError(
                f"pulling into {data_dir} needs root (trusted.* xattrs for overlay whiteouts)",
                hint="run the command with sudo",
            ) from None
        raise StoreError(f"cannot use data directory {data_dir}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
