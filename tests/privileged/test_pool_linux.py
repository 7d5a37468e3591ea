"""SandboxPool over the real LinuxRuntime: pooled sandboxes work, and close leaves nothing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from sandkasten.runtime.base import SessionSpec
from sandkasten.runtime.pool import SandboxPool
from tests.support.cgroups import PREFIX
from tests.support.rootfs import busybox_rootfs

pytestmark = pytest.mark.privileged


def test_pool_on_linux_runtime(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, overlayfs and cgroups")
    from sandkasten.runtime.linux import LinuxRuntime

    rootfs = busybox_rootfs(tmp_path / "rootfs")
    parent = PREFIX + "pool-" + os.urandom(4).hex()
    rt = LinuxRuntime(tmp_path / "data", cgroup_parent=parent)
    template = SessionSpec(id="template", image="busybox", layer_paths=[rootfs],
                           cpu_limit=0.5, mem_limit_mb=64, pids_limit=32)

    async def main() -> None:
        pool = SandboxPool(rt)
        key = pool.configure(template, "sha256:" + "c" * 64, size=2)
        deadline = asyncio.get_running_loop().time() + 30
        while pool.stats()[key].ready < 2:
            assert asyncio.get_running_loop().time() < deadline, pool.stats()[key]
            await asyncio.sleep(0.02)
        sb = await pool.acquire(key)
        assert sb is not None
        try:
            res = await sb.exec("echo pooled")
            assert res.exit_code == 0 and res.output.splitlines()[0] == "pooled"
            stats = await sb.stats()
            assert stats.memory_limit == 64 << 20
        finally:
            await pool.close()
            await sb.destroy()
        assert rt.cgroups.list() == []
        assert rt.list_sessions() == []

    try:
        asyncio.run(main())
    finally:
        rt.close()
        mgr = rt.cgroups
        for d in {os.path.realpath(p) for p in getattr(mgr, "parents", {}).values()}:
            os.rmdir(d)
