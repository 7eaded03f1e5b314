"""The core's conformance suite, unchanged, against PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_lightning.store.base import LightningStore
from agent_lightning_postgres import PostgresLightningStore
from agent_lightning_testkit import StoreConformanceSuite
from pg_schemas import SchemaFactory


class TestPostgresStore(StoreConformanceSuite):
    supports_multiprocess = True
    _schemas: SchemaFactory

    @pytest.fixture(autouse=True)
    def _schema_per_test(self, fresh_schema: SchemaFactory) -> Iterator[None]:
        self._schemas = fresh_schema
        yield

    async def create_store(self) -> LightningStore:
        return PostgresLightningStore(self._schemas.url()).open()
