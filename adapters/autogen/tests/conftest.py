from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_lightning_testkit.adapters import fresh_adapters


@pytest.fixture(autouse=True)
def _fresh_adapters() -> Iterator[None]:
    """Every test starts with no adapter switched on or off, whatever the previous one did."""
    with fresh_adapters():
        yield
