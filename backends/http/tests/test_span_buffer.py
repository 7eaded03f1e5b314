"""``add_span`` writes behind: outages, an event loop that ends, a span the store refuses late, backpressure.

Real parts only: an in-memory store served over HTTP by the project's store server, reached with the
HTTP client (whose ``add_span`` is the write-behind one every backend inherits).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from agent_lightning.errors import StoreUnavailable
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import AttemptedRollout, RolloutConfig, RolloutRequest
from agent_lightning_http import HttpLightningStore, StoreServer
from agent_lightning_testkit.conformance import make_span

LONG = RolloutConfig(lease_seconds=3600)


def _started(store: InMemoryLightningStore) -> AttemptedRollout:
    return asyncio.run(store.start_rollout(RolloutRequest(config=LONG), "w"))


def _stored(store: InMemoryLightningStore, rollout_id: str) -> list[int]:
    return [s.sequence_id for s in asyncio.run(store.query_spans(rollout_id))]


def test_spans_queued_while_the_server_is_down_are_kept_and_stored_once_it_is_back() -> None:
    backing = InMemoryLightningStore()
    item = _started(backing)
    server = StoreServer(backing).start()
    port = server.port
    client = HttpLightningStore(server.url, retry_timeout=0.2, connect_timeout=0.5)
    client.span_retry_seconds = 0.5

    async def main() -> None:
        await client.add_span(make_span(item.rollout_id, item.attempt_id, 1))  # the attempt is checked: written now
        server.stop()
        for seq in range(2, 41):
            await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))  # queued: nothing to wait for
        with pytest.raises(StoreUnavailable):
            await client.flush()
        assert client.unflushed_spans == 39, "the spans must stay queued, not be dropped"
        restarted = StoreServer(backing, port=port).start()
        try:
            await client.flush()
            assert client.unflushed_spans == 0
        finally:
            await client.close()
            restarted.stop()

    try:
        asyncio.run(main())
    finally:
        server.stop()
    assert _stored(backing, item.rollout_id) == list(range(1, 41))


def test_spans_queued_when_asyncio_run_ends_are_written_before_the_loop_closes() -> None:
    backing = InMemoryLightningStore()
    item = _started(backing)
    with StoreServer(backing) as server:
        client = HttpLightningStore(server.url)

        async def main() -> int:
            for seq in range(1, 101):  # fewer than yield_every: add_span itself never waits here
                await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))
            return client.unflushed_spans  # returns without flush or close

        assert asyncio.run(main()) > 0, "the test needs spans still queued when the loop ends"
        assert _stored(backing, item.rollout_id) == list(range(1, 101))
        assert client.unflushed_spans == 0

        async def later() -> None:  # the same store object on a new event loop still works
            await client.add_span(make_span(item.rollout_id, item.attempt_id, 101))
            await client.close()

        asyncio.run(later())
    assert _stored(backing, item.rollout_id)[-1] == 101


def test_a_span_the_store_refuses_at_write_time_is_reported_and_the_others_are_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's body limit is the one refusal a client cannot check beforehand."""
    backing = InMemoryLightningStore()
    item = _started(backing)
    with StoreServer(backing, max_body_bytes=20_000) as server:
        client = HttpLightningStore(server.url)

        async def main() -> None:
            await client.add_span(make_span(item.rollout_id, item.attempt_id, 1))
            for seq in range(2, 6):
                await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))
            huge = make_span(item.rollout_id, item.attempt_id, 6, attributes={"text": "x" * 50_000})
            await client.add_span(huge)  # accepted: nothing here knows the server's limit
            for seq in range(7, 10):
                await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))
            with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="limit"):
                await client.flush()
            assert huge.span_id in caplog.text
            await client.flush()  # reported once; nothing else is left
            await client.close()

        asyncio.run(main())
    assert _stored(backing, item.rollout_id) == [1, 2, 3, 4, 5, 7, 8, 9]


