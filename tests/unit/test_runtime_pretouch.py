"""Copy-on-write warm-up: which pages a forked process copied, and copying them ahead."""

from __future__ import annotations

import ctypes
import mmap
import os

from sandkasten.runtime.linux import pretouch

MAPS = """\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000004000 r--p 00000000 fd:01 123                        /usr/lib/libc.so.6
7f0000010000-7f0000012000 rw-p 00010000 fd:01 123                        /usr/lib/libc.so.6
7f0000020000-7f0000030000 rw-s 00000000 00:01 9                          /dev/shm/x
7f0000040000-7f0000041000 ---p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_writable_private_ranges_are_the_rw_p_mappings() -> None:
    assert pretouch.writable_private_ranges(MAPS) == [
        (0x55d0c0a00000, 0x55d0c0a21000),
        (0x7f0000010000, 0x7f0000012000),
        (0x7ffd00000000, 0x7ffd00021000),
    ]


def _buffer(pages: int) -> tuple[mmap.mmap, int]:
    buf = mmap.mmap(-1, pages * pretouch.PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    buf.write(b"x" * len(buf))  # every page present in the parent before the fork
    return buf, addr


def test_learn_finds_exactly_the_pages_a_child_wrote() -> None:
    buf, addr = _buffer(8)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child copies pages 1 and 5, then waits to be inspected
        buf[1 * pretouch.PAGE] = ord("y")
        buf[5 * pretouch.PAGE + 7] = ord("z")
        os.write(w, b"1")
        os.read(go_r, 1)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"1"
        found = pretouch.learn(pid, [(addr, addr + 8 * pretouch.PAGE)])
        assert found == {addr + pretouch.PAGE, addr + 5 * pretouch.PAGE}
    finally:
        os.write(go_w, b"1")
        os.waitpid(pid, 0)
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        del addr
        buf.close()


def test_touch_copies_the_pages_and_keeps_their_bytes() -> None:
    buf, addr = _buffer(4)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        written = pretouch.touch([addr, addr + 2 * pretouch.PAGE, 0x1000])  # 0x1000: unmapped
        ok = written == 2 and buf[:] == b"x" * len(buf)
        os.write(w, pretouch.learn(os.getpid(), [(addr, addr + 4 * pretouch.PAGE)]).__repr__()
                 .encode() if ok else b"bad")
        os._exit(0)
    try:
        out = os.read(r, 4096).decode()
        os.waitpid(pid, 0)
        assert out == repr({addr, addr + 2 * pretouch.PAGE})
    finally:
        os.close(r)
        os.close(w)
        del addr
        buf.close()


def test_touch_stops_when_the_request_arrives() -> None:
    buf, addr = _buffer(256)
    r, w = os.pipe()
    os.write(w, b"request")
    try:
        pages = [addr + i * pretouch.PAGE for i in range(256)]
        assert pretouch.touch(pages, stop_fd=r) == 0
        assert pretouch.touch(pages) == 256
    finally:
        os.close(r)
        os.close(w)
        del addr
        buf.close()


def test_touching_every_page_of_a_live_interpreter_corrupts_nothing() -> None:
    """The pages touched include the allocator's own (pool headers at page starts): the
    load and the store must be one operation, or an allocation in between is undone."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pages = [a for start, end in pretouch.own_ranges()
                     for a in range(start, end, pretouch.PAGE)]
            for _ in range(5):
                keep = [bytes([i % 256]) for i in range(5000)]  # the 48-byte class
                pretouch.touch(pages)
                del keep  # a pool whose header a racy touch rewrote now miscounts
                junk = [str(i) * (i % 40) for i in range(20000)]  # allocate all sizes
                del junk
            code = 0 if sum(len(str(i)) for i in range(10000)) == 38890 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
