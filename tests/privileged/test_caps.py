"""drop_privileges in a forked child: no capability in any set, no_new_privs, the target
uid/gid as the only identity, and setuid binaries no longer elevate."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandkasten.runtime.linux import caps
from tests.support.forked import in_child

pytestmark = pytest.mark.privileged


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: dropping privileges needs some to drop")


def status_fields() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_everything_dropped() -> None:
    def child() -> dict[str, str]:
        caps.drop_privileges(1000, 1000)
        return status_fields()

    st = in_child(child)
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[key], 16) == 0, key
    assert st["NoNewPrivs"] == "1"
    assert st["Uid"].split() == ["1000"] * 4 and st["Gid"].split() == ["1000"] * 4
    assert st["Groups"].split() == ["1000"]


def test_cannot_regain_root() -> None:
    def child() -> list[str]:
        caps.drop_privileges(1000, 1000)
        out = []
        for fn in (lambda: os.setuid(0), lambda: os.setgroups([0]),
                   lambda: os.chown("/proc/self/status", 0, 0)):
            try:
                fn()
                out.append("OK")
            except PermissionError:
                out.append("EPERM")
        return out

    assert in_child(child) == ["EPERM", "EPERM", "EPERM"]


def test_root_without_capabilities() -> None:
    def child() -> tuple[str, str]:
        caps.drop_privileges(0, 0)
        st = status_fields()
        return st["Uid"], st["CapEff"]

    uid, eff = in_child(child)
    assert uid.split()[0] == "0" and int(eff, 16) == 0


@pytest.fixture
def setuid_id() -> Iterator[Path]:
    """A setuid-root copy of id(1) in a directory uid 1000 can reach."""
    d = Path(tempfile.mkdtemp(prefix="sk-test-caps-"))
    try:
        os.chmod(d, 0o755)
        exe = d / "id"
        shutil.copy2("/usr/bin/id", exe)
        os.chown(exe, 0, 0)
        os.chmod(exe, 0o4755)
        yield exe
    finally:
        shutil.rmtree(d)


def test_setuid_binary_does_not_elevate(setuid_id: Path) -> None:
    def run(drop: bool) -> str:
        def child() -> str:
            if drop:
                caps.drop_privileges(1000, 1000)
            else:  # the control: the same uid change without no_new_privs
                os.setgroups([1000])
                os.setresgid(1000, 1000, 1000)
                os.setresuid(1000, 1000, 1000)
            return subprocess.run([str(setuid_id), "-u"], capture_output=True,
                                  text=True).stdout.strip()

        return in_child(child)

    assert run(drop=False) == "0"  # setuid works here: the test can tell the difference
    assert run(drop=True) == "1000"


def test_capabilities_reports_sets() -> None:
    eff, prm, _ = caps.capabilities()
    assert eff != 0 and prm != 0  # root in the test process
    assert caps.CAP_LAST_CAP >= 37