def test_add_span_waits_when_too_many_spans_are_queued() -> None:
    backing = InMemoryLightningStore()
    item = _started(backing)
    with StoreServer(backing) as server:
        client = HttpLightningStore(server.url)

        async def main() -> tuple[int, int, float]:
            await client.add_span(make_span(item.rollout_id, item.attempt_id, 0))
            buffer = client.__dict__["_span_buffer"]
            buffer.max_batch, buffer.max_pending = 50, 200
            most = 0
            began = time.monotonic()
            for seq in range(1, 2001):
                await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))
                most = max(most, client.unflushed_spans)
            await client.close()
            return most, buffer.batches, time.monotonic() - began

        most, batches, _ = asyncio.run(main())
    assert most <= 200, f"{most} spans were queued at once, over max_pending"
    assert batches >= 2000 // 50
    assert _stored(backing, item.rollout_id) == list(range(0, 2001))


def test_the_client_still_sends_spans_after_its_sending_task_was_cancelled_before_it_ran() -> None:
    """As when an event loop ends: asyncio.run cancels every task, some before they ever ran. Such a task
    used to stay recorded as the sender, so every later ``add_spans`` of that loop waited forever."""
    backing = InMemoryLightningStore()
    item = _started(backing)
    with StoreServer(backing) as server:
        client = HttpLightningStore(server.url)

        async def main() -> int:
            first = asyncio.create_task(client.add_spans([make_span(item.rollout_id, item.attempt_id, 1)]))
            await asyncio.sleep(0)  # `first` runs up to its wait; the task that would send it is created, not run
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task() and task is not first:
                    task.cancel()
            assert await asyncio.wait_for(first, timeout=10) == 1, "the waiting caller must be served, not left hanging"
            stored = await asyncio.wait_for(
                client.add_spans([make_span(item.rollout_id, item.attempt_id, 2)]), timeout=10
            )
            await client.close()
            return stored

        assert asyncio.run(main()) == 1
    assert _stored(backing, item.rollout_id) == [1, 2]


def test_a_span_sent_again_while_in_flight_when_the_loop_ends_is_stored_in_its_newer_version() -> None:
    backing = InMemoryLightningStore()
    item = _started(backing)
    with StoreServer(backing) as server:
        client = HttpLightningStore(server.url)

        async def main() -> None:
            await client.add_span(make_span(item.rollout_id, item.attempt_id, 1))
            second = make_span(item.rollout_id, item.attempt_id, 2, attributes={"v": 1})
            await client.add_span(second)  # starts the writer, which takes it and sends it
            for seq in range(3, 60):
                await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))
            await client.add_span(second.model_copy(update={"attributes": {"v": 2}}))
            # returns without flush: the writer is cancelled with one version in flight, the other queued

        asyncio.run(main())
    got = asyncio.run(backing.query_spans(item.rollout_id))
    assert [s.sequence_id for s in got] == list(range(1, 60))
    assert got[1].attributes == {"v": 2}


def test_close_during_an_outage_returns_promptly_and_says_how_many_spans_were_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backing = InMemoryLightningStore()
    item = _started(backing)
    server = StoreServer(backing).start()
    client = HttpLightningStore(server.url, retry_timeout=0.2, connect_timeout=0.5)
    client.close_flush_timeout = 1.0  # the writer alone would retry for span_retry_seconds (30 s)

    async def main() -> tuple[float, int]:
        await client.add_span(make_span(item.rollout_id, item.attempt_id, 1))
        server.stop()
        for seq in range(2, 41):
            await client.add_span(make_span(item.rollout_id, item.attempt_id, seq))
        buffer = client.__dict__["_span_buffer"]
        began = time.monotonic()
        with caplog.at_level(logging.ERROR):
            await client.close()
        took = time.monotonic() - began
        back = StoreServer(backing, port=server.port).start()
        try:
            await asyncio.sleep(4)  # a writer still retrying would now store what close reported as lost
        finally:
            back.stop()
        return took, buffer.refused

    took, refused = asyncio.run(main())
    assert took < 5
    assert refused == 0, "the writer must stop when the store closes, not report every span as refused"
    assert "39 span(s) added with add_span could not be stored" in caplog.text
    assert _stored(backing, item.rollout_id) == [1], "spans reported lost at close were written afterwards"
