"""The HTTP client against a real uvicorn server backed by the in-memory store passes the conformance suite."""

from __future__ import annotations

import asyncio

from agent_lightning.store import InMemoryLightningStore
from agent_lightning.store.base import LightningStore
from agent_lightning_http import HttpLightningStore, StoreServer
from agent_lightning_testkit import StoreConformanceSuite


class ServedStore(HttpLightningStore):
    """A client whose ``close`` also stops the server it was made with (one server per test)."""

    def __init__(self, server: StoreServer) -> None:
        super().__init__(server.url, retry_timeout=5.0)
        self.server = server

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(self.server.stop)


class TestHttpStoreConformance(StoreConformanceSuite):
    # Each call is an HTTP round trip: leave a loaded CI machine room inside a lease.
    short_lease = 1.0
    # Child processes open the server's URL with open_store: the http:// plugin is found through its entry point.
    supports_multiprocess = True
    # The server reaps by its own clock only: reap_expired(now=...) is refused.
    supports_explicit_clock = False

    async def create_store(self) -> LightningStore:
        server = await asyncio.to_thread(StoreServer(InMemoryLightningStore()).start)
        return ServedStore(server)
