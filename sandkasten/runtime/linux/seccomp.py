"""seccomp profiles for sandboxed processes: ``off``, ``mvp`` (the default) and ``strict``.

``prepare(profile)`` builds the filter with libseccomp (through pyseccomp, ctypes on the
system's libseccomp.so) and compiles it to a classic BPF program held in memory. This is
the step that imports modules, dlopens libseccomp and allocates: do it before
pivot_root. ``PreparedFilter.load()`` later sets no_new_privs and installs the program
with one prctl(2) through ctypes functions resolved in advance: it imports nothing,
opens no file, and works after pivot_root and fork.

The model is Docker's default profile, turned into a deny list: everything is allowed
except the calls below, which fail with EPERM (``clone3`` with ENOSYS, see below).
Syscalls of a foreign ABI (x32 on x86_64, i386 through int 0x80) are refused with ENOSYS:
the filter only knows the native table, and a second table is a second set of numbers to
get wrong.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Literal

Profile = Literal["off", "mvp", "strict"]
PROFILES: tuple[Profile, ...] = ("off", "mvp", "strict")

# Denied by ``mvp`` (and ``strict``), grouped by why.
MVP_DENY: dict[str, tuple[str, ...]] = {
    # Kernel attack surface no sandboxed program needs; the source of many exploits.
    "kernel surface": ("bpf", "userfaultfd", "perf_event_open", "io_uring_setup",
                       "io_uring_enter", "io_uring_register", "lookup_dcookie", "uselib",
                       "sysfs", "ustat", "_sysctl", "nfsservctl", "vhangup"),
    # Reading or changing other processes' memory and descriptors.
    "process inspection": ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
                           "pidfd_getfd"),
    # Changing the running kernel.
    "kernel code": ("kexec_load", "kexec_file_load", "init_module", "finit_module",
                    "delete_module", "create_module", "get_kernel_syms", "query_module"),
    # The kernel keyring is not namespaced: keys would be shared with the host.
    "keyring": ("keyctl", "add_key", "request_key"),
    # The mount table: a sandbox's filesystem is fixed when it starts.
    "mounts": ("mount", "umount", "umount2", "pivot_root", "move_mount", "fsopen", "fsmount",
               "fsconfig", "fspick", "open_tree", "mount_setattr"),
    # Host-wide state: swap, power, the kernel log, process accounting, the clock, quotas,
    # raw port I/O, and file handles that bypass path lookup (the "shocker" escape).
    "host state": ("swapon", "swapoff", "reboot", "syslog", "acct", "settimeofday",
                   "clock_settime", "clock_adjtime", "adjtimex", "stime", "quotactl",
                   "quotactl_fd", "iopl", "ioperm", "vm86", "vm86old", "open_by_handle_at"),
}
STRICT_DENY = ("setns",)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080  # unshare only: in clone(2) these bits are the exit signal
NS_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
            CLONE_NEWPID, CLONE_NEWNET)
TIOCSTI = 0x5412  # push bytes into a terminal's input queue
TIOCLINUX = 0x541C

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass
class Rule:
    """One deny rule, as data (tests and docs read these)."""

    syscall: str
    errno: int
    arg: int | None = None  # argument index; the rule matches if (arg & mask) == value
    value: int = 0
    mask: int | None = None  # None: the value itself (all of value's bits set)


def rules(profile: Profile, arch_name: str = "x86_64") -> list[Rule]:
    """The deny rules of ``profile``. Pure: no libseccomp needed."""
    if profile not in PROFILES:
        raise ValueError(f"unknown seccomp profile {profile!r}: use one of {', '.join(PROFILES)}")
    if profile == "off":
        return []
    out = [Rule(name, errno.EPERM) for group in MVP_DENY.values() for name in group]
    # clone3 passes its flags in a struct seccomp cannot read, so it cannot be filtered by
    # flag: ENOSYS makes glibc (>= 2.34) fall back to clone(2), whose flags we can check.
    out.append(Rule("clone3", errno.ENOSYS))
    # ioctl's request is an unsigned int: compare only the low 32 bits, so garbage in the
    # high bits of the register cannot slip past the rule.
    out += [Rule("ioctl", errno.EPERM, 1, req, 0xFFFFFFFF) for req in (TIOCSTI, TIOCLINUX)]
    # clone's flags are argument 0, except on s390 where stack and flags are swapped.
    clone_arg = 1 if arch_name.startswith("s390") else 0
    if profile == "mvp":
        # A user namespace hands its creator every capability inside it: the door to most
        # of the kernel's namespaced-root attack surface. Other namespaces need
        # CAP_SYS_ADMIN, which sandboxed processes do not have.
        out += [Rule("unshare", errno.EPERM, 0, CLONE_NEWUSER),
                Rule("clone", errno.EPERM, clone_arg, CLONE_NEWUSER)]
    else:
        out += [Rule(name, errno.EPERM) for name in STRICT_DENY]
        out += [Rule("unshare", errno.EPERM, 0, f) for f in (*NS_FLAGS, CLONE_NEWTIME)]
        out += [Rule("clone", errno.EPERM, clone_arg, f) for f in NS_FLAGS]
    return out


class PreparedFilter:
    """A compiled seccomp program, ready to install in this process or a forked child."""

    def __init__(self, profile: Profile, program: bytes) -> None:
        self.profile = profile
        self.program = program
        # Everything load() touches is allocated here, before the sandbox's pivot_root.
        self._buf = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // 8, ctypes.cast(self._buf, ctypes.c_void_p))
        self._fprog_ptr = ctypes.cast(ctypes.pointer(self._fprog), ctypes.c_void_p)

    def load(self) -> None:
        """Set no_new_privs and install the filter on the calling thread (single-threaded
        callers: forked children). Imports nothing. Raises OSError if the kernel refuses."""
        if not self.program:
            return
        if _prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "prctl(PR_SET_NO_NEW_PRIVS) failed: " + os.strerror(e))
        if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self._fprog_ptr, 0, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "prctl(PR_SET_SECCOMP) failed: " + os.strerror(e))


def prepare(profile: Profile) -> PreparedFilter:
    """Compile ``profile`` for the native architecture. Call before pivot_root."""
    if profile == "off":
        rules(profile)
        return PreparedFilter(profile, b"")
    import pyseccomp as sc  # dlopens libseccomp; only here, never in load()

    arch = sc.system_arch()
    arch_name = os.uname().machine
    flt = sc.SyscallFilter(sc.ALLOW)
    try:
        flt.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.ENOSYS))
        for r in rules(profile, arch_name):
            nr = sc.resolve_syscall(arch, r.syscall)
            if nr < 0:
                continue  # not a syscall of this architecture (e.g. umount, stime on x86_64)
            if r.arg is None:
                flt.add_rule(sc.ERRNO(r.errno), r.syscall)
            else:
                mask = r.value if r.mask is None else r.mask
                flt.add_rule(sc.ERRNO(r.errno), r.syscall,
                             sc.Arg(r.arg, sc.MASKED_EQ, mask, r.value))
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            with os.fdopen(fd, "w+b", closefd=False) as f:
                flt.export_bpf(f)
                f.seek(0)
                program = f.read()
        finally:
            os.close(fd)
    finally:
        del flt
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, f"libseccomp produced an invalid program ({len(program)} B)")
    return PreparedFilter(profile, program)
