"""agent_lightning.limits on PostgreSQL: refusals store nothing (over HTTP too), long ids are a clear ValueError, and
rows stored before a limit are read repaired."""

from __future__ import annotations

import asyncio
import logging

import pytest
from agent_lightning.types import RolloutRequest
from agent_lightning_postgres import PostgresLightningStore
from agent_lightning_sql.testing import deep_input_over_http, old_rows_scenario
from pg_schemas import SchemaFactory


def test_a_600_deep_input_over_http_is_a_422_and_not_stored(fresh_schema: SchemaFactory) -> None:
    store = PostgresLightningStore(fresh_schema.url()).open()
    try:
        deep_input_over_http(store)
    finally:
        asyncio.run(store.close())


def test_a_260_kb_rollout_id_is_a_value_error_naming_the_limit(fresh_schema: SchemaFactory) -> None:
    store = PostgresLightningStore(fresh_schema.url()).open()

    async def main() -> None:
        try:
            with pytest.raises(ValueError, match="limited to 256 characters"):
                await store.enqueue_rollouts([RolloutRequest(rollout_id="r" * 260_000)])
            with pytest.raises(ValueError, match="limited to 256 characters"):
                await store.start_rollout(RolloutRequest(rollout_id="r" * 260_000), "w")
            assert await store.query_rollouts() == []
        finally:
            await store.close()

    asyncio.run(main())


def test_rows_an_older_release_stored_are_read_repaired(
    fresh_schema: SchemaFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresLightningStore(fresh_schema.url()).open()

    async def main() -> list[str]:
        try:
            return await old_rows_scenario(store, json_cast="CAST({} AS json)")
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="agent_lightning.limits"):
        rollout_ids = asyncio.run(main())
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "agent_lightning.limits")
    assert all(rollout_id in warned for rollout_id in rollout_ids) and "nested more than" in warned
