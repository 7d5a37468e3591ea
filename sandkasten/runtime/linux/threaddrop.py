"""Drop every privilege of the calling *thread*, and of nothing else.

The runner (PID 1) starts user processes with ``posix_spawn`` from a short-lived thread
(``runner.init.spawn``): no fork of the Python process, no Python code between fork and
exec. The spawned process inherits the credentials, capability sets, no_new_privs flag and
seccomp filter of the thread that spawned it, so that thread drops them first, with the
raw system calls: the kernel keeps credentials per thread, and only glibc's wrappers
(``setuid`` and friends, which ``caps.drop_privileges`` uses in forked children)
broadcast a change to every thread of the process. PID 1's other threads keep root.

Order, as in ``caps``: bounding and ambient sets while CAP_SETPCAP is still held; groups
and gid before uid; the inheritable set cleared explicitly; no_new_privs last; then a
check that nothing remains. Everything is resolved at import: a call imports nothing.

What the thread leaves behind: nothing; it exits right after the spawn. While it lives, a
sandbox process of the same uid may signal that thread; PID 1 blocks the signals it
handles and, as a pid namespace's init, never receives a default-action signal from inside
its namespace, so such a signal changes nothing.
"""

from __future__ import annotations

import ctypes
import os

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_EINVAL = 22
# (setgroups, setresuid, setresgid, capget, capset); the generic table for arm64/riscv64
_NR = {"x86_64": (116, 117, 119, 125, 126), "aarch64": (159, 147, 149, 90, 91),
       "riscv64": (159, 147, 149, 90, 91), "s390x": (206, 208, 210, 184, 185),
       "ppc64le": (81, 164, 169, 183, 184)}
_SETGROUPS, _SETRESUID, _SETRESGID, _CAPGET, _CAPSET = _NR.get(os.uname().machine,
                                                              _NR["x86_64"])


def _read_cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # PR_CAPBSET_DROP returns EINVAL past the last cap: harmless to overshoot


CAP_LAST_CAP = _read_cap_last_cap()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CapPair = _CapData * 2
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
CLONE_FS = 0x00000200


def _fail(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _sys(nr: int, *args: int) -> None:
    if _syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)) != 0:
        raise _fail(f"syscall {nr}")


def thread_capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread, as 64-bit masks."""
    hdr, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), _CapPair()
    if _syscall(ctypes.c_long(_CAPGET), ctypes.byref(hdr), ctypes.byref(data)) != 0:
        raise _fail("capget")
    return (data[0].effective | data[1].effective << 32,
            data[0].permitted | data[1].permitted << 32,
            data[0].inheritable | data[1].inheritable << 32)


def private_fs() -> None:
    """Give the calling thread its own cwd, root and umask (``unshare(CLONE_FS)``), so a
    chdir for a spawn moves neither PID 1 nor any other thread."""
    if _unshare(CLONE_FS) != 0:
        raise _fail("unshare(CLONE_FS)")


def drop_thread_privileges(uid: int, gid: int) -> None:
    """Make the calling thread ``uid``:``gid`` with no capabilities in any set, an empty
    bounding set and no_new_privs, ``gid`` its only group. OSError if anything remains."""
    for cap in range(CAP_LAST_CAP + 1):
        if _prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != _EINVAL:
            raise _fail(f"prctl(PR_CAPBSET_DROP, {cap})")
    if (_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0
            and ctypes.get_errno() != _EINVAL):
        raise _fail("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    groups = (ctypes.c_uint32 * 1)(gid)
    if _syscall(ctypes.c_long(_SETGROUPS), ctypes.c_long(1), groups) != 0:
        raise _fail("setgroups")
    _sys(_SETRESGID, gid, gid, gid)
    _sys(_SETRESUID, uid, uid, uid)
    hdr, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), _CapPair()  # all zero
    if _syscall(ctypes.c_long(_CAPSET), ctypes.byref(hdr), ctypes.byref(data)) != 0:
        raise _fail("capset")
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    if thread_capabilities() != (0, 0, 0) or os.getresuid() != (uid, uid, uid) \
            or os.getresgid() != (gid, gid, gid) or os.getgroups() != [gid]:
        raise OSError(1, "privileges remain after dropping them")
