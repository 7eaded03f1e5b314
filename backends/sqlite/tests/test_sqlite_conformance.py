"""The core's conformance suite, unchanged, against SQLite files and an in-memory SQLite database."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from agent_lightning.store.base import LightningStore
from agent_lightning_sqlite import SqliteLightningStore
from agent_lightning_testkit import StoreConformanceSuite

_ROOT = Path(tempfile.mkdtemp(prefix="agl-sqlite-conformance-"))


class TestSqliteFileStore(StoreConformanceSuite):
    supports_multiprocess = True

    async def create_store(self) -> LightningStore:
        return SqliteLightningStore(f"sqlite:///{_ROOT / uuid.uuid4().hex}.db").open()


class TestSqliteMemoryStore(StoreConformanceSuite):
    async def create_store(self) -> LightningStore:
        return SqliteLightningStore("sqlite:///:memory:").open()
