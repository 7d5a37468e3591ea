"""A session's ``state.json``: who its PID 1 is, so a restarted daemon can find it again.

Written by the fork server right after it forks PID 1 (off the create's critical path:
PID 1 is still setting up meanwhile), read by ``LinuxRuntime.attach``/``destroy_sync``.
Imports nothing beyond the standard library's core: the fork server loads it.
"""

from __future__ import annotations

import json
import os
import time


def proc_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot): with the pid, an identity
    that a recycled pid cannot fake. None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None  # exited; only its parent's wait is missing
    return int(fields[19])


def write_state(path: str, session_id: str, pid: int, cgroup: str | None,
                cgroup_paths: dict[str, str] | None = None) -> None:
    """Atomically write ``path`` (a temp file renamed over it); OSError on failure.

    ``cgroup_paths`` (controller → directory) records where the session's cgroup is, so a
    daemon restarted under another cgroup attaches to and cleans up the right one."""
    state = {"id": session_id, "pid": pid, "start_time": proc_start_time(pid),
             "cgroup": cgroup, "cgroup_paths": cgroup_paths or {}, "created": time.time()}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(state))
    os.replace(tmp, path)
