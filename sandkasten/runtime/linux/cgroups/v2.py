"""cgroup v2 (unified hierarchy), including the nested, delegated case.

Layout: ``<base>/<parent>/<name>`` where ``<base>`` is the daemon's own cgroup (``/`` on
a plain host, e.g. ``/system.slice/sandkasten.service`` under systemd). v2's
no-internal-process rule forbids enabling controllers for children of a cgroup that has
processes, so when ``<base>`` is not the root and holds processes, they are moved into
the leaf ``<base>/<LEAF>`` first (what docker-in-docker's entrypoint does with /init).
"""

from __future__ import annotations

import errno
import logging
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
from .fs import CgroupFS

LEAF = "sandkasten-daemon"
log = logging.getLogger("sandkasten")


def undelegated_service(fs: CgroupFS, base: Path, root: Path) -> str | None:
    """The systemd service whose cgroup ``base`` is, when systemd has not delegated it.

    Such a service is stopped by systemd at the first OOM kill in any sandbox: the default
    ``OOMPolicy=stop`` watches the service cgroup's hierarchical ``memory.events``, and only
    for a delegated cgroup reads ``memory.events.local`` instead (shown in a cgroup v2 VM,
    see docs/security.md). systemd (>= 251) marks a delegated cgroup with the xattr
    ``trusted.delegate`` (``user.delegate`` under a user manager).
    """
    if base == root or not base.name.endswith(".service"):
        return None
    for attr in ("trusted.delegate", "user.delegate"):
        if fs.xattr(base, attr) == b"1":
            return None
    return base.name


def _descendants(fs: CgroupFS, path: Path) -> list[Path]:
    """``path`` and every cgroup below it, deepest first."""
    out: list[Path] = []
    for child in fs.children(path):
        out.extend(_descendants(fs, path / child))
    out.append(path)
    return out


class V2Cgroup(Cgroup):
    def __init__(self, fs: CgroupFS, path: Path) -> None:
        self.fs = fs
        self.path = path
        self.name = path.name

    def paths(self) -> dict[str, str]:
        return {"": str(self.path)}

    def add_process(self, pid: int) -> None:
        try:
            self.fs.write(self.path / "cgroup.procs", str(pid))
        except OSError as e:
            raise CgroupError(f"cannot move pid {pid} into {self.path}: {e.strerror}") from e

    def procs(self) -> list[int]:
        pids: list[int] = []
        for d in _descendants(self.fs, self.path):
            pids.extend(self.fs.read_pids(d / "cgroup.procs"))
        return pids

    def set_limits(self, limits: CgroupLimits) -> None:
        p, fs = self.path, self.fs
        quota = limits.cpu_quota_us(CPU_PERIOD_US)
        try:
            if fs.exists(p / "cpu.max"):
                fs.write(p / "cpu.max", f"{quota if quota else 'max'} {CPU_PERIOD_US}")
            if fs.exists(p / "memory.max"):
                mem = limits.memory_bytes
                fs.write(p / "memory.max", str(mem) if mem else "max")
                # No swap: a limit the sandbox could double by swapping is not a limit.
                if fs.exists(p / "memory.swap.max"):
                    fs.write(p / "memory.swap.max", "0" if mem else "max")
            if fs.exists(p / "pids.max"):
                fs.write(p / "pids.max", str(limits.pids) if limits.pids else "max")
        except OSError as e:
            raise CgroupError(f"cannot set limits on {p}: {e.strerror}") from e

    def stats(self) -> CgroupStats:
        p, fs = self.path, self.fs
        limit = fs.read_int(p / "memory.max", -1)
        cpu = fs.read_keyed(p / "cpu.stat")
        return CgroupStats(
            memory_bytes=fs.read_int(p / "memory.current"),
            memory_limit=None if limit < 0 else limit,
            cpu_usage_usec=cpu.get("usage_usec", 0),
            pids=fs.read_int(p / "pids.current", -1) if fs.exists(p / "pids.current")
            else len(self.procs()),
            oom_kills=fs.read_keyed(p / "memory.events").get("oom_kill", 0),
            nr_throttled=cpu.get("nr_throttled", 0),
            throttled_usec=cpu.get("throttled_usec", 0),
        )

    def _empty(self) -> bool:
        events = self.fs.read_keyed(self.path / "cgroup.events")
        if "populated" in events:
            return events["populated"] == 0
        return not self.procs()

    def kill_all(self, timeout: float = 5.0) -> None:
        if not self.fs.exists(self.path):
            return
        if self.fs.exists(self.path / "cgroup.kill"):
            # Linux >= 5.14: the kernel kills the whole subtree atomically, forks included.
            self.fs.write(self.path / "cgroup.kill", "1")
        else:
            self._freeze_and_kill(timeout)
        if not wait_until(self._empty, timeout):
            raise CgroupError(f"processes {self.procs()} survived kill of {self.path}")

    def _freeze_and_kill(self, timeout: float) -> None:
        # Frozen tasks cannot fork, so one pass over cgroup.procs sees every process; on v2 a
        # fatal signal is delivered to a frozen task, and thawing lets stragglers die.
        freeze = self.path / "cgroup.freeze"
        if self.fs.exists(freeze):
            self.fs.write(freeze, "1")
            wait_until(lambda: self.fs.read_keyed(self.path / "cgroup.events").get("frozen") == 1,
                       timeout)
        if self.fs.exists(freeze):
            sigkill(self.procs())
            self.fs.write(freeze, "0")
        else:  # Linux < 5.2: kill until empty; the pids limit bounds the forks racing us
            wait_until(self._kill_pass, timeout)

    def _kill_pass(self) -> bool:
        sigkill(self.procs())
        return not self.procs()

    def remove(self, timeout: float = 5.0) -> None:
        if not self.fs.exists(self.path):
            return
        if self.procs():
            self.kill_all(timeout)
        rmdir_retry(self.fs, _descendants(self.fs, self.path), timeout)


