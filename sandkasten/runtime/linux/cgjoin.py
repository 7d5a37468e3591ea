"""Move a new PID 1 into its session's cgroup without waiting for the kernel.

Writing a pid to ``cgroup.procs`` migrates a whole thread group, and for that the kernel
write-locks ``cgroup_threadgroup_rwsem``, a per-cpu rwsem whose write side waits for an RCU
grace period (unless the hierarchy is mounted with ``favordynmods``): 4 to 20 ms on this
kind of host, the largest single cost of a cold create on cgroup v1.

On cgroup v1 a single thread can be moved instead, by writing ``0`` (the caller) to a
hierarchy's ``tasks`` file. The kernel takes the global lock only to keep a thread group
stable, which moving the caller's own thread does not need, so no grace period is waited
for. PID 1 is a fresh fork of the single-threaded fork server, so it has exactly one
thread: moving that thread moves the process, and everything it starts afterwards (the
runner's threads, every user command) starts in the session's cgroup.

cgroup v2 refuses thread moves between domain cgroups; there (and when anything on v1 is
unexpected) the ordinary ``Cgroup.add_process`` is used.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from sandkasten.runtime.linux.cgroups.v1 import V1Cgroup


def v1_task_files(cg: Any) -> list[str]:
    """The ``tasks`` files of ``cg``'s v1 hierarchies (one per hierarchy), or [] if not v1."""
    if not isinstance(cg, V1Cgroup):
        return []
    seen: dict[str, str] = {}
    for d in cg.dirs.values():
        # co-mounted controllers (cpu -> cpu,cpuacct) are one hierarchy: one tasks file
        real = os.path.join(_realpath(os.path.dirname(d)), os.path.basename(d))
        seen.setdefault(real, os.path.join(d, "tasks"))
    return list(seen.values())


@functools.lru_cache(maxsize=64)
def _realpath(path: str) -> str:
    """The cgroup parents never move while the daemon runs: resolved once each."""
    return os.path.realpath(path)


def join_self(cg: Any, task_files: list[str]) -> None:
    """Move the calling process into ``cg``. The caller must be single-threaded.

    ``task_files`` comes from ``v1_task_files`` (computed before the fork). Imports nothing.
    """
    try:
        for path in task_files:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        if task_files:
            return
    except OSError:
        pass  # fall back to the thread-group move below (it names the failing hierarchy)
    cg.add_process(os.getpid())
