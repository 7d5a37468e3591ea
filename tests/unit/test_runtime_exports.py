"""Parsing a shell's ``export -p`` dump (what split execs start with)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from runner.exports import END_LINE, parse_exports


def dump(body: str) -> str:
    return body + END_LINE + "\n"


@pytest.mark.parametrize(("text", "env"), [
    ('declare -x A="1"\ndeclare -x B="two words"\n', {"A": "1", "B": "two words"}),
    ('declare -x Q="x\\$y\\`z\\"w\\\\v"\n', {"Q": 'x$y`z"w\\v'}),
    ("declare -x C=$'multi\\nline\\ttab\\x41\\u00e9\\\\\\''\n", {"C": "multi\nline\ttabAé\\'"}),
    ('declare -x M="multi\nline"\n', {"M": "multi\nline"}),
    ("declare -x UNSET\ndeclare -x E=\"\"\n", {"E": ""}),
    ("export A='it'\"'\"'s'\nexport B='$x \"y\"'\n", {"A": "it's", "B": '$x "y"'}),
    ("export M='multi\nline'\n", {"M": "multi\nline"}),
    ('export A="posix mode"\n', {"A": "posix mode"}),
    ("", {}),
])
def test_formats(text: str, env: dict[str, str]) -> None:
    assert parse_exports(dump(text)) == env


@pytest.mark.parametrize("text", [
    'declare -x A="1"\n',                        # no end line: a write cut short
    dump('declare -x A="unterminated\n'),
    dump("export A='unterminated\n"),
    dump("declare -x A=$'unterminated\n"),
    dump("rm -rf /\n"),                         # not an export statement
    dump('declare -x A="1"\n') + "trailing\n",
])
def test_incomplete_or_foreign_dumps_are_rejected(text: str) -> None:
    assert parse_exports(text) is None


@pytest.mark.parametrize("shell", ["bash", "dash", "busybox"])
def test_real_shells_round_trip(shell: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    value = "a b\n'q' \"d\" $x `y` \\z é"
    script = f"export -p; echo '{END_LINE}'"
    out = subprocess.run([*argv, "-c", script], env={"V": value, "EMPTY": ""},
                         capture_output=True, text=True, check=True).stdout
    env = parse_exports(out)
    assert env is not None
    assert env["V"] == value and env["EMPTY"] == ""
