"""Whiteout classification and name normalization: a pure table of cases."""

from __future__ import annotations

import pytest

from imgbuilder.errors import LayerError
from imgbuilder.whiteout import Member, classify, split_name

CASES = [
    ("etc/passwd", Member("entry", ("etc", "passwd"))),
    ("./etc/passwd", Member("entry", ("etc", "passwd"))),
    ("etc//ssl/./certs/", Member("entry", ("etc", "ssl", "certs"))),
    ("./", Member("entry", ())),
    (".", Member("entry", ())),
    ("etc/.wh.passwd", Member("whiteout", ("etc", "passwd"))),
    (".wh.etc", Member("whiteout", ("etc",))),
    ("./a/b/.wh..hidden", Member("whiteout", ("a", "b", ".hidden"))),
    ("usr/.wh..wh..opq", Member("opaque", ("usr",))),
    (".wh..wh..opq", Member("opaque", ())),
    ("usr/.wh..wh.plnk", Member("ignore", ("usr", ".wh..wh.plnk"))),
    (".wh..wh.aufs", Member("ignore", (".wh..wh.aufs",))),
    ("a/not.wh.x", Member("entry", ("a", "not.wh.x"))),
    ("a/..b", Member("entry", ("a", "..b"))),
    ("a/b..", Member("entry", ("a", "b.."))),
]


@pytest.mark.parametrize(("name", "expected"), CASES)
def test_classify(name: str, expected: Member) -> None:
    assert classify(name) == expected


BAD = [
    ("/etc/passwd", "absolute"),
    ("../etc/passwd", "traversal"),
    ("a/../../b", "traversal"),
    ("a/..", "traversal"),
    ("a/.wh...", "whiteout"),
    ("a/.wh..", "whiteout"),
    ("a/.wh.", "whiteout"),
    ("../.wh.x", "traversal"),
    ("/.wh..wh..opq", "absolute"),
    ("a/\x00b", "NUL"),
]


@pytest.mark.parametrize(("name", "why"), BAD)
def test_refused(name: str, why: str) -> None:
    with pytest.raises(LayerError, match=why):
        classify(name)


def test_split_name_keeps_unusual_but_safe_names() -> None:
    assert split_name("a/ b /c d") == ("a", " b ", "c d")
    assert split_name("a/\udcff") == ("a", "\udcff")
