"""cgroup limits for sandboxes: one ``CgroupManager`` interface, v2 and v1 behind it.

    mgr = open_manager()                      # detects v2 (plain or nested) or v1
    cg = mgr.create("s-1234", CgroupLimits(cpu=1.0, memory_bytes=512 << 20, pids=256))
    cg.add_process(pid); cg.stats(); cg.kill_all(); cg.remove()

``open_manager`` refuses (``CgroupsUnavailableError``, code ``cgroups_unavailable``) when
neither hierarchy can enforce cpu, memory and pids limits, unless ``allow_unlimited``.
"""

from __future__ import annotations

from pathlib import Path

from sandkasten.errors import CgroupsUnavailableError

from .base import REQUIRED, Cgroup, CgroupError, CgroupLimits, CgroupManager, CgroupStats
from .fs import CgroupFS, own_cgroups
from .unlimited import UnlimitedManager
from .v1 import V1Manager, mounted_controllers
from .v2 import V2Manager

__all__ = [
    "Cgroup",
    "CgroupError",
    "CgroupFS",
    "CgroupLimits",
    "CgroupManager",
    "CgroupStats",
    "open_manager",
]


def open_manager(
    root: Path = Path("/sys/fs/cgroup"),
    parent: str = "sandkasten",
    *,
    allow_unlimited: bool = False,
    fs: CgroupFS | None = None,
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
) -> CgroupManager:
    """Choose and prepare the hierarchy that can enforce cpu, memory and pids limits.

    Order: ``root`` itself a cgroup2 mount → v2; else v1 hierarchies under ``root``; else a
    hybrid host's ``root/unified`` if (unusually) it holds the controllers. A v2 hierarchy
    that lacks them (the hybrid ``unified`` mount with only hugetlb) never counts as usable.
    With ``allow_unlimited`` the best partial manager is returned (limits on missing
    controllers are not applied), or one that limits nothing.
    """
    fs = fs or CgroupFS()
    own = own_cgroups(proc_self_cgroup)
    candidates: list[CgroupManager] = []
    found: list[str] = []
    if fs.exists(root / "cgroup.controllers"):
        candidates.append(V2Manager(fs, root, own.get("", "/"), parent))
    else:
        if len(set(mounted_controllers(fs, root)) & set(REQUIRED)) == len(REQUIRED):
            candidates.append(V1Manager(fs, root, own, parent))
        unified = root / "unified"
        avail = fs.read_or(unified / "cgroup.controllers").split()
        if set(REQUIRED) <= set(avail):
            candidates.append(V2Manager(fs, unified, own.get("", "/"), parent))
        elif avail or fs.exists(unified / "cgroup.procs"):
            found.append(f"{unified} is cgroup v2 with only [{' '.join(avail)}]")
        v1 = mounted_controllers(fs, root)
        if v1:
            found.append(f"cgroup v1 has [{' '.join(v1)}]")
    for mgr in candidates:
        if not mgr.missing:
            return mgr
        found.append(f"cgroup v{mgr.version} cannot enforce [{' '.join(sorted(mgr.missing))}]")
    if allow_unlimited:
        return candidates[0] if candidates else UnlimitedManager()
    detail = "; ".join(found) if found else f"no cgroup hierarchy found at {root}"
    raise CgroupsUnavailableError(
        f"cgroup v2 not mounted: cannot enforce cpu, memory and pids limits ({detail})"
    )
