"""cgroup v2 with real controllers: runs on any host whose /sys/fs/cgroup is cgroup2 with
cpu, memory and pids (an Ubuntu 24.04 systemd host, WSL2 with unified cgroups), and skips
elsewhere. Together with tests/privileged/test_cgroups_limits.py (which runs on whatever
hierarchy the host has) it proves limits, the nested delegated layout and cgroup.kill."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandkasten.runtime.linux.cgroups import CgroupLimits
from sandkasten.runtime.linux.cgroups.v2 import LEAF, V2Manager
from tests.support.cgroups import PREFIX, V2_SKIP, host_manager, run_nested_daemon, teardown

pytestmark = pytest.mark.privileged
ROOT = Path("/sys/fs/cgroup")


@pytest.fixture
def v2() -> Iterator[V2Manager]:
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups")
    mgr = host_manager(PREFIX + uuid.uuid4().hex[:8])
    if not isinstance(mgr, V2Manager):
        if mgr is not None:
            teardown(mgr)
        pytest.skip(V2_SKIP)
    try:
        yield mgr
    finally:
        teardown(mgr)


def test_v2_limit_files(v2: V2Manager) -> None:
    cg = v2.create(PREFIX + "files", CgroupLimits(cpu=1.5, memory_bytes=64 << 20, pids=32))
    d = v2.path / (PREFIX + "files")
    assert (d / "cpu.max").read_text().split() == ["150000", "100000"]
    assert (d / "memory.max").read_text().strip() == str(64 << 20)
    if (d / "memory.swap.max").exists():
        assert (d / "memory.swap.max").read_text().strip() == "0"
    assert (d / "pids.max").read_text().strip() == "32"
    assert (d / "cgroup.kill").exists(), "Linux >= 5.14 has cgroup.kill"
    cg.remove()
    assert not d.exists()


def test_v2_nested_delegated_daemon(v2: V2Manager) -> None:
    report = run_nested_daemon(v2.path, ROOT, allow_unlimited=False, hog=True)
    assert report["version"] == 2 and report["controllers"] == ["cpu", "memory", "pids"]
    assert report["own"].endswith(f"/host-sim/{LEAF}")
    assert report["sibling_cgroup"].endswith(f"/host-sim/{LEAF}")  # moved along
    assert report["host_procs"] == []  # no internal processes
    assert {"cpu", "memory", "pids"} <= set(report["host_subtree"])
    assert report["procs"] == [report["sleeper"]] and report["sleeper_rc"] == -9
    assert report["oom"] == {"rc": -9, "oom_kills": 1}
    assert report["left"] == []


def test_v2_systemd_delegation_is_detected(v2: V2Manager) -> None:
    # Without Delegate=yes systemd stops the whole service at a sandbox's OOM kill, so the
    # manager must see, from the xattr systemd puts on delegated cgroups, which case it is in.
    expect = os.environ.get("SANDKASTEN_EXPECT_DELEGATE")
    if expect is None:
        pytest.skip("needs a systemd service with a known Delegate= (cgroup-v2-check.sh)")
    service = v2.base.name
    assert service.endswith(".service")
    assert v2.undelegated == (None if expect == "yes" else service)
