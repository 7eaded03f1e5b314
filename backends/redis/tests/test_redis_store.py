"""Redis-specific behaviour: crashed trainers, claims across processes, URLs, faults, key isolation."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
from collections import Counter
from typing import Any

import pytest
import redis
from agent_lightning.errors import InvalidTransition, StoreError, StoreUnavailable
from agent_lightning.store import SyncStore, open_store
from agent_lightning.types import RolloutConfig, RolloutRequest
from agent_lightning_redis import RedisLightningStore
from agent_lightning_redis.url import parse_url, redact

LONG = RolloutConfig(lease_seconds=3600)


def _crashing_trainer(url: str, group: str, ready: Any) -> None:
    """Pull finished rollouts, then die without acknowledging them (no cleanup, no ack)."""

    async def main() -> list[str]:
        store = open_store(url)
        got = await store.pull_completed(group, consumer="doomed", visibility_timeout=1.0, timeout=5)
        return [r.rollout_id for r in got]

    ready.put(asyncio.run(main()))
    ready.close()
    ready.join_thread()  # flush the result to the parent before dying
    os._exit(1)  # a crash: the process is gone, its deliveries are never acknowledged


def test_a_crashed_trainers_deliveries_go_to_another_trainer(redis_url: str) -> None:
    with SyncStore(open_store(redis_url)) as store:
        store.subscribe("trainers")
        store.subscribe("math-only", task_types=["math"])
        finished = []
        for task_type in ("math", "code", "math"):
            started = store.start_rollout(RolloutRequest(task_type=task_type, config=LONG), "w")
            finished.append(store.complete_attempt(started.rollout_id, started.attempt_id, "succeeded").rollout_id)

        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        child = context.Process(target=_crashing_trainer, args=(redis_url, "trainers", ready))
        child.start()
        taken = ready.get(timeout=30)
        child.join(timeout=10)
        assert child.exitcode == 1
        assert sorted(taken) == sorted(finished), "the doomed trainer took everything"

        assert store.pull_completed("trainers", consumer="survivor") == [], "still invisible before the timeout"
        began = time.monotonic()
        redelivered = store.pull_completed("trainers", consumer="survivor", timeout=5)
        assert 0.3 < time.monotonic() - began < 5
        assert sorted(r.rollout_id for r in redelivered) == sorted(finished)
        assert all(r.status == "succeeded" for r in redelivered)
        assert store.ack_completed("trainers", [r.rollout_id for r in redelivered]) == 3
        time.sleep(1.2)
        assert store.pull_completed("trainers", consumer="survivor") == [], "acknowledged: never again"

        # Another group was untouched by the crash and gets its own copy of the math rollouts, once.
        math = store.pull_completed("math-only", consumer="m")
        assert sorted(r.rollout_id for r in math) == sorted([finished[0], finished[2]])
        assert store.pull_completed("math-only", consumer="m2") == []


def _claimer(url: str, worker: str, task_types: list[str] | None, barrier: Any, results: Any) -> None:
    async def main() -> list[tuple[str, str]]:
        store = open_store(url)
        claimed = []
        barrier.wait()
        while (item := await store.claim_rollout(worker, task_types=task_types)) is not None:
            claimed.append((item.rollout_id, item.rollout.task_type))
            await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        await store.close()
        return claimed

    results.put((worker, asyncio.run(main())))


def test_processes_with_task_type_filters_claim_each_rollout_once(redis_url: str) -> None:
    with SyncStore(open_store(redis_url)) as store:
        requests = [RolloutRequest(input=i, task_type=("a", "b", "c")[i % 3], config=LONG) for i in range(300)]
        rollouts = store.enqueue_rollouts(requests)
    context = multiprocessing.get_context("spawn")
    plans: list[list[str] | None] = [["a"], ["a", "b"], None, ["c"]]
    barrier = context.Barrier(len(plans), timeout=60)
    results = context.Queue()
    processes = [
        context.Process(target=_claimer, args=(redis_url, f"p{n}", plan, barrier, results), daemon=True)
        for n, plan in enumerate(plans)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=10)
    counts = Counter(rollout_id for claimed in outcomes.values() for rollout_id, _ in claimed)
    assert set(counts) == {r.rollout_id for r in rollouts} and set(counts.values()) == {1}
    for n, plan in enumerate(plans):
        assert plan is None or {t for _, t in outcomes[f"p{n}"]} <= set(plan), "a filter was ignored"


async def _race(url: str) -> None:
    store = open_store(url)
    try:
        for _ in range(20):
            item = await store.start_rollout(RolloutRequest(config=LONG), "w")
            results = await asyncio.gather(
                store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded"),
                store.cancel_rollout(item.rollout_id),
                store.heartbeat(item.rollout_id, item.attempt_id),
                return_exceptions=True,
            )
            final = await store.get_rollout(item.rollout_id)
            (attempt,) = await store.get_attempts(item.rollout_id)
            completed, cancelled, _ = results
            assert isinstance(completed, InvalidTransition) != isinstance(cancelled, InvalidTransition), results
            if final.status == "succeeded":
                assert attempt.status == "succeeded" and isinstance(cancelled, InvalidTransition)
            else:
                assert final.status == "cancelled" and attempt.status == "failed"
    finally:
        await store.close()


def test_racing_complete_cancel_and_heartbeat_leave_one_consistent_outcome(redis_url: str) -> None:
    asyncio.run(_race(redis_url))


# ---------------------------------------------------------------------- URLs and faults
def test_unreachable_redis_is_a_clear_error_naming_the_url() -> None:
    url = "redis://trainer:s3cret@127.0.0.1:1/0?prefix=x:"
    with pytest.raises(StoreUnavailable) as info:
        open_store(url)
    message = str(info.value)
    assert "redis://trainer:***@127.0.0.1:1/0" in message and "s3cret" not in message
    assert "redis-server" in message, "the message says how to start Redis"
    assert info.value.__cause__ is None and info.value.__suppress_context__, "no driver traceback chained"


def test_a_server_that_goes_away_later_raises_store_unavailable() -> None:
    store = RedisLightningStore("redis://:pw@127.0.0.1:1/0", check=False, connect_timeout=0.5)
    with pytest.raises(StoreUnavailable, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0"):
        asyncio.run(store.enqueue_rollout("x"))


def test_a_database_number_over_the_servers_limit_is_a_clear_error(redis_url: str) -> None:
    """Regression: db 99 surfaced redis-py's raw ``ResponseError: DB index is out of range``."""
    parts = parse_url(redis_url)
    bad = parts.connect_url.rsplit("/", 1)[0] + "/99"
    limit = redis.Redis.from_url(parts.connect_url).config_get("databases")["databases"]
    with pytest.raises(StoreError) as opened:
        open_store(bad)
    assert not isinstance(opened.value, redis.ResponseError)
    assert "no database 99" in str(opened.value) and f"it has {limit}" in str(opened.value)

    unchecked = RedisLightningStore(bad, check=False)  # the first command meets it instead
    with pytest.raises(StoreError, match=f"no database 99: it has {limit}"):
        asyncio.run(unchecked.query_rollouts())


