"""cgroup v1: one hierarchy per controller, mounted at ``<root>/<controller>``.

A sandbox's cgroup is a directory of the same relative path in each hierarchy we use:
memory, cpu, cpuacct (usage), pids (limits) and freezer (atomic kill). Co-mounted
controllers (``cpu,cpuacct`` with ``cpu`` a symlink) share one directory. Like runc for
a relative cgroups path, the parent sits below the daemon's own cgroup in each
hierarchy, so a host limit on the daemon also bounds its sandboxes.

OOM kills: ``memory.oom_control`` has an ``oom_kill`` counter (Linux >= 4.13) of tasks the
OOM killer chose in this cgroup. ``memory.failcnt`` only counts how often usage hit the
limit (reclaim usually succeeds), so it is not a kill count and is not used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .base import (
    CPU_PERIOD_US,
    REQUIRED,
    Cgroup,
    CgroupError,
    CgroupLimits,
    CgroupManager,
    CgroupStats,
    check_name,
    rmdir_retry,
    sigkill,
    wait_until,
    within,
)
from .fs import UNLIMITED_V1, CgroupFS

CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
# A file a v1 hierarchy's root has for the controller. pids and freezer have no file in a
# hierarchy's root cgroup, so for them the v1-only ``tasks`` file is the probe.
_PROBE = {
    "memory": "memory.limit_in_bytes",
    "cpu": "cpu.cfs_quota_us",
    "cpuacct": "cpuacct.usage",
    "pids": "tasks",
    "freezer": "tasks",
}


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def mounted_controllers(fs: CgroupFS, root: Path) -> list[str]:
    """v1 controllers mounted at ``<root>/<controller>``."""
    found = []
    for c in CONTROLLERS:
        d = root / c
        if fs.exists(d / _PROBE[c]) and not fs.exists(d / "cgroup.controllers"):
            found.append(c)
    return found


class V1Cgroup(Cgroup):
    def __init__(self, fs: CgroupFS, dirs: dict[str, Path], name: str) -> None:
        self.fs = fs
        self.dirs = dirs  # controller -> this cgroup's directory in its hierarchy
        self.name = name
        # One directory per hierarchy (co-mounted controllers share one), resolved now so
        # that add_process, which runs on the session creation path, does no lookups.
        seen: dict[str, Path] = {}
        for d in dirs.values():
            seen.setdefault(os.path.realpath(d), d)
        self.hierarchies = list(seen.values())

    def _unique_dirs(self) -> list[Path]:
        return self.hierarchies

    def paths(self) -> dict[str, str]:
        return {c: str(d) for c, d in self.dirs.items()}

    def add_process(self, pid: int) -> None:
        """Move ``pid`` into this cgroup in every hierarchy.

        Fast path: a single-threaded process moving itself writes "0" to ``tasks``. Moving a
        whole thread group (``cgroup.procs``) takes the kernel's global
        cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period (10-20 ms
        here); moving the calling thread alone does not take it (measured on 6.18), and for a
        single-threaded process the thread is the process.
        """
        target, value = "cgroup.procs", str(pid)
        if pid == os.getpid() and _single_threaded():
            target, value = "tasks", "0"
        for d in self.hierarchies:
            try:
                self.fs.write(d / target, value)
            except OSError as e:
                raise CgroupError(f"cannot move pid {pid} into {d}: {e.strerror}") from e

    def procs(self) -> list[int]:
        # The pids hierarchy (always present) sees every process the sandbox ever forked.
        key = "pids" if "pids" in self.dirs else next(iter(self.dirs))
        return self.fs.read_pids(self.dirs[key] / "cgroup.procs")

    def set_limits(self, limits: CgroupLimits) -> None:
        fs = self.fs
        try:
            if "memory" in self.dirs:
                m = self.dirs["memory"]
                mem = str(limits.memory_bytes) if limits.memory_bytes else "-1"
                # memsw (memory+swap) must stay >= memory: raise it first when growing, lower
                # it last when shrinking. Setting both equal forbids swap.
                memsw = m / "memory.memsw.limit_in_bytes"
                has_sw = fs.exists(memsw)
                cur = fs.read_int(m / "memory.limit_in_bytes", UNLIMITED_V1)
                growing = limits.memory_bytes is None or limits.memory_bytes > cur
                if has_sw and growing:
                    fs.write(memsw, mem)
                fs.write(m / "memory.limit_in_bytes", mem)
                if has_sw and not growing:
                    fs.write(memsw, mem)
            if "cpu" in self.dirs:
                c = self.dirs["cpu"]
                quota = limits.cpu_quota_us(CPU_PERIOD_US)
                fs.write(c / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                fs.write(c / "cpu.cfs_quota_us", str(quota) if quota else "-1")
            if "pids" in self.dirs:
                fs.write(self.dirs["pids"] / "pids.max", str(limits.pids) if limits.pids else "max")
        except OSError as e:
            raise CgroupError(f"cannot set limits on cgroup {self.name}: {e.strerror}") from e

    def stats(self) -> CgroupStats:
        fs, d = self.fs, self.dirs
        mem = d.get("memory")
        limit = fs.read_int(mem / "memory.limit_in_bytes", UNLIMITED_V1) if mem else UNLIMITED_V1
        cpu = fs.read_keyed(d["cpu"] / "cpu.stat") if "cpu" in d else {}
        usage_ns = fs.read_int(d["cpuacct"] / "cpuacct.usage") if "cpuacct" in d else 0
        return CgroupStats(
            memory_bytes=fs.read_int(mem / "memory.usage_in_bytes") if mem else 0,
            memory_limit=None if limit >= UNLIMITED_V1 else limit,
            cpu_usage_usec=usage_ns // 1000,
            pids=fs.read_int(d["pids"] / "pids.current") if "pids" in d else len(self.procs()),
            oom_kills=fs.read_keyed(mem / "memory.oom_control").get("oom_kill", 0) if mem else 0,
            nr_throttled=cpu.get("nr_throttled", 0),
            throttled_usec=cpu.get("throttled_time", 0) // 1000,
        )

    def _freezer_state(self) -> str:
        return self.fs.read_or(self.dirs["freezer"] / "freezer.state").strip()

    def _kill_pass(self) -> bool:
        sigkill(self.procs())
        return not self.procs()

    def kill_all(self, timeout: float = 5.0) -> None:
        if not any(self.fs.exists(d) for d in self.dirs.values()):
            return
        freezer = self.dirs.get("freezer")
        if freezer is not None and self.fs.exists(freezer / "freezer.state"):
            # Frozen tasks cannot fork, so one pass over cgroup.procs sees every process.
            # v1 holds a frozen task's SIGKILL until THAWED, hence the thaw afterwards.
            self.fs.write(freezer / "freezer.state", "FROZEN")
            frozen = wait_until(lambda: self._freezer_state() == "FROZEN", timeout)
            sigkill(self.procs())
            self.fs.write(freezer / "freezer.state", "THAWED")
            if not frozen:  # a task stuck in FREEZING (e.g. in uninterruptible sleep)
                wait_until(self._kill_pass, timeout)
        else:
            # No freezer: kill repeatedly; the pids limit bounds how many forks can race us.
            wait_until(self._kill_pass, timeout)
        if not wait_until(lambda: not self.procs(), timeout):
            raise CgroupError(f"processes {self.procs()} survived kill of cgroup {self.name}")

    def remove(self, timeout: float = 5.0) -> None:
        if self.procs():
            self.kill_all(timeout)
        rmdir_retry(self.fs, self._unique_dirs(), timeout)


class V1Manager(CgroupManager):
    version = 1

    def __init__(self, fs: CgroupFS, root: Path, own: dict[str, str], parent: str) -> None:
        """Use the v1 hierarchies under ``root``; ``own`` maps controller -> the daemon's
        cgroup path as /proc/self/cgroup names it."""
        self.fs = fs
        self.root = root
        check_name(parent)
        self.parents: dict[str, Path] = {}
        for c in mounted_controllers(fs, root):
            base = root / c / own.get(c, "/").lstrip("/")
            if not fs.exists(base / "cgroup.procs"):
                base = root / c  # the mount shows a subtree (container): it is our cgroup
            self.parents[c] = base / parent
        self.controllers = frozenset(self.parents) & frozenset(REQUIRED)
        try:
            for d in self._unique(self.parents):
                fs.mkdir(d)
        except OSError as e:
            raise CgroupError(f"cannot prepare cgroup parent {parent}: {e.strerror}") from e

    @staticmethod
    def _unique(dirs: dict[str, Path]) -> list[Path]:
        seen: dict[str, Path] = {}
        for d in dirs.values():
            seen.setdefault(os.path.realpath(d), d)
        return list(seen.values())

    def _cgroup(self, name: str) -> V1Cgroup:
        check_name(name)
        return V1Cgroup(self.fs, {c: p / name for c, p in self.parents.items()}, name)

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        cg = self._cgroup(name)
        try:
            for d in cg._unique_dirs():
                self.fs.mkdir(d)
            cg.set_limits(limits)
        except BaseException as e:
            cg.remove(timeout=1.0)
            if isinstance(e, OSError):
                raise CgroupError(f"cannot create cgroup {name}: {e.strerror}") from e
            raise
        return cg

    def open(self, name: str) -> Cgroup | None:
        cg = self._cgroup(name)
        return cg if any(self.fs.exists(d) for d in cg.dirs.values()) else None

    def open_paths(self, name: str, paths: Mapping[str, str]) -> Cgroup | None:
        check_name(name)
        dirs: dict[str, Path] = {}
        for c, p in paths.items():
            d = Path(p)
            if c in self.parents and d.name == name and within(d, self.root / c):
                dirs[c] = d
        if not dirs or not any(self.fs.exists(d) for d in dirs.values()):
            return self.open(name)
        return V1Cgroup(self.fs, dirs, name)

    def list(self) -> list[str]:
        names: set[str] = set()
        for d in self._unique(self.parents):
            names.update(self.fs.children(d))
        return sorted(names)
