"""The ``user namespace`` line of ``sandkasten doctor``/``security`` (pure) and the id map."""

from __future__ import annotations

from typing import Any

import pytest

from sandkasten.cli import _checks as C
from sandkasten.config import USERNS_DEFAULT_BASE, USERNS_SIZE
from sandkasten.runtime.linux import userns

BASE = 0x70000000


@pytest.mark.parametrize(("mode", "probe", "status", "fragment"), [
    ("off", None, "warn", "root in a sandbox is host root"),
    ("auto", None, "info", "not probed"),
    ("auto", {"active": True, "reason": None}, "ok",
     f"active, sandbox ids 0..65535 are host ids {BASE}..{BASE + 65535}"),
    ("auto", {"active": False, "reason": "no idmap"}, "warn",
     "not available (no idmap): sandboxes run without one"),
    ("on", {"active": False, "reason": "no idmap"}, "fail", "on, but no idmap: the daemon refuses"),
    ("sometimes", None, "fail", "unknown mode"),
])
def test_check_userns(mode: str, probe: dict[str, Any] | None, status: str,
                      fragment: str) -> None:
    c = C.check_userns(mode, BASE, probe)
    assert c.status == status and fragment in c.detail, c
    assert c.name == "user namespace"
    assert (c.fix != "") == (status in ("warn", "fail"))


@pytest.mark.parametrize(("security", "expected"), [
    ({}, ("auto", BASE)),
    ({"user_namespace": False}, ("off", BASE)),  # YAML's unquoted off
    ({"user_namespace": True, "userns_base": 100000}, ("on", 100000)),
    ({"user_namespace": "auto", "userns_base": "bad"}, ("auto", BASE)),
])
def test_userns_settings_from_raw_yaml(security: dict[str, Any],
                                       expected: tuple[str, int]) -> None:
    assert C.userns_settings({"security": security}) == expected


def test_id_map_line() -> None:
    assert userns.id_map(BASE) == f"0 {BASE} 65536\n"
    assert userns.DEFAULT_BASE == C.USERNS_DEFAULT_BASE == USERNS_DEFAULT_BASE == BASE
    assert userns.SIZE == USERNS_SIZE
