"""Shared fixtures. Fixtures that need root or a kernel feature skip with that reason."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.registry import REGISTRY_BIN, LocalRegistry


def _require_registry() -> None:
    if not os.path.exists(REGISTRY_BIN):
        pytest.fail(f"{REGISTRY_BIN} is missing: run scripts/deps.sh (apt docker-registry)")


@pytest.fixture(scope="session")
def registry() -> Iterator[LocalRegistry]:
    """A real, anonymous docker-registry on 127.0.0.1 for the whole test session."""
    _require_registry()
    reg = LocalRegistry().start()
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[LocalRegistry]:
    """A real docker-registry that requires basic auth (user ``tester``, password ``s3cret``)."""
    _require_registry()
    reg = LocalRegistry(users={"tester": "s3cret"}).start()
    yield reg
    reg.close()


@pytest.fixture
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, overlayfs mounts and cgroups")
