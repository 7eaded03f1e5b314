"""Faults: the server gone, and the server restarted while a runner writes (no acknowledged span is lost).

The SIGKILLed server process over a durable database is tested by the SQLite and PostgreSQL packages with the
same scenario (``agent_lightning_testkit.server_faults``).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from agent_lightning.errors import StoreUnavailable
from agent_lightning.store import InMemoryLightningStore
from agent_lightning_http import HttpLightningStore, StoreServer
from agent_lightning_testkit.server_faults import (
    check_nothing_acknowledged_was_lost,
    free_port,
    restart_while_writing,
)


# ---------------------------------------------------------------------- server gone
@pytest.mark.parametrize("how", ["never started", "stopped"])
def test_an_unreachable_server_raises_store_unavailable_in_bounded_time(how: str) -> None:
    if how == "never started":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        server = StoreServer(InMemoryLightningStore()).start()
        url = server.url

    async def main() -> tuple[float, StoreUnavailable]:
        client = HttpLightningStore(url, retry_timeout=1.0, connect_timeout=1.0)
        if how == "stopped":
            await client.enqueue_rollout("before the outage")
            await asyncio.to_thread(server.stop)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await client.claim_rollout("w")
        elapsed = time.monotonic() - began
        await client.close()
        return elapsed, info.value

    elapsed, error = asyncio.run(main())
    assert elapsed < 4.0, f"gave up only after {elapsed:.1f}s"
    assert f"store server at {url} is not reachable" in str(error)
    assert "claim_rollout" in str(error) and "tries" in str(error)


# ---------------------------------------------------------------------- a runner writing through restarts
def test_restarting_the_http_layer_loses_no_acknowledged_write() -> None:
    """The store object survives; its HTTP server is stopped and started again on the same port, twice."""
    store = InMemoryLightningStore()
    server = StoreServer(store).start()
    port = server.port

    def restart() -> None:
        nonlocal server
        server.stop()
        time.sleep(0.2)
        server = StoreServer(store, port=port).start()

    try:
        progress = restart_while_writing(server.url, restart, restarts=2)
        assert progress.cycles >= 9 and progress.completed
        asyncio.run(check_nothing_acknowledged_was_lost(server.url, progress))
    finally:
        server.stop()
