"""Plain children: split-stream execs and stateless execs (``sh -c``, no PTY, no state).

The child gets /dev/null as stdin, its own session and process group (so a timeout kills
the whole group and nothing else), and pipes for stdout and stderr: separate for a split
exec, one shared pipe for a stateless exec's combined output.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable

from runner.init import ChildSpec, Reaper, spawn
from runner.output import Capped
from runner.shell import KILL_GRACE


def run_plain(
    cmd: str, *, env: dict[str, str], cwd: str, reaper: Reaper,
    setup: Callable[[], None] | None, timeout_ms: int | None, max_output: int,
    split: bool, on_chunk: Callable[[str], None] | None = None, sh: str = "/bin/sh",
) -> tuple[int, bytes, bytes, bool, bool, int]:
    """Run ``sh -c cmd``; returns (exit_code, stdout, stderr, truncated, timed_out, ms).

    With ``split`` false stderr goes into stdout (combined) and stderr is "". ``max_output``
    caps each stream; the child keeps running while its output is discarded past the cap.
    """
    start = time.monotonic()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe() if split else (-1, out_w)
    devnull = os.open("/dev/null", os.O_RDONLY)
    try:
        spec = ChildSpec([sh, "-c", cmd], env, cwd, devnull, out_w, err_w)
        pid = reaper.spawn(lambda: spawn(spec, setup))
    except BaseException:
        for fd in {out_r, err_r, out_w, err_w} - {-1}:
            os.close(fd)
        raise
    finally:
        os.close(devnull)
    os.close(out_w)
    if split:
        os.close(err_w)
    bufs = {out_r: Capped(max_output)}
    if split:
        bufs[err_r] = Capped(max_output)
    open_fds = list(bufs)
    deadline = None if timeout_ms is None else start + timeout_ms / 1000
    timed_out = False
    kill_at: float | None = None
    exit_code: int | None = None
    try:
        while open_fds:
            now = time.monotonic()
            wait = 0.25
            if deadline is not None and not timed_out:
                wait = min(wait, deadline - now)
            if kill_at is not None:
                wait = min(wait, kill_at - now)
            rl, _, _ = select.select(open_fds, [], [], max(0.0, wait))
            for fd in rl:
                data = os.read(fd, 65536)
                if not data:
                    open_fds.remove(fd)
                    continue
                kept = bufs[fd].add(data)
                if on_chunk is not None and kept:
                    on_chunk(kept.decode("utf-8", errors="replace"))
            now = time.monotonic()
            if deadline is not None and not timed_out and now >= deadline:
                timed_out = True
                _killpg(pid, signal.SIGTERM)
                kill_at = now + KILL_GRACE
            elif kill_at is not None and now >= kill_at:
                _killpg(pid, signal.SIGKILL)
                kill_at = None
                break  # grandchildren may hold the pipes open; stop reading
        exit_code = reaper.wait(pid, None if not timed_out else 2.0)
    finally:
        for fd in bufs:
            os.close(fd)
        if exit_code is None:
            _killpg(pid, signal.SIGKILL)
            exit_code = reaper.wait(pid, 2.0)
    out, err = bufs[out_r], bufs.get(err_r)
    return (
        124 if exit_code is None else exit_code,
        bytes(out.buf),
        bytes(err.buf) if err is not None else b"",
        out.truncated or (err is not None and err.truncated),
        timed_out,
        int((time.monotonic() - start) * 1000),
    )


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
