"""seccomp profiles loaded in a forked child: denied calls fail with EPERM (clone3 with
ENOSYS), ordinary programs and threads still work.

The child stays root with every capability while it probes, and each call gets arguments
the kernel would reject with another errno (EFAULT, EINVAL, EBADF): so EPERM can only come
from the filter, and no probe can do harm if the filter were missing."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from typing import Any

import pytest

from sandkasten.runtime.linux import seccomp
from tests.support.forked import in_child

pytestmark = pytest.mark.privileged

BAD = 0xFFFF
# name -> arguments that are invalid for the kernel (never a real action)
PROBES: dict[str, tuple[int, ...]] = {
    "bpf": (BAD, 0, 0),
    "userfaultfd": (BAD,),
    "perf_event_open": (0, 0, -1, -1, 0),
    "ptrace": (BAD, 0, 0, 0),
    "process_vm_readv": (0, 0, 0, 0, 0, BAD),
    "process_vm_writev": (0, 0, 0, 0, 0, BAD),
    "kexec_load": (0, 0, 0, 0xFFFF0000),
    "kexec_file_load": (-1, -1, 0, 0, 0xFFFF0000),
    "init_module": (0, 0, 0),
    "finit_module": (-1, 0, BAD),
    "delete_module": (0, 0),
    "keyctl": (BAD, 0, 0, 0, 0),
    "add_key": (0, 0, 0, 0, 0),
    "request_key": (0, 0, 0, 0),
    "mount": (0, 0, 0, 0, 0),
    "umount2": (0, 0),
    "pivot_root": (0, 0),
    "move_mount": (-1, 0, -1, 0, BAD),
    "fsopen": (0, BAD),
    "fsmount": (-1, BAD, 0),
    "fsconfig": (-1, BAD, 0, 0, 0),
    "fspick": (-1, 0, BAD),
    "open_tree": (-1, 0, 0xFFFFFFFF),
    "mount_setattr": (-1, 0, BAD, 0, 0),
    "swapon": (0, 0),
    "swapoff": (0,),
    "reboot": (0, 0, 0, 0),
    "syslog": (BAD, 0, 0),
    "acct": (1,),
    "settimeofday": (1, 1),
    "clock_settime": (BAD, 0),
    "clock_adjtime": (BAD, 0),
    "adjtimex": (0,),
    "open_by_handle_at": (-1, 0, 0),
    "io_uring_setup": (0, 0),
    "iopl": (99,),
    "pidfd_getfd": (-1, -1, BAD),
    "quotactl": (0, 0, 0, 0),
}
STRICT_ONLY = {"setns": (-1, 0)}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def nr(name: str) -> int:
    import pyseccomp

    return int(pyseccomp.resolve_syscall(pyseccomp.system_arch(), name))


def call(number: int, *args: int) -> int:
    """Raw syscall; returns 0 on success or the errno."""
    ctypes.set_errno(0)
    res = _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    return 0 if res >= 0 else ctypes.get_errno()


def probe(profile: seccomp.Profile, calls: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    numbers = {name: nr(name) for name in calls}
    flt = seccomp.prepare(profile)

    def child() -> dict[str, Any]:
        flt.load()
        return {name: errno.errorcode.get(call(numbers[name], *args), "OK")
                for name, args in calls.items()}

    return in_child(child)


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: probes must hold every capability to prove the filter")


@pytest.mark.parametrize("profile", ["mvp", "strict"])
def test_denied_calls_fail_with_eperm(profile: seccomp.Profile) -> None:
    got = probe(profile, PROBES)
    assert got == dict.fromkeys(PROBES, "EPERM")


def test_without_filter_the_probes_fail_otherwise() -> None:
    # The control: the same probes unfiltered never give EPERM (we are root), so the
    # EPERM above is the filter's doing.
    got = probe("off", PROBES)
    assert not {"EPERM", "OK"} & set(got.values()), got


CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000


def namespace_results(profile: seccomp.Profile) -> dict[str, Any]:
    numbers = {n: nr(n) for n in ("unshare", "clone3", "setns", "clone", "ioctl")}
    flt = seccomp.prepare(profile)

    def child() -> dict[str, Any]:
        flt.load()
        out = {
            "clone3": errno.errorcode.get(call(numbers["clone3"], 0, 0), "OK"),
            "setns": errno.errorcode.get(call(numbers["setns"], -1, 0), "OK"),
            "tiocsti": errno.errorcode.get(call(numbers["ioctl"], -1, 0x5412, 0), "OK"),
            "tiocsti_high_bits": errno.errorcode.get(
                call(numbers["ioctl"], -1, (1 << 32) | 0x5412, 0), "OK"),
            "ioctl_other": errno.errorcode.get(call(numbers["ioctl"], -1, 0x5401, 0), "OK"),
        }
        # clone(CLONE_NEWUSER | SIGCHLD); should it ever succeed, the new child exits.
        res = _libc.syscall(ctypes.c_long(numbers["clone"]),
                            ctypes.c_long(CLONE_NEWUSER | 17), *[ctypes.c_long(0)] * 4)
        if res == 0:
            os._exit(0)
        out["clone_newuser"] = "OK" if res > 0 else errno.errorcode[ctypes.get_errno()]
        if res > 0:
            os.waitpid(res, 0)
        # unshare last: a success changes this child's namespaces.
        out["unshare_newnet"] = errno.errorcode.get(call(numbers["unshare"], CLONE_NEWNET), "OK")
        out["unshare_newns"] = errno.errorcode.get(call(numbers["unshare"], CLONE_NEWNS), "OK")
        out["unshare_newuser"] = errno.errorcode.get(
            call(numbers["unshare"], CLONE_NEWUSER), "OK")
        return out

    return in_child(child)


def test_mvp_namespaces() -> None:
    got = namespace_results("mvp")
    assert got["clone3"] == "ENOSYS"
    assert got["clone_newuser"] == "EPERM" and got["unshare_newuser"] == "EPERM"
    assert got["tiocsti"] == "EPERM" and got["tiocsti_high_bits"] == "EPERM"
    assert got["ioctl_other"] == "EBADF"
    # mvp leaves other namespaces to capabilities (this probe still holds them).
    assert got["setns"] == "EBADF"
    assert got["unshare_newns"] == "OK" and got["unshare_newnet"] == "OK"


def test_strict_namespaces() -> None:
    got = namespace_results("strict")
    assert got["clone3"] == "ENOSYS" and got["setns"] == "EPERM"
    for key in ("clone_newuser", "unshare_newuser", "unshare_newns", "unshare_newnet"):
        assert got[key] == "EPERM", key


@pytest.mark.parametrize("profile", ["mvp", "strict"])
def test_programs_and_threads_still_work(profile: seccomp.Profile) -> None:
    flt = seccomp.prepare(profile)
    script = ("import threading, subprocess\n"
              "r = []\n"
              "ts = [threading.Thread(target=r.append, args=(i,)) for i in range(4)]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]\n"
              "print(sorted(r), subprocess.run(['sh', '-c', 'echo $((6*7))'],"
              " capture_output=True, text=True).stdout.strip())\n")

    def child() -> list[str]:
        flt.load()
        outs = []
        for argv in (["sh", "-c", "echo hi | tr a-z A-Z; ls / >/dev/null && echo ls-ok"],
                     [sys.executable, "-c", script],
                     ["unshare", "-U", "true"]):
            p = subprocess.run(argv, capture_output=True, text=True)
            outs.append(f"{p.returncode}:{p.stdout.strip()}")
        return outs

    sh, py, unshare = in_child(child)
    assert sh == "0:HI\nls-ok"
    assert py == "0:[0, 1, 2, 3] 42"
    assert unshare.startswith("1:")  # unshare(1) cannot create a user namespace


def test_load_after_chroot_imports_nothing(tmp_path: Any) -> None:
    # After pivot_root the host's Python modules are gone: load() must not need them.
    flt = seccomp.prepare("mvp")
    os.chmod(tmp_path, 0o755)
    number = nr("bpf")

    def child() -> str:
        os.chroot(str(tmp_path))
        os.chdir("/")
        flt.load()
        return errno.errorcode.get(call(number, BAD, 0, 0), "OK")

    assert in_child(child) == "EPERM"


def test_foreign_abi_is_refused() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("x32 is an x86_64 ABI")
    flt = seccomp.prepare("mvp")

    def child() -> str:
        flt.load()
        # getpid through the x32 table (0x40000000 | 39) must not run.
        return errno.errorcode.get(call(0x40000000 | 39), "OK")

    assert in_child(child) == "ENOSYS"
