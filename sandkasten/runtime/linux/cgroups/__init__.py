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
    required = set(REQUIRED)
    found: list[str] = []
    fallback: CgroupManager | None = None
    if fs.exists(root / "cgroup.controllers"):
        v2 = V2Manager(fs, root, own.get("", "/"), parent)
        if not v2.missing:
            return v2
        found.append(f"cgroup v2 cannot enforce [{' '.join(sorted(v2.missing))}]")
        fallback = v2
    else:
        v1 = mounted_controllers(fs, root)
        unified = root / "unified"
        avail = fs.read_or(unified / "cgroup.controllers").split()
        if required <= set(v1):
            return V1Manager(fs, root, own, parent)
        if required <= set(avail):
            v2 = V2Manager(fs, unified, own.get("", "/"), parent)
            if not v2.missing:
                return v2
            found.append(f"{unified} cannot enforce [{' '.join(sorted(v2.missing))}]")
            fallback = v2
        elif avail or fs.exists(unified / "cgroup.procs"):
            found.append(f"{unified} is cgroup v2 with only [{' '.join(avail)}]")
        if v1:
            found.append(f"cgroup v1 has [{' '.join(v1)}]")
        if allow_unlimited and fallback is None and required & set(v1):
            fallback = V1Manager(fs, root, own, parent)  # the limits v1 can enforce
    if allow_unlimited:
        return fallback or UnlimitedManager()
    detail = "; ".join(found) if found else f"no cgroup hierarchy found at {root}"
    raise CgroupsUnavailableError(
        f"cgroup v2 not mounted: cannot enforce cpu, memory and pids limits ({detail})"
    )
