"""Thin ctypes bindings to the libc calls Python 3.11 lacks.

unshare, setns, mount, umount2, pivot_root, open_tree, move_mount and mount_setattr (by
syscall number), sethostname, prctl; mknod is in ``os``. Each raises OSError with the
errno and the call named, so a failed setup step says which step failed. Loaded before a
process enters a sandbox; calls import nothing.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203,
                   "s390x": 217}.get(os.uname().machine, 155)

_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (not ctypes.util: 8 modules)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source is not None else None, target.encode(),
                       fstype.encode() if fstype is not None else None, flags,
                       data.encode() if data is not None else None),
           f"mount {fstype or 'bind'} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), new_root.encode(), put_old.encode()),
           "pivot_root")


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (ioctl, no ip(8) needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


_SYS_OPEN_TREE = 428  # the same number on every architecture (new syscall table)
_SYS_MOVE_MOUNT = 429
_AT_FDCWD = -100
_OPEN_TREE_CLONE = 1
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4


def open_tree_clone(path: str, *, recursive: bool = True) -> int:
    """A detached copy of the mount tree at ``path``, as an fd (attach it with move_mount).

    Unlike an fd from open(2), the copy stays usable after the mount it came from is
    detached, which is what pivot_root does to the host's tree.
    """
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    fd = _libc.syscall(_SYS_OPEN_TREE, ctypes.c_int(_AT_FDCWD), path.encode(),
                       ctypes.c_uint(flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return int(fd)


_SYS_MOUNT_SETATTR = 442  # new syscall table: the same number everywhere
_AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def idmap_tree(fd: int, userns_fd: int, *, recursive: bool = True) -> None:
    """Make the detached mount tree ``fd`` (from ``open_tree_clone``) idmapped through the
    user namespace ``userns_fd``: a file of disk uid N shows as uid N of that namespace,
    i.e. the host uid the namespace maps N to. Only a detached, never-attached tree can be
    idmapped, which is why this sits between open_tree and move_mount."""
    _setattr(fd, MOUNT_ATTR_IDMAP, userns_fd, recursive, "mount_setattr(MOUNT_ATTR_IDMAP)")


def harden_tree(fd: int, userns_fd: int | None = None) -> None:
    """Make the detached mount tree ``fd`` nosuid and nodev, and idmapped through
    ``userns_fd`` if given (see ``idmap_tree``): a host directory bound into a sandbox
    never lends it a device node or a setuid bit."""
    attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    if userns_fd is not None:
        attrs |= MOUNT_ATTR_IDMAP
    _setattr(fd, attrs, userns_fd or 0, True, "mount_setattr(nosuid, nodev)")


def _setattr(fd: int, attrs: int, userns_fd: int, recursive: bool, what: str) -> None:
    attr = _MountAttr(attrs, 0, 0, userns_fd)
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))), what)


def move_mount(fd: int, target: str) -> None:
    _check(_libc.syscall(_SYS_MOVE_MOUNT, ctypes.c_int(fd), b"", ctypes.c_int(_AT_FDCWD),
                         target.encode(), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)),
           f"move_mount onto {target}")
