"""PID 1 joins the session's cgroup first, in every hierarchy, and it is the sandbox's root.

On cgroup v1 the join moves PID 1's single thread through each hierarchy's ``tasks``
file (``cgjoin``), which skips the RCU grace period of a thread-group move; this checks
that the result is the same as ``cgroup.procs``: every process, the shell and its
children included, in the session's cgroup in every hierarchy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandkasten.runtime.linux import cgjoin
from tests.support.sandbox import busybox_layer, linux_runtime, run, spec_for  # noqa: F401

pytestmark = pytest.mark.privileged


def _cgroups(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(","):
                out[c] = path
    return out


def test_every_process_is_in_the_session_cgroup(linux_runtime: Any,  # noqa: F811
                                                busybox_layer: Path) -> None:  # noqa: F811
    async def scenario() -> None:
        sb = await linux_runtime.create(spec_for(busybox_layer, pids_limit=64))
        try:
            cg = sb._cgroup
            assert cg is not None
            if not cgjoin.v1_task_files(cg):
                pytest.skip("cgroup v2 host: the join is cgroup.procs there")
            r = await sb.exec("sleep 30 & echo $!; cat /proc/self/cgroup")
            lines = r.output.splitlines()
            # inside, its own cgroup is the root of the cgroup namespace
            assert all(line.endswith(":/") for line in lines[1:]), lines
            procs = set(cg.procs())
            name = linux_runtime.cgroup_name(sb.id)
            assert sb.pid in procs and len(procs) >= 3  # PID 1, the shell, sleep
            for pid in procs:
                seen = _cgroups(pid)
                for controller in cg.dirs:
                    assert seen[controller].endswith("/" + name), (pid, controller, seen)
        finally:
            await sb.destroy()

    run(scenario())
