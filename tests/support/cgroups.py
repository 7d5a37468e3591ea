"""Fixtures for tests on the host's real cgroups: a manager under a unique parent that is
removed, with everything in it, even when the test fails."""

from __future__ import annotations

import contextlib
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
        dirs: list[Path] = list({os.path.realpath(d): d for d in mgr.parents.values()}.values())
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


# -- the nested, delegated cgroup v2 case ------------------------------------------------

# Runs as a simulated daemon whose own cgroup holds processes: waits for a line on stdin
# (the test moves it first), opens the manager, runs one session and reports as JSON.
NESTED_DAEMON = r"""
import json, os, subprocess, sys
from pathlib import Path
from sandkasten.runtime.linux.cgroups import CgroupLimits, open_manager
root, allow, hog = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
sys.stdin.readline()
mgr = open_manager(root, "sessions", allow_unlimited=allow)
own = [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")][0]
cg = mgr.create("s1", CgroupLimits(memory_bytes=48 << 20, pids=16, cpu=0.5))
p = subprocess.Popen(["sleep", "30"])
cg.add_process(p.pid)
procs = cg.procs()
cg.kill_all()
rc = p.wait()
oom = None
if hog:
    h = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); "
                          "b = b'x' * (200 << 20)"], stdin=subprocess.PIPE, text=True)
    cg.add_process(h.pid)
    h.communicate("go\n")
    oom = {"rc": h.returncode, "oom_kills": cg.stats().oom_kills}
cg.remove()
print(json.dumps({"version": mgr.version, "controllers": sorted(mgr.controllers),
                  "own": own, "procs": procs, "sleeper": p.pid, "sleeper_rc": rc,
                  "oom": oom, "left": mgr.list(), "path": str(mgr.path)}))
"""


def remove_cgroup_tree(path: Path) -> None:
    """Kill everything under a v2 cgroup ``path`` and remove it, deepest first."""
    if not path.exists():
        return
    for child in sorted((d for d in path.iterdir() if d.is_dir()), reverse=True):
        remove_cgroup_tree(child)
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    from sandkasten.runtime.linux.cgroups.base import wait_until

    def gone() -> bool:
        try:
            os.rmdir(path)
        except OSError:
            return False
        return True

    assert wait_until(gone, 10), f"cannot remove {path}"


def run_nested_daemon(top: Path, root: Path, *, allow_unlimited: bool, hog: bool) -> dict:
    """Simulate a daemon in the non-root cgroup ``top/host-sim`` that already holds another
    process, run NESTED_DAEMON in it, and return its report plus where the sibling went."""
    import json

    host = top / "host-sim"
    host.mkdir()
    sibling = subprocess.Popen(["sleep", "60"])
    daemon = subprocess.Popen(
        [sys.executable, "-c", NESTED_DAEMON, str(root), "1" if allow_unlimited else "0",
         "1" if hog else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for pid in (sibling.pid, daemon.pid):
            (host / "cgroup.procs").write_text(str(pid))
        out, err = daemon.communicate("go\n", timeout=60)
        assert daemon.returncode == 0, err
        report = json.loads(out)
        with open(f"/proc/{sibling.pid}/cgroup") as f:
            report["sibling_cgroup"] = next(x for x in f.read().splitlines() if x.startswith("0::"))
        report["host_procs"] = (host / "cgroup.procs").read_text().split()
        report["host_subtree"] = (host / "cgroup.subtree_control").read_text().split()
        return report
    finally:
        for p in (sibling, daemon):
            if p.poll() is None:
                p.kill()
            p.wait()
        remove_cgroup_tree(host)
