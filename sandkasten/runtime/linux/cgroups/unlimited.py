"""The manager used when no cgroup hierarchy can enforce limits and ``allow_unlimited`` is
set: it limits nothing, but still tracks and kills the processes it is given."""

from __future__ import annotations

from .base import Cgroup, CgroupLimits, CgroupManager, CgroupStats, check_name, sigkill, wait_until


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class UnlimitedCgroup(Cgroup):
    def __init__(self, name: str) -> None:
        self.name = name
        self._pids: list[int] = []

    def add_process(self, pid: int) -> None:
        self._pids.append(pid)

    def procs(self) -> list[int]:
        return [p for p in self._pids if _alive(p)]

    def set_limits(self, limits: CgroupLimits) -> None:
        pass

    def stats(self) -> CgroupStats:
        return CgroupStats(memory_bytes=0, memory_limit=None, cpu_usage_usec=0,
                           pids=len(self.procs()), oom_kills=0)

    def kill_all(self, timeout: float = 5.0) -> None:
        # Without a cgroup only the processes we were given are known: for sandboxes that
        # is PID 1 of a pid namespace, and its death kills the whole namespace.
        sigkill(self.procs())
        wait_until(lambda: not self.procs(), timeout)

    def remove(self, timeout: float = 5.0) -> None:
        self.kill_all(timeout)


class UnlimitedManager(CgroupManager):
    version = 0
    controllers = frozenset()

    def __init__(self) -> None:
        self._groups: dict[str, UnlimitedCgroup] = {}

    def create(self, name: str, limits: CgroupLimits) -> Cgroup:
        return self._groups.setdefault(check_name(name), UnlimitedCgroup(name))

    def open(self, name: str) -> Cgroup | None:
        return self._groups.get(name)

    def list(self) -> list[str]:
        return sorted(self._groups)
