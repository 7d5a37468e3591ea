"""Hostile layers: every escape attempt is refused and nothing outside the data dir changes.

Each archive is imported with the real ``imgbuilder import`` command into a data directory
that sits next to a directory of "host" files (a secret, a directory, a symlink target).
After each attempt: one ``error:`` line, the host files byte-for-byte unchanged, no layer
and no ``.tmp-*`` directory left in the store.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.imagecli import assert_one_line_error, imgbuilder
from tests.support.images import TarBuilder, compress
from tests.support.treecmp import snapshot

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("require_root")]


def _host(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc/shadow").write_text("root:secret\n")
    (host / "bin").mkdir()
    (host / "bin/sh").write_text("#!real shell\n")
    return host


Build = Callable[[TarBuilder, Path], None]

HOSTILE: dict[str, tuple[Build, str]] = {
    "traversal": (lambda b, h: b.file("../host/etc/shadow", b"owned"), "traversal"),
    "deep traversal": (lambda b, h: b.dir("a").file("a/../../../host/x", b"x"), "traversal"),
    "absolute": (lambda b, h: b.file(str(h / "etc/shadow"), b"owned"), "absolute"),
    "symlink then write through": (
        lambda b, h: b.symlink("etc", str(h / "etc")).file("etc/shadow", b"owned"),
        "symlink"),
    "relative symlink then write through": (
        lambda b, h: b.dir("a").symlink("a/up", "../../../host/etc").file("a/up/shadow", b"o"),
        "symlink"),
    "symlink then mkdir through": (
        lambda b, h: b.symlink("l", str(h)).dir("l/newdir"), "symlink"),
    "symlink then hardlink through": (
        lambda b, h: b.symlink("l", str(h / "etc")).hardlink("stolen", "l/shadow"), "symlink"),
    "hardlink escape": (lambda b, h: b.hardlink("stolen", "../host/etc/shadow"), "traversal"),
    "absolute hardlink": (lambda b, h: b.hardlink("stolen", str(h / "etc/shadow")), "absolute"),
    "whiteout escape": (lambda b, h: b.file("../host/etc/.wh.shadow"), "traversal"),
    "whiteout through symlink": (
        lambda b, h: b.symlink("l", str(h / "etc")).whiteout("l/shadow"), "symlink"),
    "opaque through symlink": (
        lambda b, h: b.symlink("l", str(h / "bin")).opaque("l"), "symlink"),
    "device node escape": (
        lambda b, h: b.device("../host/bin/sh", tarfile.CHRTYPE, 1, 3), "traversal"),
    "device through symlink": (
        lambda b, h: b.symlink("d", str(h / "bin")).device("d/sh", tarfile.CHRTYPE, 1, 1),
        "symlink"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("kind", ["none", "gzip"])
def test_hostile_layer_changes_nothing_outside(tmp_path: Path, case: str, kind: str) -> None:
    host = _host(tmp_path)
    before = snapshot(host, mtime=True)
    data_dir = tmp_path / "data"
    build, why = HOSTILE[case]
    b = TarBuilder()
    b.dir("etc").file("etc/ok", b"fine")
    build(b, host)
    tarball = tmp_path / "evil.tar"
    tarball.write_bytes(compress(b.bytes(), kind))
    proc = imgbuilder("import", "--name", "evil", "--tar", tarball, data_dir=data_dir)
    assert_one_line_error(proc, why)
    assert snapshot(host, mtime=True) == before
    assert [p.name for p in (data_dir / "layers").iterdir()] == []
    assert not (data_dir / "images/evil.json").exists()


def test_device_nodes_are_created_inside_never_written(tmp_path: Path) -> None:
    """A layer may ship device nodes (as images do); they stay nodes inside the layer.

    A later regular file of the same name replaces the node instead of writing into the
    device, and a fifo is never opened (which would block the import).
    """
    data_dir = tmp_path / "data"
    b = TarBuilder().device("dev/mem", tarfile.CHRTYPE, 1, 1).device("dev/sda", tarfile.BLKTYPE,
                                                                      8, 0)
    b.fifo("pipe").device("zero", tarfile.CHRTYPE, 1, 5)
    b.file("pipe", b"not into the fifo").file("zero", b"not into /dev/zero")
    tarball = tmp_path / "dev.tar"
    tarball.write_bytes(b.bytes())
    proc = imgbuilder("import", "--name", "dev", "--tar", tarball, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    (layer,) = [p for p in (data_dir / "layers").iterdir()]
    assert (layer / "pipe").read_bytes() == b"not into the fifo"
    assert (layer / "zero").read_bytes() == b"not into /dev/zero"
    assert (layer / "dev/mem").is_char_device() and (layer / "dev/sda").is_block_device()
