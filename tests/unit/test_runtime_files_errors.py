"""The runner's file requests report stable error codes, and the daemon maps those codes
(not the message text) to HTTP statuses."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from runner import protocol as p
from runner.files import ERRNO_CODES, FileOpError, Files
from sandkasten.api.routers.files import FILE_ERRORS, FileError, _fs
from sandkasten.runtime.linux.sandbox import RunnerError


def _files(tmp_path: Path) -> Files:
    return Files(os.geteuid(), os.getegid(), str(tmp_path))


def _write(tmp_path: Path, path: str) -> None:
    _files(tmp_path).write([p.FileSpec(path=path, data_b64=p.b64(b"x"), mode=0o644)])


@pytest.mark.parametrize(("setup", "op", "code"), [
    # a parent that is a regular file: makedirs reports EEXIST
    (lambda d: (d / "f").write_text("x"), lambda d: _write(d, "f/g"), "exists"),
    (None, lambda d: _write(d, "n" * 300), "name_too_long"),
    (lambda d: (d / "f").write_text("x"), lambda d: _files(d).list("f"), "not_a_directory"),
    (lambda d: (d / "sub").mkdir(), lambda d: _write(d, "sub"), "is_a_directory"),
    (None, lambda d: _files(d).read("missing", None), "not_found"),
    (None, lambda d: _files(d).list("missing"), "not_found"),
])
def test_file_errors_carry_codes(tmp_path, setup, op, code) -> None:
    if setup is not None:
        setup(tmp_path)
    with pytest.raises(FileOpError) as ei:
        op(tmp_path)
    assert ei.value.code == code, ei.value


def test_every_runner_code_has_an_api_status() -> None:
    assert set(ERRNO_CODES.values()) <= set(FILE_ERRORS)


@pytest.mark.parametrize(("code", "status", "api_code"), [
    ("exists", 409, "path_conflict"),
    ("name_too_long", 400, "invalid_path"),
    ("not_a_directory", 409, "path_conflict"),
    ("is_a_directory", 409, "path_conflict"),
    ("not_empty", 409, "path_conflict"),
    ("permission_denied", 403, "permission_denied"),
    ("no_space", 413, "no_space"),
    ("file_too_large", 413, "file_too_large"),
])
def test_daemon_maps_codes_not_text(code, status, api_code) -> None:
    async def failing() -> None:
        # the message is free text: nothing may depend on its wording
        raise RunnerError(code, "/workspace/x: something went wrong")

    with pytest.raises(FileError) as ei:
        asyncio.run(_fs(failing()))
    assert (ei.value.status, ei.value.code) == (status, api_code)


def test_io_error_stays_a_fault() -> None:
    async def failing() -> None:
        raise RunnerError("io_error", "/workspace/x: File exists")

    with pytest.raises(RunnerError) as ei:
        asyncio.run(_fs(failing()))
    assert ei.value.status == 500