def test_malformed_urls_and_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="database"):
        parse_url("redis://127.0.0.1:6379/notanumber")
    with pytest.raises(ValueError, match="malformed"):
        parse_url("redis://127.0.0.1:port/0")
    with pytest.raises(ValueError, match="prefix"):
        parse_url("redis://127.0.0.1/0?prefix=")
    with pytest.raises(ValueError, match="prefix given twice"):
        parse_url("redis://127.0.0.1/0?prefix=a:", prefix="b:")
    parsed = parse_url("redis://h:7000/3?prefix=p:&socket_timeout=2")
    assert (parsed.prefix, parsed.connect_url) == ("p:", "redis://h:7000/3?socket_timeout=2")
    assert redact("rediss://u:pw@h:1/0") == "rediss://u:***@h:1/0" and redact("redis://h/0") == "redis://h/0"


def test_prefix_keyword_goes_into_the_url_other_processes_open(redis_url: str) -> None:
    prefix = parse_url(redis_url).prefix
    store = RedisLightningStore(redis_url.split("?")[0], prefix=prefix)
    assert store.prefix == prefix and parse_url(store.url).prefix == prefix
    reopened = open_store(store.url)
    assert isinstance(reopened, RedisLightningStore) and reopened.prefix == prefix


def test_malformed_payloads_are_rejected_and_nothing_is_stored(redis_url: str) -> None:
    async def main() -> None:
        store = open_store(redis_url)
        assert isinstance(store, RedisLightningStore)
        client = redis.asyncio.Redis.from_url(parse_url(redis_url).connect_url)
        try:
            bad_inputs: list[Any] = [{"x": math.nan}, [1, math.inf], object(), {1: "int key"}]
            for bad in bad_inputs:
                with pytest.raises(ValueError):
                    await store.enqueue_rollouts([RolloutRequest(input="fine"), RolloutRequest(input=bad)])
            with pytest.raises(ValueError, match="metadata"):
                await store.enqueue_rollout("x", metadata={"score": -math.inf})
            with pytest.raises(ValueError):
                await store.add_resources({"p": {"resource_type": "prompt_template", "template": "t"}}, {"n": math.nan})
            assert await client.keys(parse_url(redis_url).prefix + "*") == [], "a rejected call wrote keys"
            assert await store.query_rollouts() == []
        finally:
            await client.aclose()
            await store.close()

    asyncio.run(main())


