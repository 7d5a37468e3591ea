"""The runner over a real Unix socket, on the host (no namespaces, no root needed).

The same server, shell and protocol code that runs as PID 1 in a sandbox, driven by the
daemon's client class; sandbox-only parts (pivot_root, dropping to uid 1000) are covered by
tests/privileged.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import protocol as p
from runner.init import NotPid1Reaper
from runner.server import Runner, RunnerConfig
from sandkasten.runtime.linux.sandbox import LinuxSandbox, RunnerError

pytestmark = pytest.mark.integration


@pytest.fixture(params=["bash", "sh"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LinuxSandbox]:
    if request.param == "sh" and not os.path.exists("/bin/busybox"):
        pytest.fail("busybox-static is not installed: run scripts/deps.sh")
    prefer = ["bash"] if request.param == "bash" else ["/bin/busybox"]
    work = tmp_path / "work"
    work.mkdir()
    reaper = NotPid1Reaper()
    cfg = RunnerConfig(env={"PATH": "/usr/bin:/bin", "HOME": str(work)}, uid=os.geteuid(),
                       gid=os.getegid(), workdir=str(work), shell_prefer=prefer,
                       stage_dir=str(tmp_path))
    if request.param == "sh":
        # busybox runs as "sh" when its argv[0] says so
        (tmp_path / "sh").symlink_to("/bin/busybox")
        cfg.shell_prefer = [str(tmp_path / "sh")]
    runner = Runner(cfg, reaper)
    sock_path = str(tmp_path / "runner.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    t = threading.Thread(target=runner.serve, args=(listener,), daemon=True)
    t.start()
    sb = LinuxSandbox(runtime=None, session_id="host", pid=os.getpid(),  # type: ignore[arg-type]
                      socket_path=sock_path, cgroup=None)
    try:
        yield sb
    finally:
        runner.close()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        t.join(5)
        reaper.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_state_timeouts_and_recovery(client: LinuxSandbox) -> None:
    r = run(client.exec("mkdir -p sub; cd sub; export V=1; f() { echo f$1; }"))
    assert r.exit_code == 0 and r.cwd.endswith("/work/sub")
    assert run(client.exec("echo $V; f 2")).output == "1\nf2\n"
    r = run(client.exec("sleep 20", timeout_ms=200))
    assert r.timed_out and r.output.strip() == ""
    assert run(client.exec("echo $V")).output == "1\n"
    assert run(client.exec("echo ')'", timeout_ms=3000)).output == ")\n"
    r = run(client.exec("echo (", timeout_ms=3000))
    assert r.exit_code != 0 and not r.timed_out
    assert run(client.exec("cat; echo eof")).output == "eof\n"
    assert run(client.exec("echo a | head -1; echo b >&2")).output == "a\nb\n"


def test_split_and_stream(client: LinuxSandbox) -> None:
    run(client.exec("cd /; export SPLIT=yes"))
    r = run(client.exec_split("echo $SPLIT; pwd; echo e >&2; exit 4"))
    assert (r.exit_code, r.stdout, r.stderr, r.cwd) == (4, "yes\n/\n", "e\n", "/")

    async def collect() -> list[Any]:
        return [x async for x in client.exec_stream("echo one; sleep 0.2; echo two")]
    items = run(collect())
    assert "".join(i.data for i in items[:-1]) == "one\ntwo\n"
    assert items[-1].exit_code == 0


def test_files_and_errors(client: LinuxSandbox) -> None:
    assert run(client.write_file("d/x.txt", b"hi")).endswith("/work/d/x.txt")
    assert run(client.read_file("d/x.txt", max_bytes=1)) == (b"h", True)
    assert [e.name for e in run(client.list_dir("d"))] == ["x.txt"]
    with pytest.raises(RunnerError) as e:
        run(client.list_dir("missing"))
    assert e.value.code == "not_found" and e.value.status == 404
    with pytest.raises(RunnerError) as e:
        run(client.read_file("/proc/self/environ"))
    assert e.value.code == "permission_denied"


def test_garbage_on_the_socket_gets_an_error_frame(client: LinuxSandbox) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(client._socket)
        s.sendall(b"\x00\x00\x00\x02{]")
        data = s.recv(65536)
    (msg,) = p.Decoder().feed(data)
    assert isinstance(msg, p.Error) and msg.code == "invalid"
    assert run(client.exec("echo fine")).output == "fine\n"


def test_wrongly_typed_fields_get_an_error_reply(client: LinuxSandbox) -> None:
    with pytest.raises(RunnerError) as e:
        run(client.request(p.ReadFile(path=123)))  # type: ignore[arg-type]
    assert e.value.code == "invalid"
    assert run(client.exec("echo fine")).output == "fine\n"


def test_background_jobs_print_no_job_notice(client: LinuxSandbox) -> None:
    # bash announces "[1] <pid>" for a job put in the background when it reads commands
    # interactively; an exec's output is the command's output only
    r = run(client.exec("sleep 0.3 & echo started"))
    assert (r.exit_code, r.output) == (0, "started\n")
    r = run(client.exec("sleep 0.2 &"))
    assert r.output == ""
    # the job still belongs to the shell: $! and wait work across execs
    assert run(client.exec("wait $!; echo waited $?")).output.endswith("waited 0\n")
    # and the here-document that carries a command is not an fd the command can see
    r = run(client.exec("ls /proc/self/fd"))
    assert "9" not in r.output.split()


def test_commands_with_quotes_heredocs_and_marker_like_lines(client: LinuxSandbox) -> None:
    cmd = "cat <<'EOF'\nSANDKASTEN_x\n'quoted' \"double\" $HOME \\\nEOF\necho 'it'\\''s'"
    r = run(client.exec(cmd))
    assert r.output == "SANDKASTEN_x\n'quoted' \"double\" $HOME \\\nit's\n"
    assert run(client.exec("f() {\n  echo in-f\n}\nf")).output == "in-f\n"
    assert run(client.exec("echo no-newline-at-end")).output == "no-newline-at-end\n"


def test_split_exec_does_not_wait_for_a_running_exec(client: LinuxSandbox) -> None:
    run(client.exec("cd /; export MARK=before TRICKY=$'a\\nb \"c\" $d'"))

    async def scenario() -> tuple[Any, float, Any, Any]:
        slow = asyncio.create_task(client.exec("sleep 1.5; cd /tmp; export MARK=after"))
        await asyncio.sleep(0.2)
        t0 = asyncio.get_running_loop().time()
        split = await client.exec_split('echo "$PWD $MARK"; printf %s "$TRICKY"')
        took = asyncio.get_running_loop().time() - t0
        done = await slow
        after = await client.exec_split('echo "$PWD $MARK"')
        return split, took, done, after

    split, took, done, after = run(scenario())
    # the state the last completed exec left, at once (not after the 1.5 s exec)
    assert took < 1.0
    assert (split.cwd, split.stdout) == ("/", '/ before\na\nb "c" $d')
    assert done.exit_code == 0
    assert (after.cwd, after.stdout) == ("/tmp", "/tmp after\n")
