"""Property-based API testing: schemathesis generates requests from /openapi.json and checks
every response against the schema. No 500, no undocumented status, content type or body.

The run is bounded (a few examples per operation) so it stays well under a minute; the
daemon is the real one, on the real runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.support.daemon import DaemonProcess, daemon, daemon_factory, image_store

__all__ = ["daemon", "daemon_factory", "image_store"]

pytestmark = [pytest.mark.integration, pytest.mark.privileged]


@pytest.fixture
def api_schema(daemon: DaemonProcess) -> Iterator[Any]:
    schema = schemathesis.openapi.from_url(f"{daemon.base_url}/openapi.json")
    schema.config.headers = daemon.headers  # type: ignore[attr-defined]
    yield schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_response_matches_the_schema(case: Any, daemon: DaemonProcess) -> None:
    case.headers = {**(case.headers or {}), **daemon.headers}
    case.call_and_validate(base_url=daemon.base_url, timeout=30)
