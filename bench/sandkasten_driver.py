"""The sandkasten side of bench_sandbox.py: LinuxRuntime, SandboxPool and Sandbox.exec."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

from bench.procs import memory_kib, tree

Ms = list[float]
CGROUP_PARENT = "sk-bench"


def p50(xs: Ms) -> float:
    return sorted(xs)[len(xs) // 2]


def session_pids(sb: Any) -> list[int]:
    """Every process of the session: its cgroup's, else PID 1 and its descendants."""
    cg = getattr(sb, "_cgroup", None)
    pids: list[int] = cg.procs() if cg is not None else []
    return pids or tree(sb.pid)


class Sandkasten:
    name = "sandkasten"

    def __init__(self, rootfs: Path, data_dir: Path, limits: dict[str, float],
                 cmd: list[str]) -> None:
        from sandkasten.runtime.linux import LinuxRuntime  # ImportError: not in this tree

        data_dir.mkdir(parents=True, exist_ok=True)
        self.rootfs = rootfs
        self.limits = limits
        self.runtime = LinuxRuntime(data_dir, store=None, cgroup_parent=CGROUP_PARENT)
        self.runtime.start()
        self.command = " ".join(c if c.isidentifier() or c.startswith("-") else f"'{c}'"
                                for c in cmd)
        self.counter = iter(range(1, 1 << 30))
        self.notes: list[str] = []

    def spec(self) -> Any:
        from sandkasten.runtime.base import SessionSpec

        return SessionSpec(id=f"bench-{next(self.counter)}", image="bench",
                           layer_paths=[self.rootfs], cpu_limit=self.limits["cpu"],
                           mem_limit_mb=int(self.limits["memory_mb"]),
                           pids_limit=int(self.limits["pids"]))

    async def cold(self, runs: int, conc: int) -> Ms:
        create_ms: Ms = []
        exec_ms: Ms = []

        async def one() -> float:
            t0 = time.perf_counter()
            sb = await self.runtime.create(self.spec())
            t1 = time.perf_counter()
            res = await sb.exec(self.command)
            t2 = time.perf_counter()
            await sb.destroy()
            if res.exit_code != 0 or res.output.strip() != "4":
                raise RuntimeError(f"sandkasten exec failed: {res}")
            create_ms.append((t1 - t0) * 1000)
            exec_ms.append((t2 - t1) * 1000)
            return (t2 - t0) * 1000

        samples: Ms = []
        while len(samples) < runs:
            samples += await asyncio.gather(*(one() for _ in range(conc)))
        if runs > 3:
            self.notes.append(f"sandkasten cold, {conc} at a time: create p50 "
                              f"{p50(create_ms):.1f} ms + first exec p50 {p50(exec_ms):.1f} ms")
        return samples

    async def idle_and_exec(self, n: int, exec_runs: int) -> tuple[float, float, Ms]:
        """(PSS and USS KiB per idle session with ``n`` alive, echo round trips on one)."""
        sandboxes = await asyncio.gather(*(self.runtime.create(self.spec()) for _ in range(n)))
        try:
            await asyncio.gather(*(sb.exec("true") for sb in sandboxes))
            await asyncio.sleep(0.5)
            mem = [memory_kib(session_pids(sb)) for sb in sandboxes]
            pss, uss = sum(m[0] for m in mem) / n, sum(m[1] for m in mem) / n
            rtt: Ms = []
            for _ in range(exec_runs):
                t0 = time.perf_counter()
                r = await sandboxes[0].exec("echo 4")
                rtt.append((time.perf_counter() - t0) * 1000)
                if r.output.strip() != "4":
                    raise RuntimeError(f"echo returned {r}")
            return pss, uss, rtt
        finally:
            await asyncio.gather(*(sb.destroy() for sb in sandboxes))

    async def pooled(self, runs: int) -> Ms:
        """Acquire latency from a filled pool (refills between rounds are not timed)."""
        from sandkasten.runtime.pool import SandboxPool

        pool = SandboxPool(self.runtime, max_concurrent_creates=2)
        key = pool.configure(self.spec(), "sha256:bench", size=min(runs, 20))
        acquired = []
        samples: Ms = []
        try:
            while len(samples) < runs:
                deadline = time.monotonic() + 60
                while pool.stats()[key].ready < pool.stats()[key].target:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"pool does not fill: {pool.stats()[key]}")
                    await asyncio.sleep(0.05)
                for _ in range(pool.stats()[key].ready):
                    t0 = time.perf_counter()
                    sb = await pool.acquire(key)
                    samples.append((time.perf_counter() - t0) * 1000)
                    if sb is None:
                        raise RuntimeError("a filled pool returned nothing")
                    acquired.append(sb)
        finally:
            await pool.close()
            await asyncio.gather(*(sb.destroy() for sb in acquired))
        return samples

    def close(self) -> None:
        self.runtime.close()
        mgr = self.runtime.cgroups
        dirs = list(getattr(mgr, "parents", {}).values()) or [getattr(mgr, "path", None)]
        for d in {os.path.realpath(d) for d in dirs if d is not None}:
            with contextlib.suppress(OSError):
                os.rmdir(d)
        self.notes.append("sandkasten idle memory sums every process in the session's cgroup "
                          "(the runner as PID 1, forked from the fork server, and its shell); "
                          "with one session alive, PSS charges it a share of the pages it "
                          "still shares with the fork server and the spare PID 1 the fork "
                          "server keeps forked ahead (which one-at-a-time cold creates take).")
