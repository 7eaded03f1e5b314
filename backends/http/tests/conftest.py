"""Fixtures the store server's tests share."""

from __future__ import annotations

import pytest
from agent_lightning.store import InMemoryLightningStore


@pytest.fixture
def store() -> InMemoryLightningStore:
    """The in-memory store a test's server serves."""
    return InMemoryLightningStore()
