"""The cgroup v2 code paths that do not need cpu/memory/pids, on any real cgroup2 mount,
including a hybrid host's /sys/fs/cgroup/unified (hugetlb only): moving a nested daemon
and its siblings into a leaf, subtree delegation, cgroup.kill, removal. Limits themselves
are proven by test_cgroups_v2_host.py where a full v2 host exists."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandkasten.runtime.linux.cgroups import open_manager
from sandkasten.runtime.linux.cgroups.v2 import LEAF, V2Manager
from tests.support.cgroups import PREFIX, remove_cgroup_tree, run_nested_daemon

pytestmark = pytest.mark.privileged


def _cgroup2_mount() -> Path | None:
    for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (p / "cgroup.controllers").exists():
            return p
    return None


@pytest.fixture
def v2_any() -> Iterator[V2Manager]:
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups")
    root = _cgroup2_mount()
    if root is None:
        pytest.skip("needs a cgroup2 mount (/sys/fs/cgroup or /sys/fs/cgroup/unified)")
    mgr = open_manager(root, PREFIX + uuid.uuid4().hex[:8], allow_unlimited=True,
                       proc_self_cgroup=Path("/proc/self/cgroup"))
    if not isinstance(mgr, V2Manager):
        pytest.skip(f"{root} is not usable as cgroup v2 here")
    try:
        yield mgr
    finally:
        remove_cgroup_tree(mgr.path)


def test_nested_daemon_moves_into_leaf_and_kills_sessions(v2_any: V2Manager) -> None:
    report = run_nested_daemon(v2_any.path, v2_any.root, allow_unlimited=True, hog=False)
    assert report["version"] == 2
    assert report["own"].endswith(f"/host-sim/{LEAF}")
    assert report["sibling_cgroup"].endswith(f"/host-sim/{LEAF}")
    assert report["host_procs"] == []
    assert report["path"].endswith("/host-sim/sessions")
    assert report["procs"] == [report["sleeper"]] and report["sleeper_rc"] == -9
    assert report["left"] == []
