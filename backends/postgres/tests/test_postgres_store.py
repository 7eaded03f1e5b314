"""PostgreSQL specifics: discovery by scheme, unreachable server, schema versions, SKIP LOCKED, NOTIFY, faults."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from agent_lightning.errors import StoreUnavailable
from agent_lightning.store import open_store, store_schemes
from agent_lightning.types import RolloutConfig, RolloutRequest, new_span_id
from agent_lightning_postgres import PostgresLightningStore, parse_postgres_url
from agent_lightning_sql import SCHEMA_VERSION, SchemaTooNew
from agent_lightning_sql.testing import sigkill_scenario
from agent_lightning_testkit.conformance import make_span
from agent_lightning_testkit.server_faults import killed_server_loses_no_acknowledged_write
from pg_schemas import SchemaFactory

LONG = RolloutConfig(lease_seconds=3600)


def _schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def test_url_forms() -> None:
    url, schema = parse_postgres_url("postgres://me:pw@db.example:6543/runs?schema=exp_1&sslmode=disable")
    assert (url.drivername, url.host, url.port, url.database, url.username) == (
        "postgresql+psycopg",
        "db.example",
        6543,
        "runs",
        "me",
    )
    assert schema == "exp_1" and dict(url.query) == {"sslmode": "disable"}
    assert parse_postgres_url("postgresql+psycopg://h/db")[1] is None
    with pytest.raises(ValueError, match="plain identifier"):
        parse_postgres_url("postgresql://h/db?schema=x;drop")
    with pytest.raises(ValueError, match="postgresql://"):
        parse_postgres_url("mysql://h/db")


def test_every_scheme_is_discovered_through_the_entry_point(fresh_schema: SchemaFactory) -> None:
    assert {"postgresql", "postgres", "postgresql+psycopg"} <= set(store_schemes())
    url = fresh_schema.url()
    rest = url.split("://", 1)[1]
    first = open_store(f"postgres://{rest}")
    try:
        assert isinstance(first, PostgresLightningStore)
        rollout = asyncio.run(first.enqueue_rollout({"q": 1}))
    finally:
        asyncio.run(first.close())
    for scheme in ("postgresql", "postgresql+psycopg"):
        store = open_store(f"{scheme}://{rest}")
        try:
            assert asyncio.run(store.get_rollout(rollout.rollout_id)) == rollout
        finally:
            asyncio.run(store.close())
    with pytest.raises(ValueError, match="pool_size"):
        open_store(url, pool=3)


def test_unreachable_server_raises_store_unavailable_naming_the_redacted_url() -> None:
    url = "postgresql://agl:s3cret@127.0.0.1:1/test"
    with pytest.raises(StoreUnavailable) as info:
        open_store(url, connect_timeout=2)
    message = str(info.value)
    assert "postgresql://agl:***@127.0.0.1:1/test" in message and "s3cret" not in message
    assert "server is running" in message and "Traceback" not in message
    lazy = PostgresLightningStore(url, connect_timeout=2)  # not opened: the first call reports it
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
        asyncio.run(lazy.claim_rollout("w"))


def test_schema_is_created_on_first_use_and_versioned(fresh_schema: SchemaFactory, postgres_url: str) -> None:
    url = fresh_schema.url()
    schema = _schema_of(url)
    store = PostgresLightningStore(url)
    asyncio.run(store.enqueue_rollout("first use creates the tables"))
    asyncio.run(store.close())
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        version = conn.execute(f'SELECT version FROM "{schema}".agl_schema_version').fetchone()
        assert version == (SCHEMA_VERSION,)
        conn.execute(f'UPDATE "{schema}".agl_schema_version SET version = %s', (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade") as info:
        open_store(url)
    assert schema in str(info.value)


def test_claims_skip_rows_locked_by_another_transaction(fresh_schema: SchemaFactory, postgres_url: str) -> None:
    url = fresh_schema.url()

    async def main() -> None:
        store = PostgresLightningStore(url)
        try:
            first, second = await store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)])
            with psycopg.connect(postgres_url) as other:  # a claimer in the middle of its transaction
                other.execute(f"SET search_path = {_schema_of(url)}")
                other.execute("SELECT 1 FROM agl_rollouts WHERE rollout_id = %s FOR UPDATE", (first.rollout_id,))
                began = time.monotonic()
                item = await asyncio.wait_for(store.claim_rollout("w"), 5)
                assert time.monotonic() - began < 2, "the claim waited for the locked row instead of skipping it"
                assert item is not None and item.rollout_id == second.rollout_id
            item = await store.claim_rollout("w")
            assert item is not None and item.rollout_id == first.rollout_id
        finally:
            await store.close()

    asyncio.run(main())


def test_waiters_are_woken_by_notify_from_another_store(fresh_schema: SchemaFactory) -> None:
    """A change made through another connection pool (another process, in effect) wakes a waiter at once."""
    url = fresh_schema.url()

    async def main() -> None:
        waiter, writer = PostgresLightningStore(url), PostgresLightningStore(url)
        try:
            await waiter.subscribe("trainer")
            rollout = await writer.enqueue_rollout("x", config=LONG)
            pulling = asyncio.create_task(waiter.pull_completed("trainer", timeout=10))
            waiting = asyncio.create_task(waiter.wait_for_rollouts([rollout.rollout_id], timeout=10))
            for _ in range(50):  # until the LISTEN connection is up
                await asyncio.sleep(0.05)
                if waiter._listener.healthy:
                    break
            assert waiter._listener.healthy, "the LISTEN connection did not come up"
            await asyncio.sleep(waiter.max_wait + 0.2)  # past a poll: only a notification wakes them now
            item = await writer.claim_rollout("w")
            assert item is not None
            finished_at = time.monotonic()
            await writer.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
            pulled, (done,) = await asyncio.gather(pulling, waiting)
            latency = time.monotonic() - finished_at
            assert [r.rollout_id for r in pulled] == [rollout.rollout_id] and done.status == "succeeded"
            assert latency < waiter.max_wait / 2, f"woken after {latency:.2f}s: polled, not notified"
        finally:
            await waiter.close()
            await writer.close()

    asyncio.run(main())


def test_malformed_payloads_are_rejected_and_nothing_is_stored(fresh_schema: SchemaFactory) -> None:
    url = fresh_schema.url()

    async def main() -> None:
        store = PostgresLightningStore(url)
        try:
            unchecked = RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "input": {"x": float("nan")}})
            with pytest.raises(ValueError, match="input.x is nan"):
                await store.enqueue_rollouts([RolloutRequest(input="ok"), unchecked])
            item = await store.start_rollout(RolloutRequest(config=LONG), "w")
            good = make_span(item.rollout_id, item.attempt_id, 1, name="ok")
            nul = good.model_copy(update={"span_id": new_span_id(), "sequence_id": 2, "name": "bad\x00name"})
            with pytest.raises(ValueError, match="rejected the data"):
                await store.add_spans([good, nul])  # PostgreSQL text cannot hold NUL: the whole batch is refused
            assert await store.query_spans(item.rollout_id) == []
            assert [r.rollout_id for r in await store.query_rollouts()] == [item.rollout_id]
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.slow
def test_sigkilled_runners_lose_their_lease_and_the_rollout_fails_after_max_attempts(
    fresh_schema: SchemaFactory,
) -> None:
    sigkill_scenario(fresh_schema.url(), lease=1.0, max_attempts=2)


def test_a_killed_store_server_over_postgres_loses_no_acknowledged_write(fresh_schema: SchemaFactory) -> None:
    """`agl store serve` over PostgreSQL, SIGKILLed twice mid-write and restarted: every acked span is there."""
    progress = killed_server_loses_no_acknowledged_write(fresh_schema.url())
    assert progress.cycles >= 9 and progress.completed


def test_connections_killed_while_pooled_are_replaced_without_an_error(
    fresh_schema: SchemaFactory, postgres_url: str
) -> None:
    """No ping before each use: a pooled connection the server dropped (a restart) fails its first
    statement, the pool is refreshed and the call runs again, since nothing was committed."""
    name = f"agl_test_{new_span_id()}"  # only this store's connections are killed
    url = f"{fresh_schema.url()}&application_name={name}"

    def kill_store_connections() -> int:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (name,),
            ).fetchall()
        return len(rows)

    async def main() -> None:
        store = PostgresLightningStore(url)
        try:
            item = await store.start_rollout(RolloutRequest(config=LONG), "w")
            queued = await store.enqueue_rollout("next", config=LONG)
            span = make_span(item.rollout_id, item.attempt_id, 1, name="op")
            assert kill_store_connections() >= 1
            assert await store.add_spans([span]) == 1  # idempotent: retried on a fresh connection
            assert kill_store_connections() >= 1
            claimed = await store.claim_rollout("w2")  # failed before its commit: retried
            assert claimed is not None and claimed.rollout_id == queued.rollout_id
            assert kill_store_connections() >= 1
            assert await store.query_spans(item.rollout_id) == [span]
        finally:
            await store.close()

    asyncio.run(main())