class V2Manager(CgroupManager):
    version = 2

    def __init__(self, fs: CgroupFS, root: Path, own: str, parent: str) -> None:
        """Prepare ``<base>/<parent>`` under the cgroup2 mount ``root``; ``own`` is the
        daemon's cgroup as /proc/self/cgroup names it."""
        self.fs = fs
        self.root = root
        base = root / own.lstrip("/")
        if not fs.exists(base / "cgroup.controllers"):
            base = root  # a cgroup namespace or a bind mount hides our path: use the mount
        if base.name == LEAF and base != root:
            base = base.parent  # already moved into our leaf (a restart, or a forked helper)
        self.base = base
        self.path = base / check_name(parent)
        self.undelegated = undelegated_service(fs, base, root)
        if self.undelegated:
            log.warning(
                "the daemon runs in the systemd service %s without Delegate=yes: systemd "
                "stops the service (and every sandbox) at the first OOM kill in a sandbox; "
                "add Delegate=yes to its [Service] section", self.undelegated)
        self._delegate()

    def _enable(self, cg: Path, wanted: list[str]) -> None:
        """Enable ``wanted`` controllers for ``cg``'s children, all at once, else one by one."""
        if not wanted:
            return
        try:
            self.fs.write(cg / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            return
        except OSError:
            pass
        for c in wanted:
            try:
                self.fs.write(cg / "cgroup.subtree_control", "+" + c)
            except OSError:
                continue  # not delegated to us: reported through .controllers

    def _move_out(self) -> None:
        """Move every process of ``base`` into its leaf (no-internal-process rule)."""
        procs = self.base / "cgroup.procs"
        if self.base == self.root or not self.fs.read_pids(procs):
            return
        leaf = self.base / LEAF
        self.fs.mkdir(leaf)
        # Processes may fork while we move them: repeat until the base is empty.
        for _ in range(20):
            pids = self.fs.read_pids(procs)
            if not pids:
                return
            for pid in pids:
                try:
                    self.fs.write(leaf / "cgroup.procs", str(pid))
                except OSError as e:
                    # ESRCH: exited meanwhile; EINVAL: a kernel thread, which stays put.
                    if e.errno not in (errno.ESRCH, errno.EINVAL):
                        raise
        raise CgroupError(f"cannot empty {self.base} into {leaf}: processes keep appearing")

    def _delegate(self) -> None:
        available = self.fs.read_or(self.base / "cgroup.controllers").split()
        wanted = [c for c in REQUIRED if c in available]
        enabled = set(self.fs.read_or(self.base / "cgroup.subtree_control").split())
        try:
            # Always leave the base to its children (even when there is nothing to enable
            # yet), so the layout is the same on every host: daemon leaf + sessions.
            self._move_out()
            if not set(wanted) <= enabled:
                self._enable(self.base, wanted)
            self.fs.mkdir(self.path)
            self._enable(self.path, wanted)
        except OSError as e:
            raise CgroupError(f"cannot prepare cgroup {self.path}: {e.strerror}") from e
        active = self.fs.read_or(self.path / "cgroup.subtree_control").split()
        self.controllers = frozenset(c.lstrip("+") for c in active) & frozenset(REQUIRED)

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        path = self.path / check_name(name)
        try:
            self.fs.mkdir(path)
        except OSError as e:
            raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from e
        cg = V2Cgroup(self.fs, path)
        try:
            cg.set_limits(limits)
        except BaseException:
            cg.remove(timeout=1.0)
            raise
        return cg

    def open(self, name: str) -> Cgroup | None:
        path = self.path / check_name(name)
        return V2Cgroup(self.fs, path) if self.fs.exists(path) else None

    def open_paths(self, name: str, paths: Mapping[str, str]) -> Cgroup | None:
        check_name(name)
        p = paths.get("")
        if p is not None:
            path = Path(p)
            if path.name == name and within(path, self.root) and self.fs.exists(path):
                return V2Cgroup(self.fs, path)
        return self.open(name)

    def list(self) -> list[str]:
        return self.fs.children(self.path)
