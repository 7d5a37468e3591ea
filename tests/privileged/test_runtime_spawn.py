"""Spawning user processes: privileges dropped per thread, posix_spawn, controlling tty.

``runner.init.spawn`` starts every user process from a short-lived thread that dropped
its own privileges (``threaddrop``); PID 1's other threads must keep theirs. These tests
run the real calls in a forked child of the test process (tests/support/forked.py), as
root, so a failure cannot leave the test process changed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.init import ChildSpec, spawn
from sandkasten.runtime.linux import threaddrop
from tests.support.forked import in_child

pytestmark = pytest.mark.privileged


def _status(tid: int | None = None) -> dict[str, str]:
    path = f"/proc/self/task/{tid}/status" if tid else "/proc/self/status"
    with open(path) as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def test_drop_affects_only_the_calling_thread() -> None:
    def child() -> object:
        seen: dict[str, dict[str, str]] = {}

        def worker() -> None:
            threaddrop.drop_thread_privileges(1000, 1000)
            seen["thread"] = _status(threading.get_native_id())
            try:
                os.mkdir("/proc/sandkasten-test")  # needs root: must fail now
                seen["mkdir"] = {"ok": "yes"}
            except OSError as e:
                seen["mkdir"] = {"errno": str(e.errno)}

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        seen["main"] = _status()
        return seen

    seen = in_child(child)
    assert isinstance(seen, dict)
    thread, main = seen["thread"], seen["main"]
    assert thread["Uid"].split() == ["1000"] * 4 and thread["Gid"].split() == ["1000"] * 4
    assert thread["Groups"] == "1000"
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(thread[key], 16) == 0, key
    assert thread["NoNewPrivs"] == "1"
    assert "yes" not in seen["mkdir"].values()
    # the process (its main thread) is untouched
    assert main["Uid"].split() == ["0"] * 4
    assert int(main["CapEff"], 16) != 0 and main["NoNewPrivs"] == "0"


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """A directory uid 1000 can reach (pytest's tmp_path is under a 0700 root dir)."""
    work = Path(tempfile.mkdtemp(prefix="sandkasten-spawn-"))
    try:
        os.chmod(work, 0o755)
        os.chown(work, 1000, 1000)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_spawn_drops_privileges_sets_cwd_and_tty(user_dir: Path) -> None:
    work = user_dir

    def child() -> object:
        out_r, out_w = os.pipe()
        master, slave = os.openpty()
        os.fchown(slave, 1000, 1000)
        devnull = os.open("/dev/null", os.O_RDWR)
        leak = os.open("/dev/null", os.O_RDONLY)
        os.set_inheritable(leak, True)  # as a runner might inherit one
        script = ("grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs):' /proc/self/status >&3; "
                  "pwd >&3; cut -d' ' -f6,7 /proc/self/stat >&3; "
                  "ls /proc/self/fd | tr '\\n' ' ' >&3")
        spec = ChildSpec(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, str(work),
                         devnull, slave, slave, ctty=slave, fd3=out_w)
        cwd_before = os.getcwd()
        pid = spawn(spec, lambda: threaddrop.drop_thread_privileges(1000, 1000))
        os.close(out_w)
        os.close(slave)
        data = b""
        while chunk := os.read(out_r, 4096):
            data += chunk
        _, status = os.waitpid(pid, 0)
        try:
            spawn(ChildSpec(["/nonexistent"], {}, "/", devnull, devnull, devnull), None)
            missing = "spawned"
        except FileNotFoundError:
            missing = "ENOENT"
        os.close(master)
        return [data.decode(), os.waitstatus_to_exitcode(status), os.getcwd() == cwd_before,
                _status()["Uid"].split()[0], missing, leak]

    text, code, cwd_kept, uid, missing, leak = in_child(child)
    assert code == 0, text
    lines = text.splitlines()
    fields = dict(line.split(":", 1) for line in lines[:4])
    assert fields["Uid"].split() == ["1000"] * 4
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert lines[4] == str(work)
    # its own session, with the terminal as its controlling tty (tty_nr, field 7, not 0)
    session, tty_nr = lines[5].split()
    assert int(tty_nr) != 0 and int(session) > 0
    # only 0, 1, 2 and 3 (plus the directory fd ls itself opens) reach the child
    fds = set(lines[6].split())
    assert {"0", "1", "2", "3"} <= fds <= {"0", "1", "2", "3", "4"}, fds
    assert str(leak) not in fds
    assert cwd_kept and uid == "0" and missing == "ENOENT"
