"""``imgbuilder bootstrap``: a python image from Debian packages, no registry, no Docker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgbuilder.bootstrap import mmdebstrap_command
from imgbuilder.store import Store
from tests.support.imagecli import assert_one_line_error, imgbuilder

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("require_root")]


def test_command_line() -> None:
    assert mmdebstrap_command("bookworm", ["python3", "git"], "http://deb.debian.org/debian") == [
        "mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", "--skip=output/dev",
        "--include=python3,git", "bookworm", "-", "http://deb.debian.org/debian"]


@pytest.mark.slow
def test_bootstrap_python_image(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = imgbuilder("bootstrap", "--name", "python", "--suite", "bookworm", "--include",
                      "python3", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    store = Store(data_dir)
    rec = store.get_image("python")
    assert rec.source == "bootstrap" and len(rec.layers) == 1
    assert rec.config["Cmd"] == ["/bin/bash"]
    assert any(e.startswith("PATH=") for e in rec.config["Env"])
    (layer,) = store.layer_paths(rec)
    assert os.path.islink(layer / "usr/bin/python3") or (layer / "usr/bin/python3").is_file()
    assert (layer / "bin").is_symlink() and (layer / "etc/debian_version").is_file()
    assert imgbuilder("validate", "python", data_dir=data_dir).returncode == 0


@pytest.mark.slow
def test_unknown_suite_is_one_line(tmp_path: Path) -> None:
    proc = imgbuilder("bootstrap", "--name", "x", "--suite", "no-such-suite", data_dir=tmp_path)
    assert_one_line_error(proc, "mmdebstrap failed")
    assert list((tmp_path / "layers").iterdir()) == []
