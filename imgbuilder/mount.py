"""Read-only merged views of an image: ``image mount NAME DIR`` / ``image umount DIR``.

The layers become overlayfs lowerdirs (top layer first in the option string). With no
upperdir the mount is read-only by construction. A one-layer image is stacked on an empty
directory so that its whiteouts are interpreted rather than shown as devices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from imgbuilder.errors import ImageError, StoreError
from imgbuilder.flatten import MOUNT_DATA_LIMIT
from imgbuilder.images import ImageRecord
from imgbuilder.store import Store

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def is_mountpoint(path: Path) -> bool:
    target = str(Path(path).resolve())
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                return True
    return False


def mount_image(store: Store, rec: ImageRecord, target: Path) -> str:
    """Mount the merged view of ``rec`` read-only on ``target``; returns the option string."""
    if os.geteuid() != 0:
        raise ImageError("mounting an image needs root", hint="run it with sudo")
    target = Path(target)
    if not target.is_dir():
        raise ImageError(f"mount point {target} is not a directory")
    if is_mountpoint(target):
        raise ImageError(f"{target} is already a mount point",
                         hint=f"sandkasten image umount {target}")
    lowers = [str(p) for p in reversed(store.layer_paths(rec))]
    if len(lowers) == 1:
        empty = store.data_dir / "mounts" / "empty"
        empty.mkdir(parents=True, exist_ok=True)
        lowers.append(str(empty))
    data = "lowerdir=" + ":".join(lowers)
    if len(data) >= MOUNT_DATA_LIMIT:
        raise StoreError(f"image {rec.name} has too many layers for one overlay mount",
                         hint="imgbuilder import --flatten, or pull with --flatten")
    _check(_libc.mount(b"overlay", os.fsencode(str(target)), b"overlay",
                       MS_RDONLY | MS_NODEV | MS_NOSUID, data.encode()),
           f"mount overlay on {target}")
    return data


def umount(target: Path) -> None:
    """Unmount a view made by :func:`mount_image` (or any mount at ``target``)."""
    if os.geteuid() != 0:
        raise ImageError("unmounting needs root", hint="run it with sudo")
    if not is_mountpoint(target):
        raise ImageError(f"{target} is not mounted")
    _check(_libc.umount2(os.fsencode(str(Path(target).resolve())), 0), f"umount {target}")
