"""The cgroup manager interface shared by the v1 and v2 implementations."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandkasten.errors import SandkastenError

from .fs import CgroupFS

REQUIRED = ("cpu", "memory", "pids")
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class CgroupError(SandkastenError):
    """A cgroup operation failed (a limit the kernel refused, a cgroup that will not empty)."""

    code = "cgroup_failed"
    status = 500


@dataclass(frozen=True)
class CgroupLimits:
    """Limits for one sandbox; ``None`` means unlimited. ``cpu`` is in cores (0.5 = half a core)."""

    cpu: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None

    def __post_init__(self) -> None:
        if self.cpu is not None and not self.cpu > 0:
            raise ValueError(f"cpu limit must be > 0 cores, got {self.cpu}")
        if self.memory_bytes is not None and self.memory_bytes < 1 << 20:
            raise ValueError(f"memory limit must be at least 1 MiB, got {self.memory_bytes}")
        if self.pids is not None and self.pids < 1:
            raise ValueError(f"pids limit must be >= 1, got {self.pids}")

    def cpu_quota_us(self, period_us: int = CPU_PERIOD_US) -> int | None:
        """The CFS quota per ``period_us`` for ``cpu`` cores (at least 1 ms)."""
        if self.cpu is None:
            return None
        return max(MIN_CPU_QUOTA_US, round(self.cpu * period_us))


@dataclass(frozen=True)
class CgroupStats:
    memory_bytes: int
    memory_limit: int | None
    cpu_usage_usec: int
    pids: int
    oom_kills: int
    nr_throttled: int = 0  # CFS periods in which the cgroup hit its cpu quota
    throttled_usec: int = 0


def within(path: Path, top: Path) -> bool:
    """``path`` is an absolute, ``..``-free path strictly below ``top``."""
    return path.is_absolute() and ".." not in path.parts and path != top \
        and path.is_relative_to(top)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid cgroup name {name!r}: use letters, digits, '_', '.', '-'")
    return name


class Cgroup(ABC):
    """One sandbox's cgroup. Every method is idempotent where that makes sense."""

    name: str

    @abstractmethod
    def add_process(self, pid: int) -> None:
        """Move ``pid`` (and its threads) into this cgroup; its later children stay in it."""

    @abstractmethod
    def procs(self) -> list[int]:
        """Host pids of the processes in this cgroup."""

    @abstractmethod
    def stats(self) -> CgroupStats: ...

    @abstractmethod
    def set_limits(self, limits: CgroupLimits) -> None:
        """Apply ``limits`` (``None`` fields become unlimited)."""

    @abstractmethod
    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup and wait until it is empty.

        Guarantee: no process of the cgroup survives and none can escape by forking while
        the kill runs (v2 ``cgroup.kill`` is atomic; otherwise the cgroup is frozen first).
        Raises ``CgroupError`` if processes remain after ``timeout`` seconds.
        """

    def paths(self) -> dict[str, str]:
        """Where this cgroup lives: controller (``""`` for cgroup v2) → absolute directory.

        Stored in the session's state so that a daemon restarted in another cgroup (whose
        manager would look under a different parent) still finds it: ``open_paths``."""
        return {}

    @abstractmethod
    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the cgroup directories. A missing cgroup is fine.

        A killed process stays charged to its cgroup until its parent reaps it, so the
        directory cannot be removed before that: ``remove`` retries until ``timeout``.
        """


class CgroupManager(ABC):
    """Creates sandbox cgroups under one parent (``<daemon's cgroup>/<parent>``)."""

    version: int
    controllers: frozenset[str]  # of cpu, memory, pids: the ones limits are enforced with

    @abstractmethod
    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        """Create (or reuse) the cgroup ``name`` with ``limits``; on failure nothing is left."""

    @abstractmethod
    def open(self, name: str) -> Cgroup | None:
        """The existing cgroup ``name``, or None."""

    def open_paths(self, name: str, paths: Mapping[str, str]) -> Cgroup | None:
        """The existing cgroup recorded as ``paths`` (what ``Cgroup.paths`` returned when
        it was created, possibly by a daemon in another cgroup), or None. Paths outside
        this manager's hierarchy are ignored, so a tampered state file cannot point the
        daemon's kill and rmdir at another cgroup."""
        return self.open(name)

    @abstractmethod
    def list(self) -> list[str]:
        """Names of the existing sandbox cgroups."""

    @property
    def missing(self) -> frozenset[str]:
        return frozenset(REQUIRED) - self.controllers


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.002) -> bool:
    """Poll ``cond`` with a growing sleep (2 ms → 50 ms) until it holds or ``timeout`` ends."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
        step = min(step * 2, 0.05)


def sigkill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def rmdir_retry(fs: CgroupFS, dirs: list[Path], timeout: float) -> None:
    """rmdir each of ``dirs`` (deepest first), retrying EBUSY until ``timeout``."""
    pending = [d for d in dirs]

    def attempt() -> bool:
        for d in list(pending):
            try:
                fs.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno == 16:  # EBUSY: a dying task is not reaped yet
                    continue
                raise CgroupError(f"cannot remove cgroup {d}: {e.strerror}") from e
            pending.remove(d)
        return not pending

    if not wait_until(attempt, timeout):
        raise CgroupError(
            f"cgroup {pending[0]} is still busy after {timeout:.1f}s: "
            "a killed process was not reaped by its parent",
        )
