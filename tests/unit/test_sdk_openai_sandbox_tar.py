"""persist_workspace leaves out the paths the Agents SDK asks to skip (ephemeral mounts)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from sandkasten.sdk.openai_sandbox import _filter_tar


def make_tar(names: list[str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return out.getvalue()


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name.removeprefix("./").rstrip("/") or "." for m in tar.getmembers()]


@pytest.mark.parametrize(("skip", "kept"), [
    (set(), [".", "a.txt", "mnt", "mnt/data/x", "mnted.txt", ".cache", ".cache/x"]),
    ({Path("mnt")}, [".", "a.txt", "mnted.txt", ".cache", ".cache/x"]),
    ({Path("mnt/data")}, [".", "a.txt", "mnt", "mnted.txt", ".cache", ".cache/x"]),
    ({Path("a.txt"), Path("mnted.txt")}, [".", "mnt", "mnt/data/x", ".cache", ".cache/x"]),
    ({Path(".cache")}, [".", "a.txt", "mnt", "mnt/data/x", "mnted.txt"]),
])
def test_filter_tar(skip: set[Path], kept: list[str]) -> None:
    src = make_tar(["./", "./a.txt", "./mnt/", "./mnt/data/x", "./mnted.txt", "./.cache/",
                    "./.cache/x"])
    assert names(_filter_tar(src, skip)) == kept
