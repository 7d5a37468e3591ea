"""The few filesystem operations a cgroup manager performs, behind one small class.

The managers never touch ``open``/``os.mkdir`` directly: they go through a ``CgroupFS``, so
unit tests can hand them ``tests/support/cgroupfs.FakeCgroupFS``, which runs on a temp
directory and emulates the kernel's side effects (moving a pid out of its old
``cgroup.procs``, control files appearing on mkdir, ``cgroup.subtree_control``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as PAGE_COUNTER_MAX pages (~2^63 bytes)


class CgroupFS:
    """Reads and writes cgroup control files. Paths are absolute (under the manager's root)."""

    def read(self, path: Path) -> str:
        with open(path, encoding="ascii") as f:
            return f.read()

    def write(self, path: Path, value: str) -> None:
        # One write(2) per value: the kernel parses each write as one command, and a
        # buffered writer could split or merge them.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode("ascii"))
        finally:
            os.close(fd)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def xattr(self, path: Path, name: str) -> bytes | None:
        """The extended attribute ``name`` of ``path``, or None where it is not set."""
        try:
            return os.getxattr(path, name)
        except OSError:
            return None

    def mkdir(self, path: Path) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def children(self, path: Path) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    # -- helpers built on the primitives ------------------------------------------------

    def read_or(self, path: Path, default: str = "") -> str:
        try:
            return self.read(path)
        except (FileNotFoundError, ProcessLookupError):
            return default
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return default
            raise

    def read_int(self, path: Path, default: int = 0) -> int:
        text = self.read_or(path).strip()
        if not text:
            return default
        if text == "max":
            return -1
        return int(text.split()[0])

    def read_keyed(self, path: Path) -> dict[str, int]:
        """Parse a flat keyed file (``cpu.stat``, ``memory.events``, ``oom_control``)."""
        out: dict[str, int] = {}
        for line in self.read_or(path).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def read_pids(self, path: Path) -> list[int]:
        return [int(x) for x in self.read_or(path).split()]


def own_cgroups(proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> dict[str, str]:
    """Map each controller of the calling process to its cgroup path (``""`` = v2 unified).

    ``/proc/self/cgroup`` lines are ``ID:CONTROLLERS:PATH``; v2 is ``0::PATH``; co-mounted
    v1 controllers appear comma-separated (``2:cpu,cpuacct:/x``) and get one entry each.
    """
    out: dict[str, str] = {}
    with open(proc_self_cgroup, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            _, ctrls, path = parts
            if not ctrls:
                out[""] = path
            for c in ctrls.split(","):
                if c and not c.startswith("name="):
                    out[c] = path
    return out
