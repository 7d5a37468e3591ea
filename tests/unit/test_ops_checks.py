"""doctor and security checks over tables of host facts and configs."""

from __future__ import annotations

import os

import pytest

from sandkasten.cli import _checks as C
from sandkasten.cli._init import registry_host

HYBRID = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 31 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
36 31 0:33 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = """\
27 1 254:0 / / rw,relatime - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
40 27 0:50 / /mnt/c rw,noatime - 9p drvfs rw,aname=drvfs;path=C:\\
41 27 0:51 / /mnt/my\\040disk rw - ext4 /dev/sdb rw
"""
LEGACY_NO_PIDS = """\
27 1 254:0 / / rw - ext4 /dev/vda rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""


def test_parse_mountinfo_and_mount_for() -> None:
    mounts = C.parse_mountinfo(UNIFIED)
    assert [m.fstype for m in mounts] == ["ext4", "cgroup2", "9p", "ext4"]
    assert mounts[3].mountpoint == "/mnt/my disk"
    assert C.mount_for("/mnt/c/Users/x", mounts).fstype == "9p"  # type: ignore[union-attr]
    assert C.mount_for("/var/lib/sandkasten", mounts).mountpoint == "/"  # type: ignore[union-attr]
    assert C.mount_for("/mnt/cc", mounts).mountpoint == "/"  # type: ignore[union-attr]


@pytest.mark.parametrize(("text", "controllers", "version", "layout", "enforce"), [
    (HYBRID, "hugetlb", 1, "hybrid", ("cpu", "memory", "pids")),
    (UNIFIED, "cpuset cpu io memory hugetlb pids rdma", 2, "unified", ("cpu", "memory", "pids")),
    (UNIFIED, "cpuset io hugetlb", None, "unified", ()),   # WSL2 default: controllers on v1
    (LEGACY_NO_PIDS, None, None, "legacy", ("cpu", "memory")),
    ("27 1 254:0 / / rw - ext4 /dev/vda rw\n", None, None, "none", ()),
])
def test_cgroup_facts(text: str, controllers: str | None, version: int | None, layout: str,
                      enforce: tuple[str, ...]) -> None:
    facts = C.cgroup_facts(C.parse_mountinfo(text), controllers)
    assert (facts.version, facts.layout, facts.enforceable) == (version, layout, enforce)
    check = C.check_cgroups(facts)
    assert (check.status == "ok") is (version is not None)
    if version is None:
        assert "kernelCommandLine=systemd.unified_cgroup_hierarchy=1" in check.fix


@pytest.mark.parametrize(("path", "fstype", "status"), [
    ("/var/lib/sandkasten", "ext4", "ok"),
    ("/mnt/c/sandkasten", "9p", "fail"),
    ("/mnt/d", "ext4", "fail"),          # a Windows drive letter, whatever the mount says
    ("/srv/sk", "ntfs3", "fail"),
    ("/mnt/data/sk", "xfs", "ok"),
])
def test_data_dir_filesystem(path: str, fstype: str, status: str) -> None:
    check = C.check_data_dir_fs(path, C.Mount("/", fstype, "x", ""))
    assert check.status == status
    if status == "fail":
        assert "NTFS does not support overlayfs" in check.fix


@pytest.mark.parametrize(("release", "wsl", "status"), [
    ("5.15.153.1-microsoft-standard-WSL2", True, "ok"),
    ("4.4.0-19041-Microsoft", True, "fail"),
    ("6.1.0-18-amd64", False, "info"),
])
def test_wsl_check(release: str, wsl: bool, status: str) -> None:
    assert C.check_wsl(release, wsl).status == status


def test_kernel_root_overlay() -> None:
    assert C.check_kernel("6.18.44-fc").status == "ok"
    assert C.check_kernel("4.19.0").status == "warn"
    assert C.check_root(1000).status == "fail" and "sudo" in C.check_root(1000).fix
    assert C.check_overlay_support("nodev\tsysfs\nnodev\toverlay\n").status == "ok"
    assert C.check_overlay_support("nodev\tsysfs\n").status == "fail"


GOOD = {"listen": "127.0.0.1:8080", "api_key": "sk-" + "x" * 40, "data_dir": "/var/lib/sk",
        "security": {"seccomp": "strict"},
        "defaults": {"cpu_limit": 1.0, "mem_limit_mb": 512, "pids_limit": 256,
                     "network_mode": "none", "readonly_rootfs": True}}


def _root_dir(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((0o040000 | mode, 0, 0, 2, uid, 0, 4096, 0, 0, 0))


def statuses(cfg: dict, **kw: object) -> dict[str, str]:
    args = {"config_mode": 0o100600, "data_dir_stat": _root_dir(0o700), "log_modes": {}}
    args.update(kw)
    return {c.name: c.status for c in C.security_checks(cfg, **args)}  # type: ignore[arg-type]


def test_security_good_config_passes() -> None:
    assert set(statuses(GOOD).values()) == {"ok"}


@pytest.mark.parametrize(("change", "kw", "name", "status"), [
    ({"api_key": ""}, {}, "api key", "warn"),
    ({"api_key": "", "listen": "0.0.0.0:8080"}, {}, "api key", "fail"),
    ({"api_key": "sk-sandbox-test"}, {}, "api key", "warn"),
    ({"listen": "0.0.0.0:8080"}, {}, "listen", "warn"),
    ({"listen": "[::1]:8080"}, {}, "listen", "ok"),
    ({"listen": "localhost:8080"}, {}, "listen", "ok"),
    ({"security": {"seccomp": "off"}}, {}, "seccomp", "fail"),
    ({"security": {}}, {}, "seccomp", "ok"),
    ({"defaults": {**GOOD["defaults"], "readonly_rootfs": False}}, {}, "readonly rootfs", "warn"),
    ({"defaults": {"network_mode": "none"}}, {}, "limits", "warn"),
    ({"defaults": {**GOOD["defaults"], "network_mode": "host"}}, {}, "network", "warn"),
    ({}, {"config_mode": 0o100644}, "config file", "fail"),
    ({}, {"log_modes": {"/d/run/daemon.log": 0o100644}}, "log files", "fail"),
    ({}, {"data_dir_stat": _root_dir(0o777)}, "data dir", "fail"),
    ({}, {"data_dir_stat": _root_dir(0o700, uid=1000)}, "data dir", "fail"),
    ({}, {"data_dir_stat": _root_dir(0o755)}, "data dir", "warn"),
    ({}, {"data_dir_stat": None}, "data dir", "warn"),
])
def test_security_findings(change: dict, kw: dict, name: str, status: str) -> None:
    assert statuses({**GOOD, **change}, **kw)[name] == status


@pytest.mark.parametrize(("ref", "host"), [
    ("python:3.12-slim", "registry-1.docker.io"),
    ("library/python:3.12", "registry-1.docker.io"),
    ("ghcr.io/org/img:1", "ghcr.io"),
    ("localhost:5000/python", "localhost:5000"),
    ("127.0.0.1:5000/x/y@sha256:" + "a" * 64, "127.0.0.1:5000"),
])
def test_registry_host(ref: str, host: str) -> None:
    assert registry_host(ref) == host
