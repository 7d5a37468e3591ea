"""The seccomp profiles as data: what each one denies, with which errno."""

from __future__ import annotations

import errno

import pytest

from sandkasten.runtime.linux import seccomp
from sandkasten.runtime.linux.seccomp import CLONE_NEWNS, CLONE_NEWUSER, rules

REQUIRED_MVP = [
    "bpf",
    "userfaultfd",
    "perf_event_open",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "open_tree",
    "mount_setattr",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "adjtimex",
]


def plain(profile: seccomp.Profile) -> dict[str, int]:
    return {r.syscall: r.errno for r in rules(profile) if r.arg is None}


def masked(profile: seccomp.Profile, name: str) -> set[int]:
    return {r.value for r in rules(profile) if r.syscall == name and r.arg is not None}


def test_off_denies_nothing() -> None:
    assert rules("off") == []


@pytest.mark.parametrize("profile", ["mvp", "strict"])
def test_required_denials(profile: seccomp.Profile) -> None:
    denied = plain(profile)
    for name in REQUIRED_MVP:
        assert denied.get(name) == errno.EPERM, name
    assert denied["clone3"] == errno.ENOSYS


def test_mvp_blocks_only_user_namespaces() -> None:
    assert masked("mvp", "unshare") == {CLONE_NEWUSER}
    assert masked("mvp", "clone") == {CLONE_NEWUSER}
    assert "setns" not in plain("mvp")


def test_strict_blocks_every_namespace() -> None:
    assert "setns" in plain("strict")
    assert CLONE_NEWNS in masked("strict", "unshare")
    assert masked("strict", "unshare") >= masked("strict", "clone") >= {CLONE_NEWUSER}
    assert seccomp.CLONE_NEWTIME not in masked("strict", "clone")  # exit-signal bits there


def test_clone_flags_argument_on_s390() -> None:
    args = {r.arg for r in rules("mvp", "s390x") if r.syscall == "clone"}
    assert args == {1}


def test_ioctl_rules_compare_low_32_bits() -> None:
    ioctl = [r for r in rules("mvp") if r.syscall == "ioctl"]
    assert {r.value for r in ioctl} == {seccomp.TIOCSTI, seccomp.TIOCLINUX}
    assert all(r.mask == 0xFFFFFFFF and r.arg == 1 for r in ioctl)


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="unknown seccomp profile"):
        rules("tight")  # type: ignore[arg-type]


def test_prepare_compiles_bpf() -> None:
    assert seccomp.prepare("off").program == b""
    mvp, strict = seccomp.prepare("mvp").program, seccomp.prepare("strict").program
    assert len(mvp) % 8 == 0 and len(strict) > len(mvp) > 0
