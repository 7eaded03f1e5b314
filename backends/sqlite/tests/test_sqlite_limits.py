"""agent_lightning.limits on SQLite: refusals store nothing over HTTP; rows stored before a limit are read repaired."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from agent_lightning_sql.testing import deep_input_over_http, old_rows_scenario
from agent_lightning_sqlite import SqliteLightningStore


def test_a_600_deep_input_over_http_is_a_422_and_not_stored(tmp_path: Path) -> None:
    store = SqliteLightningStore(f"sqlite:///{tmp_path / 'runs.db'}").open()
    try:
        deep_input_over_http(store)
    finally:
        asyncio.run(store.close())


def test_rows_an_older_release_stored_are_read_repaired(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteLightningStore(f"sqlite:///{tmp_path / 'runs.db'}").open()

    async def main() -> list[str]:
        try:
            return await old_rows_scenario(store)
        finally:
            await store.close()

    with caplog.at_level(logging.WARNING, logger="agent_lightning.limits"):
        rollout_ids = asyncio.run(main())
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "agent_lightning.limits")
    assert all(rollout_id in warned for rollout_id in rollout_ids) and "nested more than" in warned