def test_stores_with_different_prefixes_are_isolated_and_purge_only_their_own(new_redis_url: Any) -> None:
    async def main() -> None:
        first, second = open_store(new_redis_url()), open_store(new_redis_url())
        assert isinstance(first, RedisLightningStore) and isinstance(second, RedisLightningStore)
        kept = await second.enqueue_rollout("second")
        await first.enqueue_rollout("first")
        await first.subscribe("g")
        assert [r.input for r in await first.query_rollouts()] == ["first"]
        assert await first.purge() > 0
        assert await first.query_rollouts() == []
        assert await second.query_rollouts() == [kept]
        await first.close()
        await second.close()

    asyncio.run(main())


def test_pull_wakes_when_another_process_finishes_a_rollout(redis_url: str) -> None:
    async def main() -> None:
        store = open_store(redis_url)
        await store.subscribe("g")
        rollout = await store.enqueue_rollout("x", config=LONG)
        waiting = asyncio.create_task(store.pull_completed("g", timeout=10))
        await asyncio.sleep(0.2)
        other = open_store(redis_url)  # another client: what a separate runner process would use
        item = await other.claim_rollout("w")
        assert item is not None and not waiting.done()
        finished_at = time.monotonic()
        await other.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        got = await waiting
        assert [r.rollout_id for r in got] == [rollout.rollout_id]
        assert time.monotonic() - finished_at < 1.0
        await other.close()
        await store.close()

    asyncio.run(main())


def test_scripts_are_loaded_again_when_the_server_forgets_them(redis_url: str) -> None:
    """After a server restart (here: SCRIPT FLUSH) the store reloads its Lua scripts by itself."""

    async def main() -> None:
        store = open_store(redis_url)
        await store.enqueue_rollout("before", config=LONG)
        client = redis.asyncio.Redis.from_url(parse_url(redis_url).connect_url)
        await client.script_flush()
        await client.aclose()
        item = await store.claim_rollout("w")
        assert item is not None and item.rollout.input == "before"
        await store.close()

    asyncio.run(main())


def test_leases_follow_the_servers_clock_not_the_clients(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose clock is an hour off neither shortens nor stretches leases, nor reaps early."""
    server = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        seconds, micros = server.time()
    finally:
        server.close()
    server_now = seconds + micros / 1e6
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)  # this process's clock runs an hour fast
    config = RolloutConfig(lease_seconds=60)

    async def main() -> None:
        store = open_store(redis_url)
        try:
            await store.enqueue_rollout({"n": 1}, config=config)
            claimed = await store.claim_rollout("w")
            assert claimed is not None
            assert abs(claimed.attempt.started_at - server_now) < 60, "the lease starts at the server's time"
            assert abs(claimed.attempt.lease_expires_at - (server_now + 60)) < 60
            started = await store.start_rollout(RolloutRequest(config=config), "w")
            assert abs(started.attempt.started_at - server_now) < 60
            assert await store.reap_expired() == [], "a fast client clock does not expire the leases"
            beat = await store.heartbeat(claimed.rollout_id, claimed.attempt_id)
            assert abs(beat.lease_expires_at - (server_now + 60)) < 60
            done = await store.complete_attempt(claimed.rollout_id, claimed.attempt_id, "succeeded")
            assert done.status == "succeeded" and done.ended_at is not None and abs(done.ended_at - server_now) < 60
        finally:
            await store.close()

    asyncio.run(main())
