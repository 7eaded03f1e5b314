"""Fixtures: the PostgreSQL server's URL, and a fresh schema per test, dropped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_lightning_testkit.services import require_postgres
from pg_schemas import SchemaFactory, drop_schemas


@pytest.fixture
def postgres_url() -> str:
    return require_postgres()


@pytest.fixture
def fresh_schema(postgres_url: str) -> Iterator[SchemaFactory]:
    factory = SchemaFactory(postgres_url)
    yield factory
    drop_schemas(postgres_url, factory.schemas)
