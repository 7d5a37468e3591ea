"""Where the time of a create goes: per-step timings, the first exec, idle memory, bwrap.

    sudo .venv/bin/python -m bench.profile_create [--runs 30] [--image debian|busybox]
                                                  [--rootfs DIR] [--no-bwrap]

Creates ``--runs`` sandboxes one after the other (cpu 1, 512 MiB, 256 pids, like
bench_sandbox.py), each followed by its first exec of ``python3 -c 'print(2+2)'`` (``echo 4``
on busybox), and prints the median time at which each setup step ended, counted from the
create request (stamps from the fork server and PID 1, all on
CLOCK_MONOTONIC), the median duration of each step, the first exec, and the whole cold
create + first exec. A bwrap run of the same command on the same rootfs is interleaved with
ours, so both see the same load. Finally it reports the unique memory (PSS from
/proc/<pid>/smaps_rollup) of one idle session, per process.

Medians, not means: the machine is shared, and a single preempted run says nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.procs import memory_kib, tree
from tests.support.rootfs import debian_python_rootfs


def _ms(ns: int) -> float:
    return ns / 1e6


def bwrap_once(rootfs: Path, cmd: list[str]) -> float:
    argv = ["bwrap", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", *cmd]
    t0 = time.perf_counter_ns()
    out = subprocess.run(argv, capture_output=True, check=False)
    ms = _ms(time.perf_counter_ns() - t0)
    if out.returncode != 0 or out.stdout.strip() != b"4":
        raise RuntimeError(f"bwrap failed: {out.stderr.decode()[-300:]}")
    return ms


def smaps(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0])
    except OSError:
        pass
    return out


async def profile(rootfs: Path, runs: int, cmd: str, bwrap_cmd: list[str] | None,
                  user_namespace: str = "auto") -> None:
    from sandkasten.runtime.base import SessionSpec
    from sandkasten.runtime.linux import LinuxRuntime

    data = Path(tempfile.mkdtemp(prefix="sandkasten-profile-", dir="/var/tmp"))
    rt = LinuxRuntime(data, cgroup_parent="sandkasten-profile",
                      user_namespace=user_namespace)  # type: ignore[arg-type]
    rt.start()
    status = rt.user_namespace_status()
    print(f"user namespace: {'active' if status['active'] else status['reason']}")
    ends: dict[str, list[float]] = defaultdict(list)  # step -> ms after the request
    durs: dict[str, list[float]] = defaultdict(list)  # step -> its own duration (summed)
    order: dict[str, int] = {}
    created, first, total, bw = [], [], [], []
    live: list[Any] = []
    try:
        for i in range(runs):
            spec = SessionSpec(id=f"profile-{i}", image="profile", layer_paths=[rootfs],
                               cpu_limit=1.0, mem_limit_mb=512, pids_limit=256)
            t0 = time.perf_counter_ns()
            sb = await rt.create(spec)
            live.append(sb)
            t1 = time.perf_counter_ns()
            res = await sb.exec(cmd)
            t2 = time.perf_counter_ns()
            if res.exit_code != 0 or res.output.strip() != "4":
                raise RuntimeError(f"first exec failed: {res}")
            created.append(_ms(t1 - t0))
            first.append(_ms(t2 - t1))
            total.append(_ms(t2 - t0))
            stamps = [*sb.setup_stamps, ("created", t1), ("first exec", t2)]
            base = stamps[0][1]
            seen: dict[str, float] = defaultdict(float)
            for n, ((name, at), (_, prev)) in enumerate(zip(stamps[1:], stamps, strict=False)):
                order.setdefault(name, n)
                seen[name] += _ms(at - prev)
                ends[name].append(_ms(at - base))
            for name, d in seen.items():
                durs[name].append(d)
            if i == 0:
                await asyncio.sleep(0.5)  # idle: the shell sits at its prompt
                print("idle session, PSS per process (KiB):")
                pids = tree(sb.pid)
                for pid in pids:
                    m = smaps(pid)
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                    print(f"  {pid:>7} {comm:<10} Pss {m.get('Pss', 0):>6}  Pss_Anon "
                          f"{m.get('Pss_Anon', 0):>6}  Pss_File {m.get('Pss_File', 0):>6}  "
                          f"Rss {m.get('Rss', 0):>6}")
                print(f"  total PSS {memory_kib(pids)[0]} KiB\n")
            await sb.destroy()
            live.remove(sb)
            if bwrap_cmd is not None:
                bw.append(bwrap_once(rootfs, bwrap_cmd))
    finally:
        for sb in live:  # sandboxes outlive their creator: never leave one behind
            with contextlib.suppress(Exception):
                await sb.destroy()
        rt.close()
        shutil.rmtree(data, ignore_errors=True)
        # the cgroup parent this run made: v1 has one per hierarchy, v2 one path
        parents = getattr(rt.cgroups, "parents", None) or {"v2": getattr(rt.cgroups, "path", None)}
        for d in parents.values():
            with contextlib.suppress(OSError, TypeError):
                os.rmdir(d)
    med = statistics.median
    print(f"{'step':<18}{'ends at (ms)':>14}{'takes (ms)':>12}   medians of {runs} runs")
    for name in sorted(order, key=order.__getitem__):
        print(f"{name:<18}{med(ends[name]):>14.2f}{med(durs[name]):>12.2f}")
    print(f"\ncreate p50 {med(created):.1f} ms, first exec p50 {med(first):.1f} ms, "
          f"cold create + first exec p50 {med(total):.1f} ms (min {min(total):.1f})")
    if bw:
        print(f"bwrap p50 {med(bw):.1f} ms (min {min(bw):.1f}): ratio {med(total) / med(bw):.2f}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--image", choices=["debian", "busybox"], default="debian")
    ap.add_argument("--rootfs", type=Path, help="an extracted rootfs to use (kept)")
    ap.add_argument("--no-bwrap", action="store_true")
    ap.add_argument("--user-namespace", choices=["auto", "on", "off"], default="auto",
                    help="security.user_namespace of the profiled runtime")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: run as root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sandkasten-profile-rootfs-", dir="/var/tmp"))
    try:
        if args.rootfs is not None:
            rootfs = args.rootfs
        elif args.image == "busybox":
            from tests.support.rootfs import busybox_rootfs
            rootfs = busybox_rootfs(work / "rootfs")
        else:
            rootfs = debian_python_rootfs()
        if args.image == "busybox":
            cmd, bw = "echo 4", ["/bin/sh", "-c", "echo 4"]
        else:
            cmd, bw = "python3 -c 'print(2+2)'", ["python3", "-c", "print(2+2)"]
        asyncio.run(profile(rootfs, args.runs, cmd,
                            None if args.no_bwrap or not shutil.which("bwrap") else bw,
                            args.user_namespace))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
