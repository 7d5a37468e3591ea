"""Process helpers for the benchmarks: process trees, proportional (PSS) and private (USS)
memory from /proc/<pid>/smaps_rollup."""

from __future__ import annotations

import os


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(PSS, USS) of ``pids`` together, in KiB. PSS shares each page among its users; USS
    (Private_Clean + Private_Dirty) is what ending these processes would free."""
    pss = uss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key == "Pss":
                        pss += int(rest.split()[0])
                    elif key in ("Private_Clean", "Private_Dirty"):
                        uss += int(rest.split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return pss, uss


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out
