"""Property-based API testing: schemathesis generates requests from /openapi.json (examples,
coverage, fuzzing and stateful phases) against the real daemon and checks every response:
no 500, no undocumented status, content type, header or body; schema-valid requests are
accepted and schema-violating ones refused.

Bounded (5 examples per operation, fixed seed) to stay under a minute. The tar import
(PUT …/archive) is left out: any byte string is schema-valid there but only a tar is a
valid archive; tests/integration/test_daemon_http.py covers it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, daemon, daemon_factory, image_store

__all__ = ["daemon", "daemon_factory", "image_store"]

pytestmark = [pytest.mark.integration, pytest.mark.privileged, pytest.mark.slow]


def test_schemathesis_finds_no_failure(daemon: DaemonProcess, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "schemathesis"
    r = subprocess.run(
        [str(st), "run", f"{daemon.base_url}/openapi.json",
         "-H", f"Authorization: Bearer {daemon.api_key}",
         "--max-examples", "5", "--seed", "1", "--exclude-method", "PUT",
         "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    report = r.stdout + r.stderr
    (tmp_path / "schemathesis.txt").write_text(report)
    assert r.returncode == 0, report[:8000] + "\n--- daemon log ---\n" + daemon.log()[-8000:]
    assert "Server error" not in report
    assert "ERROR internal error" not in daemon.log()
