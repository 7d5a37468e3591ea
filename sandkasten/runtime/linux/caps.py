"""Dropping every privilege before a sandboxed command runs.

``drop_privileges(uid, gid)`` is called in a forked child before exec, after the
sandbox's pivot_root: everything it needs (libc handles, the highest capability
number) is resolved when this module is imported, so the call imports and opens nothing.

Order matters: the bounding set and ambient set are cleared while we still hold
CAP_SETPCAP; groups and gid change before uid (after setuid we could no longer); the
inheritable set is cleared explicitly, since setuid leaves it alone and it could still
combine with a file's inheritable capabilities on exec; no_new_privs last, so no setuid
binary or file capability can give anything back. Finally capget verifies the result.
"""

from __future__ import annotations

import ctypes
import os

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_capget = {"x86_64": 125, "aarch64": 90, "riscv64": 90, "s390x": 184, "ppc64le": 183}
_SYS_capset = {"x86_64": 126, "aarch64": 91, "riscv64": 91, "s390x": 185, "ppc64le": 184}


def _read_cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # PR_CAPBSET_DROP returns EINVAL past the last cap: harmless to overshoot


CAP_LAST_CAP = _read_cap_last_cap()
_MACHINE = os.uname().machine


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_NR_CAPGET = _SYS_capget.get(_MACHINE, 125)
_NR_CAPSET = _SYS_capset.get(_MACHINE, 126)
# Allocated now so that drop_privileges allocates no ctypes types later.
_hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
_data = (_CapData * 2)()


def _fail(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread, as 64-bit masks."""
    _hdr.version, _hdr.pid = _LINUX_CAPABILITY_VERSION_3, 0
    if _syscall(_NR_CAPGET, ctypes.byref(_hdr), ctypes.byref(_data)) != 0:
        raise _fail("capget")
    d = _data
    return (d[0].effective | d[1].effective << 32, d[0].permitted | d[1].permitted << 32,
            d[0].inheritable | d[1].inheritable << 32)


def drop_privileges(uid: int = 1000, gid: int = 1000) -> None:
    """Become ``uid``:``gid`` with no capabilities in any set, no way to regain any
    (empty bounding set, no_new_privs) and ``gid`` as the only group.

    Raises OSError if any step fails or capabilities remain; the caller must then not exec.
    Works for ``uid == 0`` too (root without capabilities).
    """
    for cap in range(CAP_LAST_CAP + 1):
        if _prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            raise _fail(f"prctl(PR_CAPBSET_DROP, {cap})")
    # EINVAL: a kernel without ambient capabilities (< 4.3) has none to clear.
    if (_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0
            and ctypes.get_errno() != 22):
        raise _fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _hdr.version, _hdr.pid = _LINUX_CAPABILITY_VERSION_3, 0
    for i in range(2):
        _data[i].effective = _data[i].permitted = _data[i].inheritable = 0
    if _syscall(_NR_CAPSET, ctypes.byref(_hdr), ctypes.byref(_data)) != 0:
        raise _fail("capset")
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    if capabilities() != (0, 0, 0):
        raise OSError(1, f"capabilities remain after dropping them: {capabilities()}")
