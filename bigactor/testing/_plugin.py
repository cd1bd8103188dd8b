"""pytest plugin (entry point ``pytest11``): trio fixtures for testing actors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .._cluster import Cluster
from .._open import open_cluster
from ._system import TestSystem


@pytest.fixture
def test_system() -> TestSystem:
    """A fresh in-process TestSystem (default keepalives)."""
    return TestSystem()


@pytest.fixture
async def cluster(test_system: TestSystem) -> AsyncIterator[Cluster]:
    """A cluster on ``test_system``, closed after the test."""
    async with open_cluster(test_system) as c:
        yield c
