"""sandkasten-wsl's pure parts: UTF-16 output of wsl.exe, WSL detection, the config's port."""

from __future__ import annotations

import pytest

from sandkasten.wsl import decode_wsl_output, in_wsl, parse_distro_list, port_from_config, wsl_argv


@pytest.mark.parametrize(("raw", "want"), [
    ("Ubuntu-22.04\r\nDebian\r\n".encode("utf-16-le"), ["Ubuntu-22.04", "Debian"]),
    (b"\xff\xfe" + "Ubuntu\r\n".encode("utf-16-le"), ["Ubuntu"]),
    (b"Ubuntu\nkali-linux\n", ["Ubuntu", "kali-linux"]),
    ("\r\n".encode("utf-16-le"), []),
    (b"", []),
])
def test_parse_distro_list(raw: bytes, want: list[str]) -> None:
    assert parse_distro_list(raw) == want


def test_linux_output_stays_utf8() -> None:
    assert decode_wsl_output("/usr/local/bin/sandkasten ä\n".encode()) == \
        "/usr/local/bin/sandkasten ä\n"


@pytest.mark.parametrize(("env", "osrelease", "want"), [
    ({"WSL_DISTRO_NAME": "Ubuntu"}, "", True),
    ({"WSL_INTEROP": "/run/WSL/1_interop"}, "", True),
    ({}, "5.15.153.1-microsoft-standard-WSL2", True),
    ({}, "6.18.44-generic", False),
    ({}, "10.0.22631", False),
])
def test_in_wsl(env: dict[str, str], osrelease: str, want: bool) -> None:
    assert in_wsl(env, osrelease) is want


@pytest.mark.parametrize(("text", "port"), [
    ('listen: "127.0.0.1:8080"\n', 8080),
    ("listen: 0.0.0.0:9090  # all interfaces\n", 9090),
    ("api_key: x\nlisten: '[::1]:7000'\n", 7000),
    ('listen: "127.0.0.1"\n', None),
    ("data_dir: /var/lib/sandkasten\n", None),
    ('  listen: "127.0.0.1:1"\n', None),  # nested key, not the top-level listen
])
def test_port_from_config(text: str, port: int | None) -> None:
    assert port_from_config(text) == port


def test_wsl_argv() -> None:
    assert wsl_argv("wsl", None, ["sudo", "sandkasten", "stop"]) == \
        ["wsl", "--", "sudo", "sandkasten", "stop"]
    assert wsl_argv("wsl", "Ubuntu-22.04", ["x"]) == ["wsl", "-d", "Ubuntu-22.04", "--", "x"]
