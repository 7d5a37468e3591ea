"""A fake cgroupfs on a temp directory that emulates the kernel's side effects.

``FakeCgroupFS`` is the real ``CgroupFS`` with the kernel's reactions added: a pid written
to a ``cgroup.procs`` leaves its old cgroup of the same hierarchy, new cgroups get their
control files, ``cgroup.subtree_control`` obeys the no-internal-process rule, ``cgroup.kill``
empties a subtree, ``rmdir`` of a populated cgroup fails with EBUSY. Every write is
recorded in ``writes`` as (path relative to the root, value) for tests to assert.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from sandkasten.runtime.linux.cgroups.fs import CgroupFS

V2_FILES = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.stat": "usage_usec 0\nnr_throttled 0\n"},
    "memory": {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.current": "0\n",
               "memory.events": "oom 0\noom_kill 0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}
V1_FILES = {
    "memory": {"memory.limit_in_bytes": "9223372036854771712\n",
               "memory.memsw.limit_in_bytes": "9223372036854771712\n",
               "memory.usage_in_bytes": "0\n", "memory.oom_control":
               "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"},
    "cpu": {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"},
    "cpuacct": {"cpuacct.usage": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
}


class FakeCgroupFS(CgroupFS):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.writes: list[tuple[str, str]] = []

    # -- layout builders ----------------------------------------------------------------

    def _v2_dir(self, path: Path, controllers: list[str]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        files = {"cgroup.procs": "", "cgroup.subtree_control": "",
                 "cgroup.controllers": " ".join(controllers) + "\n",
                 "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0\n",
                 "cgroup.kill": ""}
        for c in controllers:
            files.update(V2_FILES.get(c, {}))
        for name, text in files.items():
            if not (path / name).exists():
                (path / name).write_text(text)

    def make_v2(self, controllers: list[str], own: str = "/", own_procs: tuple[int, ...] = (),
                delegated: list[str] | None = None) -> Path:
        """A cgroup2 root; ``own`` is the daemon's cgroup (with ``own_procs`` in it) whose
        ``cgroup.controllers`` are ``delegated`` (default: all of ``controllers``)."""
        self._v2_dir(self.root, controllers)
        (self.root / "cgroup.subtree_control").write_text(" ".join(controllers) + "\n")
        if own != "/":
            d = self.root / own.lstrip("/")
            self._v2_dir(d, delegated if delegated is not None else controllers)
            (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in own_procs))
        return self.proc_self_cgroup(f"0::{own}\n")

    def make_v1(self, controllers: list[str], own: dict[str, str] | None = None,
                unified: list[str] | None = None) -> Path:
        """v1 hierarchies at <root>/<controller> (``cpu,cpuacct`` co-mounts with symlinks),
        optionally a hybrid ``unified`` v2 mount with ``unified`` controllers."""
        own = own or {}
        lines = []
        for i, mount in enumerate(controllers, start=1):
            ctrls = mount.split(",")
            d = self.root / mount
            d.mkdir(parents=True)
            for c in ctrls:
                if c != mount:
                    (self.root / c).symlink_to(mount)
            self._v1_files(d, ctrls, top=True)
            path = own.get(ctrls[0], "/")
            if path != "/":
                self._v1_files(d / path.lstrip("/"), ctrls, top=False)
            lines.append(f"{i}:{mount}:{path}\n")
        if unified is not None:
            self._v2_dir(self.root / "unified", unified)
        lines.append("0::/\n")
        return self.proc_self_cgroup("".join(lines))

    def _v1_files(self, d: Path, ctrls: list[str], top: bool) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for name in ("cgroup.procs", "tasks"):
            (d / name).write_text("")
        for c in ctrls:
            for name, text in V1_FILES.get(c, {}).items():
                # pids and freezer have no control files in a hierarchy's root cgroup
                if top and c in ("pids", "freezer"):
                    continue
                (d / name).write_text(text)

    def proc_self_cgroup(self, text: str) -> Path:
        p = self.root.parent / f"{self.root.name}-proc-self-cgroup"
        p.write_text(text)
        return p

    # -- kernel emulation ---------------------------------------------------------------

    def _hierarchy(self, path: Path) -> Path:
        rel = path.relative_to(self.root).parts
        if (self.root / "cgroup.controllers").exists():
            return self.root
        return self.root / rel[0]

    def _is_v2(self, path: Path) -> bool:
        return (self._hierarchy(path) / "cgroup.controllers").exists()

    def read(self, path: Path) -> str:
        text = super().read(path)
        if path.name == "cgroup.procs":  # the kernel drops exited processes at once
            return "".join(f"{p}\n" for p in text.split() if _alive(int(p)))
        if path.name == "cgroup.events":
            populated = any(self.read(p).split() for p in path.parent.rglob("cgroup.procs"))
            frozen = super().read(path.parent / "cgroup.freeze").strip()
            return f"populated {int(populated)}\nfrozen {frozen}\n"
        return text

    def write(self, path: Path, value: str) -> None:
        self.writes.append((str(path.relative_to(self.root)), value))
        if not path.exists():
            raise OSError(errno.ENOENT, "No such file", str(path))
        cg = path.parent
        if path.name == "tasks":  # v1: "0" is the calling thread; we only model processes
            path, value = cg / "cgroup.procs", str(os.getpid()) if value == "0" else value
        if path.name == "cgroup.procs":
            for other in self._hierarchy(cg).rglob("cgroup.procs"):
                pids = [p for p in other.read_text().split() if p != value]
                other.write_text("".join(f"{p}\n" for p in pids))
            with open(path, "a") as f:
                f.write(value + "\n")
        elif path.name == "cgroup.subtree_control":
            if cg != self.root and super().read(cg / "cgroup.procs").split():
                raise OSError(errno.EBUSY, "no internal processes", str(path))
            avail = super().read(cg / "cgroup.controllers").split()
            enabled = super().read(path).split()
            for tok in value.split():
                if tok[1:] not in avail:
                    raise OSError(errno.ENOENT, "controller not available", str(path))
                if tok[0] == "+" and tok[1:] not in enabled:
                    enabled.append(tok[1:])
                elif tok[0] == "-" and tok[1:] in enabled:
                    enabled.remove(tok[1:])
            path.write_text(" ".join(enabled) + "\n")
        elif path.name == "cgroup.kill":
            for procs in cg.rglob("cgroup.procs"):
                procs.write_text("")
        else:
            path.write_text(value + "\n")

    def mkdir(self, path: Path) -> None:
        if path.exists():
            return
        path.mkdir()
        if self._is_v2(path):
            ctrls = super().read(path.parent / "cgroup.subtree_control").split()
            self._v2_dir(path, ctrls)
        else:
            hier = self._hierarchy(path)
            self._v1_files(path, os.path.basename(os.path.realpath(hier)).split(","), top=False)

    def rmdir(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, "No such file", str(path))
        if self.read(path / "cgroup.procs").split() or any(p.is_dir() for p in path.iterdir()):
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))
        shutil.rmtree(path)

    def children(self, path: Path) -> list[str]:
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
