"""Sandbox benchmark: sandkasten side by side with bwrap and crun, in one run.

    sudo .venv/bin/python bench/bench_sandbox.py [--runs 30] [--concurrency 1,50]
                                                 [--write-docs docs/benchmarks.md]

All three start the same Debian bookworm + python3 rootfs (tests/support/rootfs.py) and
run the same command, ``python3 -c 'print(2+2)'``. Measured:

- cold create + first exec: from nothing to the command's output (bwrap: ``bwrap ...
  python3``; crun: ``crun run``; sandkasten: ``LinuxRuntime.create`` + ``exec``);
- pooled create: ``SandboxPool.acquire`` of a pre-created sandboxes (sandkasten only);
- exec round trip: ``echo`` in a live sandbox (sandkasten ``exec``; crun ``crun exec``);
- unique memory per idle session: PSS (``/proc/<pid>/smaps_rollup``) summed over every
  process of the session, divided by the number of sessions, with 1 and N sessions alive
  (bwrap and crun idle sessions are a shell waiting on stdin); USS (private pages, what
  ending the session frees) next to it.

crun refuses this machine's hybrid cgroup layout as it stands, so the whole benchmark runs
in a private mount namespace with /sys/fs/cgroup/unified unmounted (nothing changes on the
host). Every sandbox gets the same limits: 1 cpu, 512 MiB, 256 pids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import sandkasten_driver
from bench.procs import memory_kib, tree
from tests.support.rootfs import debian_python_rootfs

CMD = ["python3", "-c", "print(2+2)"]
CRUN_CGROUP_PARENT = "sk-bench-crun"
LIMITS: dict[str, float] = {"cpu": 1.0, "memory_mb": 512, "pids": 256}
MEM_BYTES = 512 << 20
Ms = list[float]


# -- environment ----------------------------------------------------------------------------

def private_mount_namespace() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if os.path.ismount("/sys/fs/cgroup/unified"):
        libc.umount2(b"/sys/fs/cgroup/unified", 2)  # MNT_DETACH


def machine_facts() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.split("\n")[0]
        except OSError:
            return "missing"

    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "bwrap": version(["bwrap", "--version"]),
            "crun": version(["crun", "--version"]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# -- measurement helpers --------------------------------------------------------------------

def per_session(mem: list[tuple[int, int]]) -> tuple[float, float]:
    """Mean (PSS, USS) KiB per session."""
    return sum(m[0] for m in mem) / len(mem), sum(m[1] for m in mem) / len(mem)


def pct(xs: Ms, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def batches(one: Callable[[], Awaitable[float]], runs: int, conc: int) -> Ms:
    """``runs`` samples of ``one()``, ``conc`` at a time (all started together)."""
    out: Ms = []
    while len(out) < runs:
        out += await asyncio.gather(*(one() for _ in range(conc)))
    return out


async def timed_proc(argv: list[str], expect: str = "4") -> float:
    t0 = time.perf_counter()
    p = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE)
    out, err = await p.communicate()
    ms = (time.perf_counter() - t0) * 1000
    if p.returncode != 0 or out.decode().strip() != expect:
        raise RuntimeError(f"{argv[0]} failed ({p.returncode}): {err.decode()[-300:]}")
    return ms


# -- bwrap ----------------------------------------------------------------------------------

class Bwrap:
    name = "bwrap"

    def __init__(self, rootfs: Path) -> None:
        self.base = ["bwrap", "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
                     "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent"]

    async def cold(self, runs: int, conc: int) -> Ms:
        return await batches(lambda: timed_proc([*self.base, *CMD]), runs, conc)

    def idle(self, n: int) -> tuple[float, float]:
        procs = [subprocess.Popen([*self.base, "sh"], stdin=subprocess.PIPE) for _ in range(n)]
        try:
            time.sleep(0.5 + n * 0.02)
            return per_session([memory_kib(tree(p.pid)) for p in procs])
        finally:
            for p in procs:
                p.kill()
                p.wait()


# -- crun -----------------------------------------------------------------------------------

class Crun:
    name = "crun"

    def __init__(self, rootfs: Path, work: Path) -> None:
        self.work = work
        self.state = work / "crun-state"
        self.bundles = work / "bundles"
        self.bundles.mkdir()
        self.rootfs = rootfs
        spec = subprocess.run(["crun", "spec", "--bundle", str(work)], capture_output=True)
        if spec.returncode != 0:
            raise RuntimeError(spec.stderr.decode())
        self.config = json.loads((work / "config.json").read_text())
        self.config["root"] = {"path": str(rootfs), "readonly": True}
        self.config["process"]["terminal"] = False
        self.config["linux"]["resources"] = {
            "memory": {"limit": MEM_BYTES, "swap": MEM_BYTES},
            "cpu": {"quota": int(LIMITS["cpu"] * 100000), "period": 100000},
            "pids": {"limit": int(LIMITS["pids"])},
        }

    def bundle(self, args: list[str]) -> tuple[str, Path]:
        cid = "sk-bench-" + uuid.uuid4().hex[:10]
        b = self.bundles / cid
        b.mkdir()
        cfg = json.loads(json.dumps(self.config))
        cfg["process"]["args"] = args
        cfg["linux"]["cgroupsPath"] = f"/{CRUN_CGROUP_PARENT}/{cid}"
        (b / "config.json").write_text(json.dumps(cfg))
        return cid, b

    def crun(self, *args: str) -> list[str]:
        return ["crun", "--root", str(self.state), *args]

    async def cold(self, runs: int, conc: int) -> Ms:
        async def one() -> float:
            cid, b = self.bundle(CMD)  # config written before the clock starts
            try:
                return await timed_proc(self.crun("run", "--bundle", str(b), cid))
            finally:
                shutil.rmtree(b)

        return await batches(one, runs, conc)

    def idle(self, n: int) -> tuple[float, float]:
        procs = []
        for _ in range(n):
            cid, b = self.bundle(["sh"])
            procs.append(subprocess.Popen(self.crun("run", "--bundle", str(b), cid),
                                          stdin=subprocess.PIPE))
        try:
            time.sleep(0.5 + n * 0.02)
            return per_session([memory_kib(tree(p.pid)) for p in procs])
        finally:
            for p in procs:
                assert p.stdin is not None
                p.stdin.close()  # sh exits on EOF
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    async def exec_rtt(self, runs: int) -> Ms:
        cid, b = self.bundle(["sleep", "infinity"])
        subprocess.run(self.crun("run", "--detach", "--bundle", str(b), cid), check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            return [await timed_proc(self.crun("exec", cid, "echo", "4")) for _ in range(runs)]
        finally:
            subprocess.run(self.crun("delete", "--force", cid), check=False)

    def cleanup(self) -> None:
        for cid in os.listdir(self.state) if self.state.exists() else []:
            subprocess.run(self.crun("delete", "--force", cid), check=False,
                           capture_output=True)
        # crun removes each container's cgroup, not the parent it created in every hierarchy
        for parent in Path("/sys/fs/cgroup").glob(f"*/{CRUN_CGROUP_PARENT}"):
            with contextlib.suppress(OSError):
                parent.rmdir()


# -- report ---------------------------------------------------------------------------------

def fmt_ms(xs: Ms | None) -> str:
    if not xs:
        return "n/a"
    digits = 3 if pct(xs, 0.9) < 1 else 1
    return f"{pct(xs, 0.5):.{digits}f} / {pct(xs, 0.9):.{digits}f}"


def fmt_kib(k: float | None) -> str:
    return "n/a" if k is None else f"{k / 1024:.2f} MiB"


def table(results: dict[str, dict[str, object]], concs: list[int], runs: int) -> str:
    tools = ["sandkasten", "bwrap", "crun"]
    rows = []
    for c in concs:
        rows.append((f"cold create + first exec, {c} at a time (ms p50 / p90)",
                     [fmt_ms(results[t].get(f"cold{c}")) for t in tools]))  # type: ignore[arg-type]
    rows.append(("pooled create: acquire (ms p50 / p90)",
                 [fmt_ms(results[t].get("pooled")) for t in tools]))  # type: ignore[arg-type]
    rows.append(("exec round trip, `echo` (ms p50 / p90)",
                 [fmt_ms(results[t].get("exec")) for t in tools]))  # type: ignore[arg-type]
    for c in concs:
        rows.append((f"unique memory per idle session, {c} alive (PSS)",
                     [fmt_kib(results[t].get(f"idle{c}")) for t in tools]))  # type: ignore[arg-type]
        rows.append((f"private memory per idle session, {c} alive (USS)",
                     [fmt_kib(results[t].get(f"uss{c}")) for t in tools]))  # type: ignore[arg-type]
    out = ["| measure | " + " | ".join(tools) + " |", "|---|" + "---|" * len(tools)]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(out)


def targets(results: dict[str, dict[str, object]], concs: list[int]) -> list[str]:
    """The issue's targets, checked against this run's figures."""
    sk, bw = results["sandkasten"], results["bwrap"]
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for c in concs:
        a, b = sk.get(f"cold{c}"), bw.get(f"cold{c}")
        if a and b:
            r = pct(a, 0.5) / pct(b, 0.5)  # type: ignore[arg-type]
            out.append(f"cold create + first exec p50 within 1.5x of bwrap ({c} at a time): "
                       f"{r:.2f}x, {verdict(r <= 1.5)}")
    if sk.get("pooled"):
        v = pct(sk["pooled"], 0.5)  # type: ignore[arg-type]
        out.append(f"pooled create p50 < 2 ms: {v:.3f} ms, {verdict(v < 2)}")
    if sk.get("exec"):
        v = pct(sk["exec"], 0.5)  # type: ignore[arg-type]
        out.append(f"exec round trip p50 < 2 ms: {v:.2f} ms, {verdict(v < 2)}")
    for c in concs:
        k = sk.get(f"idle{c}")
        if k is not None:
            mib = float(k) / 1024  # type: ignore[arg-type]
            out.append(f"idle session < 8 MiB PSS ({c} alive): {mib:.2f} MiB, "
                       f"{verdict(mib < 8)}")
    return out


def write_docs(path: Path, facts: dict[str, str], tbl: str, notes: list[str],
               runs: int) -> None:
    start, end = "<!-- bench:sandboxes:start -->", "<!-- bench:sandboxes:end -->"
    body = "\n".join([
        start, "## Sandboxes", "",
        "`sudo .venv/bin/python bench/bench_sandbox.py --write-docs docs/benchmarks.md` "
        f"({runs} samples per figure; `python3 -c 'print(2+2)'` in the same Debian bookworm "
        "rootfs for all three; limits 1 cpu, 512 MiB, 256 pids).", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".", "",
        tbl, "", *[f"- {n}" for n in notes],
        "- The machine is shared with other work: figures move between runs, so compare the "
        "columns of one run rather than runs with each other.", end])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--concurrency", default="1,50")
    ap.add_argument("--only", default="sandkasten,bwrap,crun")
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("error: the benchmark needs root (namespaces, mounts, cgroups)", file=sys.stderr)
        return 1
    concs = [int(c) for c in args.concurrency.split(",")]
    only = set(args.only.split(","))
    private_mount_namespace()
    facts = machine_facts()
    results: dict[str, dict[str, object]] = {"sandkasten": {}, "bwrap": {}, "crun": {}}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sk-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        rootfs = debian_python_rootfs()
        bw, cr = Bwrap(rootfs), Crun(rootfs, work)
        sk: sandkasten_driver.Sandkasten | None = None
        if "sandkasten" in only:
            try:
                sk = sandkasten_driver.Sandkasten(rootfs, work / "sandkasten", LIMITS, CMD)
            except ImportError as e:
                notes.append(f"sandkasten: LinuxRuntime is not available in this tree ({e})")
        try:
            # Warm the page cache and each tool once, then measure the tools one after the
            # other per concurrency level, so a change in the machine's load hits all three.
            await bw.cold(3, 1)
            if sk:
                await sk.cold(2, 1)
            for c in concs:
                runs = max(args.runs, c)
                if "bwrap" in only:
                    results["bwrap"][f"cold{c}"] = await bw.cold(runs, c)
                if "crun" in only:
                    results["crun"][f"cold{c}"] = await cr.cold(runs, c)
                if sk:
                    results["sandkasten"][f"cold{c}"] = await sk.cold(runs, c)
                if "bwrap" in only:
                    results["bwrap"][f"idle{c}"], results["bwrap"][f"uss{c}"] = bw.idle(c)
                if "crun" in only:
                    results["crun"][f"idle{c}"], results["crun"][f"uss{c}"] = cr.idle(c)
                if sk:
                    pss, uss, rtt = await sk.idle_and_exec(
                        c, max(args.runs, 100) if c == concs[0] else 0)
                    results["sandkasten"][f"idle{c}"] = pss
                    results["sandkasten"][f"uss{c}"] = uss
                    if rtt:
                        results["sandkasten"]["exec"] = rtt
                print(f"concurrency {c} done", file=sys.stderr)
            if "crun" in only:
                results["crun"]["exec"] = await cr.exec_rtt(max(args.runs, 100))
            if sk:
                results["sandkasten"]["pooled"] = await sk.pooled(args.runs)
        finally:
            cr.cleanup()
            if sk:
                sk.close()
                notes += sk.notes
    tbl = table(results, concs, args.runs)
    notes = [f"Target: {t}" for t in targets(results, concs)] + notes
    print("\n" + "\n".join(f"{k}: {v}" for k, v in facts.items()) + "\n")
    print(tbl)
    for n in notes:
        print("note:", n)
    if args.write_docs:
        write_docs(args.write_docs, facts, tbl, notes, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
