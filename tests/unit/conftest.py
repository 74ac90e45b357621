"""Unit fixtures: no broker. The runtime's behaviour cases run on the in-memory transport."""

from __future__ import annotations

import pytest

from tests.support.harnesses import HarnessFactory, MemoryHarnesses


@pytest.fixture
def harness_factory() -> HarnessFactory:
    return MemoryHarnesses()
