"""Copy-on-write warm-up for spare PID 1s.

Every page a forked PID 1 writes is first copied (copy-on-write): the start of a sandbox
(setup, runner, shell, first request) writes about a thousand pages of the fork server's
memory, and the faults cost milliseconds on the create path. The pages are the same in
every sandbox: all are forks of one process, running the same code at the same addresses.
A sandbox ends up owning a private copy of each of them anyway.

So the fork server learns them from its first sandboxes: after a PID 1's first request,
``learn`` reads ``/proc/<pid>/pagemap`` for the fork server's own writable private ranges
and keeps the pages that PID 1 maps present, exclusively and anonymously (its copies).
A spare PID 1, forked ahead of any request, copies exactly those (``touch``) while it
waits. Memory is unchanged (the same pages, copied earlier, before the sandbox joins its
cgroup); the faults leave the create path. Nothing here is needed for correctness: an
address that is no longer mapped is skipped, and a spare that fails is replaced by a fork
on demand.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import select
import struct

PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_FILE_OR_SHARED_ANON = 1 << 61
_EXCLUSIVE = 1 << 56  # mapped by this process only (Linux 4.2+)
_ENTRY = struct.Struct("<Q")
_memmove = ctypes.memmove


def writable_private_ranges(maps: str) -> list[tuple[int, int]]:
    """(start, end) of every ``rw-p`` mapping in a /proc/<pid>/maps text, sorted."""
    out = []
    for line in maps.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[1] == "rw-p":
            start, _, end = fields[0].partition("-")
            out.append((int(start, 16), int(end, 16)))
    return sorted(out)


def own_ranges() -> list[tuple[int, int]]:
    with open("/proc/self/maps", encoding="ascii") as f:
        return writable_private_ranges(f.read())


def learn(pid: int, ranges: list[tuple[int, int]]) -> set[int]:
    """Addresses in ``ranges`` of the pages that ``pid`` holds as its own copies."""
    found: set[int] = set()
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        for start, end in ranges:
            f.seek(start // PAGE * _ENTRY.size)
            data = f.read((end - start) // PAGE * _ENTRY.size)
            for i, (entry,) in enumerate(_ENTRY.iter_unpack(data)):
                if entry & _PRESENT and entry & _EXCLUSIVE \
                        and not entry & _FILE_OR_SHARED_ANON:
                    found.add(start + i * PAGE)
    return found


def touch(addresses: list[int], stop_fd: int | None = None) -> int:
    """Write each page of the sorted ``addresses`` that is mapped ``rw-p`` in this process
    with the byte it holds (a copy-on-write copy, nothing else), until ``stop_fd`` turns
    readable (the request arrived: it must not wait for this). Single-threaded callers
    only. Returns how many pages were written."""
    ranges = own_ranges()
    starts = [r[0] for r in ranges]
    poller = select.poll()
    if stop_fd is not None:
        poller.register(stop_fd, select.POLLIN)
    n = 0
    for addr in addresses:
        if n % 64 == 0 and stop_fd is not None and poller.poll(0):
            break
        i = bisect.bisect_right(starts, addr) - 1
        if i < 0 or addr >= ranges[i][1]:
            continue
        # One C call that loads the byte and stores it back: nothing runs in between. (A
        # read here and a write later would race this very interpreter's allocator, which
        # may hand out memory on the same page between the two.)
        _memmove(addr, addr, 1)
        n += 1
    return n
