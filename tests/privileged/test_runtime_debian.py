"""Real sandboxes from the Debian python image: bash, python, limits and kernel escapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandkasten.runtime.linux.sandbox import LinuxSandbox
from tests.support.sandbox import debian_layer, linux_runtime, run, spec_for  # noqa: F401

pytestmark = [pytest.mark.privileged, pytest.mark.slow]


@pytest.fixture(scope="module")
def sb(linux_runtime: Any, debian_layer: Path) -> LinuxSandbox:  # noqa: F811
    return run(linux_runtime.create(spec_for(debian_layer, mem_limit_mb=96, pids_limit=64,
                                             cpu_limit=1.0)))


def ex(sb: LinuxSandbox, cmd: str, **kw: Any) -> Any:
    return run(sb.exec(cmd, **kw))


def test_bash_and_python(sb: LinuxSandbox) -> None:
    assert ex(sb, "echo $BASH_VERSION").output.startswith("5.")
    assert ex(sb, "python3 -c 'print(2+2)'").output == "4\n"
    assert ex(sb, "getent passwd sandbox | cut -d: -f3,6").output == "1000:/workspace\n"
    r = ex(sb, "cd /tmp; declare -A m=([k]=v); sleep 100 & echo ok")
    assert "ok" in r.output
    assert ex(sb, "echo ${m[k]}; pwd; jobs | wc -l").output == "v\n/tmp\n1\n"


PY_ESCAPES = {
    "ptrace_pid1": "import ctypes; l=ctypes.CDLL(None, use_errno=True); "
                   "r=l.ptrace(16, 1, 0, 0); print(r, ctypes.get_errno()); "
                   "raise SystemExit(0 if r == 0 else 1)",
    "raw_socket": "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)",
    "packet_socket": "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)",
    "open_pid1_exe": "open('/proc/1/exe', 'rb').read(1)",
    "list_pid1_root": "import os; os.listdir('/proc/1/root')",
    "setuid_root": "import os; os.setuid(0)",
    "unshare_user": "import ctypes; l=ctypes.CDLL(None, use_errno=True); "
                    "raise SystemExit(0 if l.unshare(0x10000000) == 0 else 1)",
    "bpf": "import ctypes; l=ctypes.CDLL(None, use_errno=True); "
           "raise SystemExit(0 if l.syscall(321, 0, 0, 0) >= 0 else 1)",
}


@pytest.mark.parametrize("name", sorted(PY_ESCAPES))
def test_kernel_escapes_fail(sb: LinuxSandbox, name: str) -> None:
    r = run(sb.exec_split(f"python3 -c \"{PY_ESCAPES[name]}\""))
    assert r.exit_code != 0, f"{name} succeeded: {r.stdout} {r.stderr}"


def test_memory_limit_oom_kills_and_session_answers(sb: LinuxSandbox) -> None:
    r = ex(sb, "python3 -c 'b = bytearray(400 << 20); print(len(b))'", timeout_ms=30000)
    assert r.exit_code != 0 and "419430400" not in r.output
    stats = run(sb.stats())
    assert stats.memory_limit == 96 << 20
    assert stats.oom_kills >= 1
    assert ex(sb, "echo alive").output == "alive\n"


def test_fork_bomb_is_contained(sb: LinuxSandbox) -> None:
    r = ex(sb, "for i in $(seq 100); do sleep 30 & done; echo loop-done", timeout_ms=60000)
    assert "Resource temporarily unavailable" in r.output
    assert run(sb.stats()).pids <= 64
    ex(sb, "kill $(jobs -p) 2>/dev/null; wait", timeout_ms=30000)
    assert ex(sb, "echo alive").output == "alive\n"


def test_cpu_limit_throttles(linux_runtime: Any, debian_layer: Path) -> None:  # noqa: F811
    s = run(linux_runtime.create(spec_for(debian_layer, cpu_limit=0.25)))
    try:
        before = run(s.stats()).cpu_usage_usec
        r = run(s.exec("for i in 1 2; do timeout 2 sh -c 'while :; do :; done' & done; wait",
                       timeout_ms=20000))
        used = (run(s.stats()).cpu_usage_usec - before) / 1e6
        assert r.duration_ms >= 1900
        # two busy loops for 2 s wall: 4 CPU-seconds unthrottled, 0.5 at a quarter core
        assert used < 0.25 * r.duration_ms / 1000 + 0.3, used
    finally:
        run(s.destroy())
