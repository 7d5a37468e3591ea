"""Fixtures for tests on the host's real cgroups: a manager under a unique parent that is
removed, with everything in it, even when the test fails."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandkasten.runtime.linux.cgroups import CgroupManager, open_manager
from sandkasten.runtime.linux.cgroups.v1 import V1Manager
from sandkasten.runtime.linux.cgroups.v2 import V2Manager

PREFIX = "sk-test-cgroups-"
V2_SKIP = "needs a cgroup v2 host with memory, cpu and pids controllers (this host has them on v1)"


def host_manager(parent: str) -> CgroupManager | None:
    try:
        return open_manager(Path("/sys/fs/cgroup"), parent)
    except Exception:
        return None


def teardown(mgr: CgroupManager) -> None:
    for name in mgr.list():
        cg = mgr.open(name)
        if cg is not None:
            cg.remove(timeout=10)
    if isinstance(mgr, V1Manager):
        dirs = {os.path.realpath(d): d for d in mgr.parents.values()}.values()
    elif isinstance(mgr, V2Manager):
        dirs = [mgr.path]
    else:
        dirs = []
    for d in dirs:
        if d.exists():
            os.rmdir(d)


@pytest.fixture
def cgroup_manager() -> Iterator[CgroupManager]:
    """A real manager (v1 or v2, whichever the host offers) under a fresh parent."""
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups")
    parent = PREFIX + uuid.uuid4().hex[:8]
    mgr = host_manager(parent)
    if mgr is None:
        pytest.skip("needs cgroups that can enforce memory, cpu and pids limits")
    try:
        yield mgr
    finally:
        teardown(mgr)


def gated(code: str) -> subprocess.Popen[str]:
    """A python3 child that waits for one line on stdin before running ``code``, so the test
    can move it into a cgroup first."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def release(p: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    try:
        return p.communicate("go\n", timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
