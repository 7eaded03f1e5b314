"""The in-memory store against the conformance suite, and the synchronous facade."""

from __future__ import annotations

import asyncio
import threading

import pytest
from agent_lightning.errors import LeaseLost, NotFound
from agent_lightning.store import InMemoryLightningStore, LightningStore, SyncStore, open_store
from agent_lightning.store.sync import EventLoopThread
from agent_lightning.testing import StoreConformanceSuite


class TestInMemoryStore(StoreConformanceSuite):
    async def create_store(self) -> LightningStore:
        return InMemoryLightningStore()


class TestMemoryUrlStore(StoreConformanceSuite):
    """``memory://`` opened through the plugin hook behaves the same."""

    async def create_store(self) -> LightningStore:
        store = open_store("memory://")
        assert isinstance(store, InMemoryLightningStore)
        return store


def test_suite_without_create_store_says_what_to_implement() -> None:
    class Incomplete(StoreConformanceSuite):
        pass

    with pytest.raises(NotImplementedError, match="create_store"):
        Incomplete().test_claim_takes_the_oldest_first_and_none_when_empty()


# ---------------------------------------------------------------------- SyncStore
def test_sync_store_runs_the_whole_lifecycle_without_an_event_loop() -> None:
    with SyncStore(InMemoryLightningStore()) as store:
        assert store.url == "memory://"
        rollout = store.enqueue_rollout({"question": "2+2"}, task_type="math")
        item = store.claim_rollout("worker-1")
        assert item is not None and item.rollout_id == rollout.rollout_id
        assert store.heartbeat(item.rollout_id, item.attempt_id).status == "running"
        done = store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        assert done.status == "succeeded"
        assert store.wait_for_rollouts([rollout.rollout_id], timeout=1) == [done]
        with pytest.raises(LeaseLost):
            store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        with pytest.raises(NotFound):
            store.get_rollout("no-such-rollout")
        assert store.run(store.store.get_rollout(rollout.rollout_id)) == done


def test_sync_store_close_closes_the_store_and_stops_its_loop() -> None:
    closed: list[bool] = []

    class Tracking(InMemoryLightningStore):
        async def close(self) -> None:
            closed.append(True)

    sync = SyncStore(Tracking())
    loop = sync._loop
    sync.close()
    assert closed == [True]
    assert loop.loop.is_closed()


def test_sync_stores_share_one_store_across_threads() -> None:
    inner = InMemoryLightningStore()
    shared_loop = EventLoopThread("shared")
    try:
        first = SyncStore(inner, loop_thread=shared_loop)
        second = SyncStore(inner, loop_thread=shared_loop)
        rollout = first.enqueue_rollout("x")
        assert second.get_rollout(rollout.rollout_id) == rollout
        first.close()  # a borrowed loop keeps running
        assert not shared_loop.loop.is_closed()
        assert second.get_rollout(rollout.rollout_id) == rollout
    finally:
        shared_loop.stop()
    assert shared_loop.loop.is_closed()


def test_sync_store_waits_across_threads() -> None:
    with SyncStore(InMemoryLightningStore()) as store:
        rollout = store.enqueue_rollout("x")

        def worker() -> None:
            with SyncStore(store.store) as own:  # closing the in-memory store is harmless
                item = own.claim_rollout("w")
                assert item is not None
                own.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")

        thread = threading.Timer(0.1, worker)
        thread.start()
        (done,) = store.wait_for_rollouts([rollout.rollout_id], timeout=5)
        thread.join()
        assert done.status == "succeeded"


def test_event_loop_thread_refuses_to_block_on_itself() -> None:
    loop = EventLoopThread("self")
    try:

        async def nested() -> None:
            inner = asyncio.sleep(0)
            try:
                loop.run(inner)
            finally:
                inner.close()

        with pytest.raises(RuntimeError, match="deadlock"):
            loop.run(nested(), timeout=5)
    finally:
        loop.stop()
