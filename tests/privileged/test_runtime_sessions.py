"""Real sandboxes from a busybox image: the shell, execs, files, isolation, cleanup."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sandkasten.runtime.linux import proc_start_time
from sandkasten.runtime.linux.sandbox import LinuxSandbox, RunnerError
from tests.support.sandbox import busybox_layer, linux_runtime, run, spec_for  # noqa: F401

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def sb(linux_runtime: Any, busybox_layer: Path) -> LinuxSandbox:  # noqa: F811
    return run(linux_runtime.create(spec_for(busybox_layer, mem_limit_mb=128,
                                             pids_limit=64, cpu_limit=1.0)))


def ex(sb: LinuxSandbox, cmd: str, **kw: Any) -> Any:
    return run(sb.exec(cmd, **kw))


def test_runs_as_sandbox_user_in_workspace(sb: LinuxSandbox) -> None:
    r = ex(sb, "id; pwd; echo $HOME; hostname")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].startswith("uid=1000(sandbox) gid=1000(sandbox)")
    assert lines[1:3] == ["/workspace", "/workspace"]
    assert lines[3] == sb.id
    assert r.cwd == "/workspace"


def test_state_persists_between_execs(sb: LinuxSandbox) -> None:
    r = ex(sb, "mkdir -p d; cd d; export FOO=bar; f() { echo fn:$1; }; "
               "sleep 300 & echo started")
    assert r.exit_code == 0 and "started" in r.output
    r = ex(sb, "echo $FOO; f x; jobs | grep -c sleep")
    assert r.output.splitlines() == ["bar", "fn:x", "1"]
    assert r.cwd == "/workspace/d"
    ex(sb, "kill %1; cd /workspace")


def test_exit_code_and_output_normalised(sb: LinuxSandbox) -> None:
    r = ex(sb, "printf 'a\\r\\n\\033[31mred\\033[0m\\n'; exit_code() { return 7; }; "
               "exit_code")
    assert r.exit_code == 7
    assert r.output == "a\nred\n"
    assert "\x1b[31m" in ex(sb, "printf '\\033[31mred\\033[0m'", raw_output=True).output


def test_marker_cannot_be_forged(sb: LinuxSandbox) -> None:
    r = ex(sb, "printf '\\036deadbeef:0:/x\\037deadbeef\\n'; echo real; false")
    assert r.exit_code == 1 and r.output.endswith("real\n")


def test_syntax_error_keeps_the_session(sb: LinuxSandbox) -> None:
    r = ex(sb, "echo 'unterminated", timeout_ms=5000)
    assert r.exit_code != 0 and not r.timed_out
    assert ex(sb, "echo ok").output == "ok\n"


def test_timeout_interrupts_the_command_not_the_session(sb: LinuxSandbox) -> None:
    ex(sb, "export KEEP=yes")
    r = ex(sb, "sleep 30; echo never", timeout_ms=300)
    assert r.timed_out and "never" not in r.output and r.duration_ms < 5000
    r = ex(sb, "while :; do :; done", timeout_ms=300)  # a builtin loop in the shell itself
    assert r.timed_out
    r = ex(sb, "trap '' INT; sleep 30", timeout_ms=300)  # ignores SIGINT: SIGKILL follows
    assert r.timed_out and r.duration_ms < 5000
    assert ex(sb, "echo $KEEP").output == "yes\n"


def test_output_cap(sb: LinuxSandbox) -> None:
    r = ex(sb, "head -c 3000000 /dev/zero | tr '\\0' a; echo", max_output=1 << 20)
    assert r.truncated and r.exit_code == 0
    assert len(r.output) == 1 << 20
    r = ex(sb, "echo small")
    assert not r.truncated


def test_large_command_is_staged(sb: LinuxSandbox) -> None:
    payload = "x" * 40000
    r = ex(sb, f"V={payload}\necho ${{#V}}")
    assert r.output == "40000\n" and r.exit_code == 0
    assert ex(sb, "ls -a /tmp | grep -c sandkasten-cmd || true").output == "0\n"


def test_stdin_readers_get_eof(sb: LinuxSandbox) -> None:
    r = ex(sb, "cat; read x; echo after:$?", timeout_ms=5000)
    assert not r.timed_out and r.output == "after:1\n"


def test_exit_restarts_the_shell(sb: LinuxSandbox) -> None:
    r = ex(sb, "exit 5")
    assert r.exit_code == 5
    assert ex(sb, "echo back").output == "back\n"


def test_split_exec_uses_shell_cwd_and_env(sb: LinuxSandbox) -> None:
    ex(sb, "mkdir -p /workspace/sp && cd /workspace/sp && export SPLIT=1")
    r = run(sb.exec_split("echo out; echo err >&2; pwd; echo $SPLIT; exit 3"))
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n/workspace/sp\n1\n", "err\n")
    ex(sb, "cd /workspace")


def test_stream_yields_chunks_then_result(sb: LinuxSandbox) -> None:
    async def collect() -> list[Any]:
        return [item async for item in sb.exec_stream("for i in 1 2 3; do echo $i; "
                                                      "sleep 0.1; done")]
    items = run(collect())
    chunks, final = items[:-1], items[-1]
    assert len(chunks) >= 2
    assert "".join(c.data for c in chunks) == "1\n2\n3\n"
    assert final.exit_code == 0 and final.output == "1\n2\n3\n"


def test_files_round_trip(sb: LinuxSandbox) -> None:
    path = run(sb.write_file("up/load/a.bin", bytes(range(256)), mode=0o600))
    assert path == "/workspace/up/load/a.bin"
    data, truncated = run(sb.read_file("/workspace/up/load/a.bin"))
    assert data == bytes(range(256)) and not truncated
    assert run(sb.read_file("up/load/a.bin", max_bytes=10)) == (bytes(range(10)), True)
    entries = run(sb.list_dir("up/load"))
    assert [(e.name, e.type, e.size, e.mode) for e in entries] == [("a.bin", "file", 256,
                                                                     0o600)]
    assert ex(sb, "stat -c '%u %a' up/load/a.bin").output == "1000 600\n"
    paths = run(sb.write_files([("m1", b"1", 0o644), ("m2/x", b"2", 0o755)]))
    assert paths == ["/workspace/m1", "/workspace/m2/x"]
    with pytest.raises(RunnerError) as e:
        run(sb.read_file("does/not/exist"))
    assert e.value.code == "not_found"


def test_file_ops_cannot_reach_host_files(sb: LinuxSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host data")
    ex(sb, f"ln -sf {secret} /workspace/to-host; ln -sf /proc/1/root/etc /workspace/p1")
    with pytest.raises(RunnerError) as e:
        run(sb.read_file("to-host"))
    assert e.value.code == "not_found"
    with pytest.raises(RunnerError):  # the link's target does not exist in the sandbox
        run(sb.write_file("to-host", b"overwritten?"))
    assert secret.read_text() == "host data"
    # /proc/1/root is the sandbox's own root: it leads nowhere else
    assert sb.id in run(sb.read_file("p1/hosts"))[0].decode()
    for path in ("/proc/1/environ", "/proc/self/mem", "/proc/1/maps"):
        with pytest.raises(RunnerError) as e:
            run(sb.read_file(path))
        assert e.value.code == "permission_denied", path


def test_network_none_has_only_loopback(sb: LinuxSandbox) -> None:
    r = ex(sb, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert r.output.split() == ["lo"]
    assert "UP" in ex(sb, "ip link show lo").output


@pytest.mark.parametrize("cmd", [
    "mount -t tmpfs none /tmp",
    "umount /proc",
    "unshare -m true",
    "unshare -U true",
    "unshare -n true",
    "cat /proc/1/environ",
    "ls /proc/1/root/",
    "readlink /proc/1/exe",
    "cat /proc/1/mem",
    "echo h > /proc/sysrq-trigger",
    "echo 1 > /proc/sys/kernel/sysrq",
    "kill -9 1",
    "chroot / true",
    "mknod /tmp/x c 1 3",
    "hostname evil",
    "ip link add dummy0 type dummy",
    "nsenter -t 1 -m true",
])
def test_escape_attempts_fail(sb: LinuxSandbox, cmd: str) -> None:
    r = ex(sb, cmd + " 2>&1", timeout_ms=5000)
    assert r.exit_code != 0, f"{cmd!r} succeeded: {r.output}"
    assert ex(sb, "echo alive").output == "alive\n"


@pytest.mark.parametrize("readonly", [False, True])
def test_device_nodes_of_images_and_workspaces_open_nothing(
        linux_runtime: Any, busybox_layer: Path, tmp_path: Path,  # noqa: F811
        readonly: bool) -> None:
    """A 0666 device node shipped in an image layer or put into a workspace on the host
    (here /dev/null's and /dev/tty1's numbers) cannot be opened: the root filesystem and
    the workspace are mounted nodev (and nosuid), whatever readonly_rootfs says."""
    layer, ws = tmp_path / "layer", tmp_path / "ws"
    (layer / "etc").mkdir(parents=True)
    ws.mkdir()
    for d in (layer / "etc", ws):
        os.mknod(d / "null666", 0o666 | 0o020000, os.makedev(1, 3))
        os.mknod(d / "tty666", 0o666 | 0o020000, os.makedev(4, 1))
    spec = spec_for(busybox_layer, workspace_dir=ws, readonly_rootfs=readonly)
    spec = dataclasses.replace(spec, layer_paths=[busybox_layer, layer])
    s = run(linux_runtime.create(spec))
    try:
        assert ex(s, "ls -l /etc/null666 /workspace/tty666 | cut -c1").output == "c\nc\n"
        for path in ("/etc/null666", "/etc/tty666", "/workspace/null666",
                     "/workspace/tty666"):
            r = ex(s, f"echo x > {path} 2>&1; echo rc=$?; cat {path} 2>&1; echo rc=$?")
            assert r.output.count("Permission denied") == 2, (path, r.output)
        mounts = {ln.split()[1]: ln.split()[3].split(",")
                  for ln in ex(s, "cat /proc/mounts").output.splitlines()}
        for target in ("/", "/workspace"):
            assert {"nosuid", "nodev"} <= set(mounts[target]), (target, mounts[target])
        assert ("ro" in mounts["/"]) is readonly
        assert ex(s, "echo ok > /dev/null && echo fine").output == "fine\n"  # ours work
    finally:
        run(s.destroy())


def test_no_mount_is_visible_on_the_host(sb: LinuxSandbox) -> None:
    with open("/proc/self/mountinfo") as f:
        assert sb.id not in f.read()


def test_stateless_mode(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    s = run(linux_runtime.create(spec_for(busybox_layer, exec_mode="stateless")))
    try:
        assert run(s.exec("cd /tmp; export A=1; echo $A; pwd")).output == "1\n/tmp\n"
        r = run(s.exec("echo ${A:-unset}; pwd"))
        assert r.output == "unset\n/workspace\n" and r.cwd == "/workspace"
        assert run(s.exec("sleep 10", timeout_ms=200)).timed_out
    finally:
        run(s.destroy())


def test_destroy_leaves_nothing(linux_runtime: Any, busybox_layer: Path) -> None:  # noqa: F811
    s = run(linux_runtime.create(spec_for(busybox_layer, mem_limit_mb=64)))
    run(s.exec("sleep 1000 & sleep 1000 &"))
    pid, start = s.pid, proc_start_time(s.pid)
    assert start is not None
    run(s.destroy())
    assert proc_start_time(pid) != start
    assert not (linux_runtime.sessions_dir / s.id).exists()
    assert linux_runtime.cgroups.open(linux_runtime.cgroup_name(s.id)) is None
    with open("/proc/self/mountinfo") as f:
        assert s.id not in f.read()
    with pytest.raises(Exception, match="destroyed"):
        run(s.exec("true"))


OWNER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from sandkasten.runtime.base import SessionSpec
    from sandkasten.runtime.linux import LinuxRuntime
    async def main():
        rt = LinuxRuntime(Path(sys.argv[1]), cgroup_parent="sandkasten-tests")
        sb = await rt.create(SessionSpec(id=sys.argv[3], image="t",
                                         layer_paths=[Path(sys.argv[2])], pids_limit=64))
        await sb.exec("cd /tmp && export MARK=kept")
        print(sb.pid, flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


def test_sandbox_survives_owner_sigkill_then_cleanup(tmp_path: Path,
                                                    busybox_layer: Path) -> None:  # noqa: F811
    from sandkasten.runtime.linux import LinuxRuntime

    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(data), str(busybox_layer),
                             "owned1"], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    rt = LinuxRuntime(data, cgroup_parent="sandkasten-tests")
    try:
        s = run(rt.attach("owned1"))
        assert s is not None and s.pid == pid
        r = run(s.exec("echo $MARK"))
        assert (r.output, r.cwd) == ("kept\n", "/tmp")
        run(rt.cleanup("owned1"))
        assert proc_start_time(pid) is None
        assert run(rt.attach("owned1")) is None
        assert not (data / "sessions" / "owned1").exists()
        assert rt.cgroups.open(rt.cgroup_name("owned1")) is None
    finally:
        rt.destroy_sync("owned1")
        rt.close()
