"""The Redis store against the core's conformance suite, unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from agent_lightning.store import LightningStore, open_store
from agent_lightning_redis import RedisLightningStore
from agent_lightning_testkit import StoreConformanceSuite


class TestRedisStore(StoreConformanceSuite):
    supports_multiprocess = True

    @pytest.fixture(autouse=True)
    def _urls(self, new_redis_url: Callable[[], str]) -> None:
        self.new_url = new_redis_url

    async def create_store(self) -> LightningStore:
        store = open_store(self.new_url())
        assert isinstance(store, RedisLightningStore)
        return store
