"""The LightningStore conformance suite: one pytest class every store backend runs unchanged.

A backend's test module subclasses :class:`StoreConformanceSuite` and says how
to make a fresh, empty store::

    from agent_lightning_testkit import StoreConformanceSuite

    class TestSqliteStore(StoreConformanceSuite):
        async def create_store(self) -> LightningStore:
            return SqliteLightningStore(f"sqlite:///{tmp_dir}/{uuid4().hex}.db")

``create_store`` may use what pytest fixtures give, through an autouse fixture
of the subclass::

    @pytest.fixture(autouse=True)
    def _folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path

Each test runs in its own event loop (``asyncio.run``; no pytest-asyncio
needed), creates a store inside that loop, and closes it at the end. Timing
attributes (``short_lease``, ``short_timeout``, ``short_visibility``) can be
raised for backends whose clocks are coarse; ``supports_threads`` and
``supports_multiprocess`` say which concurrency tests apply.

Every rule in :mod:`agent_lightning.store.base`'s docstring is checked here,
and every rejected call is checked to leave the store exactly as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import multiprocessing
import queue
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import pytest  # type: ignore[import-not-found, unused-ignore]
from agent_lightning import limits, semconv
from agent_lightning.errors import DuplicateId, InvalidTransition, LeaseLost, NotFound
from agent_lightning.store.base import LATEST, LightningStore
from agent_lightning.store.sync import EventLoopThread, SyncStore
from agent_lightning.types import (
    LLM,
    Attempt,
    AttemptCompletion,
    AttemptedRollout,
    PromptTemplate,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    Span,
    SpanKind,
    ToolConfig,
    new_span_id,
    new_trace_id,
)
from agent_lightning.types.spans import SpanCursor

__all__ = ["StoreConformanceSuite", "snapshot", "store_test"]

_Suite = TypeVar("_Suite", bound="StoreConformanceSuite")
_T = TypeVar("_T")

LONG = RolloutConfig(lease_seconds=3600.0)
"""A config whose lease never runs out during a test, so state only changes when a test changes it."""


def store_test(
    test: Callable[[_Suite, LightningStore], Awaitable[None]],
) -> Callable[[_Suite], None]:
    """Turn ``async def test_x(self, store)`` into a plain pytest test that gets a fresh store.

    The store is made by ``create_store`` inside a new event loop and closed
    afterwards; the whole test is bounded by the class's ``test_timeout``.
    """

    def run(self: _Suite) -> None:
        async def main() -> None:
            store = await self.create_store()
            try:
                await asyncio.wait_for(test(self, store), self.test_timeout)
            finally:
                await store.close()

        asyncio.run(main())

    run.__name__ = test.__name__
    run.__qualname__ = test.__qualname__
    run.__doc__ = test.__doc__
    run.__module__ = test.__module__
    return run


# ---------------------------------------------------------------------- helpers
def make_span(
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    *,
    name: str | None = None,
    kind: SpanKind = "custom",
    attributes: dict[str, Any] | None = None,
    span_id: str | None = None,
    reward: float | None = None,
) -> Span:
    """A valid span with fresh ids and deterministic times; with ``reward``, a reward span carrying it."""
    if reward is not None:
        kind, attributes = "reward", {**(attributes or {}), semconv.REWARD_VALUE: reward}
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=new_trace_id(),
        span_id=span_id or new_span_id(),
        name=name or f"step-{sequence_id}",
        kind=kind,
        attributes=attributes or {},
        start_time=1_700_000_000.0 + sequence_id,
        end_time=1_700_000_000.5 + sequence_id,
    )


async def snapshot(store: LightningStore) -> dict[str, Any]:
    """Everything a store shows without changing it: rollouts, their attempts and spans, latest resources."""
    rollouts: list[Rollout] = []
    while True:
        page = await store.query_rollouts(limit=100, offset=len(rollouts))
        rollouts.extend(page)
        if len(page) < 100:
            break
    state: dict[str, Any] = {}
    for rollout in rollouts:
        state[rollout.rollout_id] = {
            "rollout": rollout.model_dump(mode="json"),
            "attempts": [a.model_dump(mode="json") for a in await store.get_attempts(rollout.rollout_id)],
            "spans": [s.model_dump(mode="json") for s in await store.query_spans(rollout.rollout_id)],
        }
    latest = await store.get_latest_resources()
    return {"rollouts": state, "latest_resources": None if latest is None else latest.model_dump(mode="json")}


async def assert_rejected(
    store: LightningStore,
    error: type[BaseException] | tuple[type[BaseException], ...],
    call: Callable[[], Awaitable[object]],
    match: str | None = None,
) -> BaseException:
    """Assert that ``call()`` raises ``error`` and leaves the store exactly as it was."""
    before = await snapshot(store)
    with pytest.raises(error, match=match) as info:
        await call()
    after = await snapshot(store)
    assert after == before, f"a call rejected with {type(info.value).__name__} changed the store"
    return info.value  # type: ignore[no-any-return, unused-ignore]


async def _eventually(probe: Callable[[], Awaitable[_T | None]], within: float, every: float, what: str) -> _T:
    """Poll ``probe`` until it returns something other than ``None`` (or an empty list)."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


async def _run_to_end(
    store: LightningStore, request: RolloutRequest, status: Literal["succeeded", "failed"] = "succeeded"
) -> Rollout:
    """Create a running rollout and finish its attempt with ``status``."""
    started = await store.start_rollout(request, worker_id="finisher")
    return await store.complete_attempt(started.rollout_id, started.attempt_id, status)


def _claim_in_process(url: str, worker_id: str, barrier: Any, results: Any) -> None:
    """Child-process body of the multi-process test: claim and finish rollouts until none are left."""
    from agent_lightning.store import open_store

    async def main() -> list[str]:
        store = open_store(url)
        claimed: list[str] = []
        try:
            barrier.wait()
            while (item := await store.claim_rollout(worker_id)) is not None:
                await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
                claimed.append(item.rollout_id)
        finally:
            await store.close()
        return claimed

    try:
        results.put((worker_id, asyncio.run(main()), None))
    except BaseException as exc:  # report, so the parent fails with the cause instead of a timeout
        barrier.abort()  # and release the siblings waiting to start
        results.put((worker_id, [], f"{type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------------- the suite
class StoreConformanceSuite:
    """Contract tests for a :class:`~agent_lightning.store.base.LightningStore` backend.

    Subclass it in a test module named ``Test…`` and implement :meth:`create_store`.
    """

    short_lease: float = 0.5
    """``lease_seconds`` of rollouts whose lease a test lets expire."""
    short_timeout: float = 0.3
    """``timeout_seconds`` of rollouts a test lets time out."""
    short_visibility: float = 0.3
    """``visibility_timeout`` of deliveries a test leaves unacknowledged."""
    patience: float = 10.0
    """How long to wait for something that should happen promptly before failing."""
    test_timeout: float = 60.0
    """Upper bound of one test, so a hung backend fails instead of blocking the run."""
    concurrent_rollouts: int = 200
    concurrent_claimers: int = 16
    thread_count: int = 4
    process_count: int = 3
    supports_threads: bool = True
    """Whether one store object may be used from several threads, each with its own event loop."""
    supports_multiprocess: bool = False
    """Whether ``open_store(self.process_store_url(store))`` in another process opens the same data."""
    supports_explicit_clock: bool = True
    """Whether ``reap_expired(now=...)`` reaps as of a given time (in process); a store server refuses it."""
    property_examples: int = 40
    """How many random operation sequences the ``hypothesis`` property test runs."""

    async def create_store(self) -> LightningStore:
        """A fresh, empty store. The suite closes it after each test."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def create_store(self)`")

    def process_store_url(self, store: LightningStore) -> str:
        """The URL another process opens to reach ``store`` (multi-process test only)."""
        return store.url

    # ------------------------------------------------------------------ enqueue
    @store_test
    async def test_enqueue_one_returns_the_queued_rollout(self, store: LightningStore) -> None:
        config = RolloutConfig(max_attempts=2, lease_seconds=12.5, timeout_seconds=40.0)
        rollout = await store.enqueue_rollout(
            {"question": "2+2"},
            task_type="math",
            mode="val",
            resources_id="rs-x",
            config=config,
            metadata={"split": "dev"},
        )
        assert rollout.rollout_id
        assert rollout.status == "queuing" and rollout.attempt_count == 0
        assert (rollout.input, rollout.task_type, rollout.mode) == ({"question": "2+2"}, "math", "val")
        assert (rollout.resources_id, rollout.config, rollout.metadata) == ("rs-x", config, {"split": "dev"})
        assert abs(rollout.created_at - time.time()) < 60, "created_at must be a UNIX time in seconds"
        assert rollout.started_at is None and rollout.ended_at is None and rollout.error is None
        assert await store.get_rollout(rollout.rollout_id) == rollout
        assert await store.get_attempts(rollout.rollout_id) == []

    @store_test
    async def test_enqueue_batch_keeps_request_order_and_ids(self, store: LightningStore) -> None:
        requests = [
            RolloutRequest(input=i, rollout_id=f"chosen-{i}" if i % 2 else None, task_type=f"t{i % 3}")
            for i in range(7)
        ]
        rollouts = await store.enqueue_rollouts(requests)
        assert [r.input for r in rollouts] == list(range(7))
        assert [r.task_type for r in rollouts] == [f"t{i % 3}" for i in range(7)]
        assert all(r.rollout_id == f"chosen-{i}" for i, r in enumerate(rollouts) if i % 2)
        assert len({r.rollout_id for r in rollouts}) == 7
        assert await store.query_rollouts() == rollouts, "rollouts come back oldest first, a batch in request order"
        assert await store.enqueue_rollouts([]) == []

    @store_test
    async def test_enqueue_duplicate_id_is_rejected_and_stores_nothing(self, store: LightningStore) -> None:
        existing = await store.enqueue_rollout("first", rollout_id="dup")
        await assert_rejected(
            store,
            DuplicateId,
            lambda: store.enqueue_rollouts([RolloutRequest(rollout_id="new-1"), RolloutRequest(rollout_id="dup")]),
        )
        await assert_rejected(
            store,
            DuplicateId,
            lambda: store.enqueue_rollouts([RolloutRequest(rollout_id="twice"), RolloutRequest(rollout_id="twice")]),
        )
        await assert_rejected(store, DuplicateId, lambda: store.enqueue_rollout("again", rollout_id="dup"))
        await assert_rejected(store, DuplicateId, lambda: store.start_rollout(RolloutRequest(rollout_id="dup"), "w"))
        for missing in ("new-1", "twice"):
            with pytest.raises(NotFound):
                await store.get_rollout(missing)
        assert await store.query_rollouts() == [existing]
        assert (await store.get_rollout("dup")).input == "first"

    @store_test
    async def test_inputs_and_metadata_round_trip_as_json(self, store: LightningStore) -> None:
        payload = {
            "text": "héllo ✓ \u4e2d\u6587",
            "nested": {"list": [1, 2.5, True, None, "x"], "empty": {}},
            "big": 2**53,
            "negative": -0.125,
            "flag": False,
        }
        rollout = await store.enqueue_rollout(payload, metadata={"tags": ["a", "b"], "n": 3})
        fetched = await store.get_rollout(rollout.rollout_id)
        assert fetched.input == payload and isinstance(fetched.input["nested"]["list"][2], bool)
        assert fetched.metadata == {"tags": ["a", "b"], "n": 3}
        scalar = await store.enqueue_rollout("just a string")
        assert (await store.get_rollout(scalar.rollout_id)).input == "just a string"

    # ------------------------------------------------------------------ start / claim
    @store_test
    async def test_start_rollout_runs_at_once_without_the_queue(self, store: LightningStore) -> None:
        started = await store.start_rollout(RolloutRequest(input="direct", task_type="script"), worker_id="me")
        assert started.rollout.status == "running" and started.rollout.attempt_count == 1
        assert started.rollout.started_at is not None
        assert started.attempt.status == "running" and started.attempt.sequence == 1
        assert started.attempt.worker_id == "me" and started.attempt.rollout_id == started.rollout_id
        assert await store.claim_rollout("other") is None, "a started rollout is not in the queue"
        assert await store.get_attempts(started.rollout_id) == [started.attempt]
        done = await store.complete_attempt(started.rollout_id, started.attempt_id, "succeeded")
        assert done.status == "succeeded"

    @store_test
    async def test_start_rollout_with_the_attempt_id_the_client_chose(self, store: LightningStore) -> None:
        """The caller names the rollout and its attempt up front; spans built with them before it existed land."""
        chosen = await store.start_rollout(
            RolloutRequest(rollout_id="ro-chosen", config=LONG), "w", attempt_id="at-chosen-1"
        )
        assert (chosen.rollout_id, chosen.attempt_id) == ("ro-chosen", "at-chosen-1")
        assert chosen.attempt.rollout_id == "ro-chosen"
        assert [a.attempt_id for a in await store.get_attempts("ro-chosen")] == ["at-chosen-1"]
        await store.add_spans([make_span("ro-chosen", "at-chosen-1", 1)])
        assert [s.attempt_id for s in await store.query_spans("ro-chosen")] == ["at-chosen-1"]
        # An attempt id used by any rollout is a duplicate; nothing of the refused rollout is stored.
        other = RolloutRequest(rollout_id="ro-other")
        await assert_rejected(store, DuplicateId, lambda: store.start_rollout(other, "w", attempt_id="at-chosen-1"))
        with pytest.raises(NotFound):
            await store.get_rollout("ro-other")
        bad_request = RolloutRequest(rollout_id="ro-bad")
        for bad in ("", " ", "has space", "x" * 300, "new\nline"):
            start_bad = functools.partial(store.start_rollout, bad_request, "w", attempt_id=bad)
            await assert_rejected(store, ValueError, start_bad)
        with pytest.raises(NotFound):
            await store.get_rollout("ro-bad")
        generated = await store.start_rollout(RolloutRequest(config=LONG), "w")
        assert generated.attempt_id and generated.attempt_id != "at-chosen-1"
        # A claim still generates ids: the next attempt of a requeued rollout gets a new one.
        await store.complete_attempt("ro-chosen", "at-chosen-1", "failed")
        retry = await store.claim_rollout("w2")
        assert retry is not None and retry.rollout_id == "ro-chosen" and retry.attempt_id != "at-chosen-1"

    @store_test
    async def test_claim_takes_the_oldest_first_and_none_when_empty(self, store: LightningStore) -> None:
        assert await store.claim_rollout("w1") is None
        rollouts = await store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(3)])
        rollouts.append(await store.enqueue_rollout(3, config=LONG))
        expected = [r.rollout_id for r in rollouts]
        claimed: list[AttemptedRollout] = []
        for i in range(4):
            item = await store.claim_rollout(f"w{i}")
            assert item is not None
            claimed.append(item)
        assert [c.rollout_id for c in claimed] == expected
        assert await store.claim_rollout("w9") is None
        first = claimed[0]
        assert first.rollout.status == "running" and first.rollout.attempt_count == 1
        assert first.rollout.started_at is not None
        assert first.attempt.status == "running" and first.attempt.sequence == 1 and first.attempt.worker_id == "w0"
        assert abs(first.attempt.lease_expires_at - (time.time() + LONG.lease_seconds)) < 60
        assert await store.get_rollout(first.rollout_id) == first.rollout
        assert await store.get_attempts(first.rollout_id) == [first.attempt]

    @store_test
    async def test_claim_filters_by_task_types_and_modes(self, store: LightningStore) -> None:
        math_train = await store.enqueue_rollout("m", task_type="math", config=LONG)
        code_train = await store.enqueue_rollout("c", task_type="code", config=LONG)
        math_val = await store.enqueue_rollout("mv", task_type="math", mode="val", config=LONG)
        assert await store.claim_rollout("w", task_types=["search"]) is None
        assert await store.claim_rollout("w", modes=["test"]) is None
        assert await store.claim_rollout("w", task_types=[]) is None, "an empty filter matches nothing"
        got = await store.claim_rollout("w", task_types=["code"])
        assert got is not None and got.rollout_id == code_train.rollout_id
        got = await store.claim_rollout("w", modes=["val"])
        assert got is not None and got.rollout_id == math_val.rollout_id
        assert await store.claim_rollout("w", task_types=["code"], modes=["train"]) is None
        got = await store.claim_rollout("w", task_types=["code", "math"], modes=["train", "val"])
        assert got is not None and got.rollout_id == math_train.rollout_id
        assert await store.claim_rollout("w") is None

    # ------------------------------------------------------------------ heartbeat / complete / retry
    @store_test
    async def test_heartbeat_extends_the_lease(self, store: LightningStore) -> None:
        await store.enqueue_rollout("hb", config=RolloutConfig(lease_seconds=self.short_lease, max_attempts=2))
        item = await store.claim_rollout("w1")
        assert item is not None
        lease = item.attempt.lease_expires_at
        deadline = time.monotonic() + 3 * self.short_lease
        while time.monotonic() < deadline:  # outlive the first lease several times over
            await asyncio.sleep(self.short_lease / 4)
            beat = await store.heartbeat(item.rollout_id, item.attempt_id)
            assert beat.status == "running" and beat.lease_expires_at >= lease
            lease = beat.lease_expires_at
            assert await store.claim_rollout("w2") is None, "a heart-beaten rollout was handed to another worker"
        assert lease > item.attempt.lease_expires_at + self.short_lease
        assert (await store.get_attempts(item.rollout_id))[-1].last_heartbeat_at > item.attempt.last_heartbeat_at
        done = await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        assert done.status == "succeeded" and done.attempt_count == 1
        with pytest.raises(NotFound):
            await store.heartbeat(item.rollout_id, "no-such-attempt")
        with pytest.raises(NotFound):
            await store.heartbeat("no-such-rollout", item.attempt_id)

    @store_test
    async def test_complete_succeeded_finishes_rollout_and_attempt(self, store: LightningStore) -> None:
        await store.enqueue_rollout("ok", config=LONG)
        item = await store.claim_rollout("w1")
        assert item is not None
        done = await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        assert done.status == "succeeded" and done.is_terminal and done.error is None
        assert done.ended_at is not None and done.ended_at >= (done.started_at or 0)
        assert await store.get_rollout(item.rollout_id) == done
        (attempt,) = await store.get_attempts(item.rollout_id)
        assert attempt.status == "succeeded" and attempt.ended_at is not None
        await assert_rejected(
            store, LeaseLost, lambda: store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        )
        await assert_rejected(store, LeaseLost, lambda: store.heartbeat(item.rollout_id, item.attempt_id))
        await assert_rejected(store, InvalidTransition, lambda: store.cancel_rollout(item.rollout_id))

    @store_test
    async def test_failed_attempts_retry_until_max_attempts_then_fail(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("flaky", config=RolloutConfig(max_attempts=3, lease_seconds=3600))
        attempt_ids: list[str] = []
        for number in (1, 2, 3):
            item = await store.claim_rollout(f"w{number}")
            assert item is not None and item.rollout_id == rollout.rollout_id
            assert item.attempt.sequence == number and item.rollout.attempt_count == number
            attempt_ids.append(item.attempt_id)
            after = await store.complete_attempt(item.rollout_id, item.attempt_id, "failed", error=f"boom {number}")
            assert after.status == ("requeuing" if number < 3 else "failed")
        assert len(set(attempt_ids)) == 3
        final = await store.get_rollout(rollout.rollout_id)
        assert final.status == "failed" and final.ended_at is not None and final.attempt_count == 3
        assert final.error and "boom 3" in final.error, f"the rollout's error should say why: {final.error!r}"
        attempts = await store.get_attempts(rollout.rollout_id)
        assert [a.attempt_id for a in attempts] == attempt_ids
        assert [a.sequence for a in attempts] == [1, 2, 3]
        assert [a.status for a in attempts] == ["failed"] * 3
        assert [a.worker_id for a in attempts] == ["w1", "w2", "w3"]
        assert [a.error for a in attempts] == ["boom 1", "boom 2", "boom 3"]
        assert await store.claim_rollout("w4") is None

    @store_test
    async def test_a_retry_can_succeed(self, store: LightningStore) -> None:
        await store.enqueue_rollout("flaky", config=RolloutConfig(max_attempts=2, lease_seconds=3600))
        first = await store.claim_rollout("w1")
        assert first is not None
        requeued = await store.complete_attempt(first.rollout_id, first.attempt_id, "failed", "transient")
        assert requeued.status == "requeuing" and not requeued.is_terminal and requeued.error is None
        second = await store.claim_rollout("w2")
        assert second is not None and second.rollout_id == first.rollout_id and second.attempt.sequence == 2
        done = await store.complete_attempt(second.rollout_id, second.attempt_id, "succeeded")
        assert done.status == "succeeded" and done.attempt_count == 2 and done.error is None
        assert [a.status for a in await store.get_attempts(first.rollout_id)] == ["failed", "succeeded"]
        await assert_rejected(store, LeaseLost, lambda: store.heartbeat(first.rollout_id, first.attempt_id))

    @store_test
    async def test_complete_rejects_unknown_ids_and_bad_status(self, store: LightningStore) -> None:
        await store.enqueue_rollout("x", config=LONG)
        item = await store.claim_rollout("w1")
        assert item is not None
        await assert_rejected(store, NotFound, lambda: store.complete_attempt("nope", item.attempt_id, "succeeded"))
        await assert_rejected(store, NotFound, lambda: store.complete_attempt(item.rollout_id, "nope", "succeeded"))
        await assert_rejected(
            store,
            ValueError,
            lambda: store.complete_attempt(item.rollout_id, item.attempt_id, "lost"),  # type: ignore[arg-type]
        )
        other = await store.start_rollout(RolloutRequest(config=LONG), "w2")
        await assert_rejected(  # an attempt id of another rollout
            store, NotFound, lambda: store.complete_attempt(item.rollout_id, other.attempt_id, "succeeded")
        )

    # ------------------------------------------------------------------ leases and timeouts
    @store_test
    async def test_expired_lease_is_lost_and_another_worker_retries(self, store: LightningStore) -> None:
        config = RolloutConfig(lease_seconds=self.short_lease, max_attempts=2)
        rollout = await store.enqueue_rollout("slow", config=config)
        first = await store.claim_rollout("w1")
        assert first is not None
        assert await store.claim_rollout("w2") is None
        second = await _eventually(
            lambda: store.claim_rollout("w2"), self.patience, self.short_lease / 4, "the expired lease to be reaped"
        )
        assert second.rollout_id == rollout.rollout_id and second.attempt.sequence == 2
        assert second.attempt.worker_id == "w2" and second.attempt_id != first.attempt_id

        # The second worker renews its short lease before each step, as a runner's heartbeats
        # would, so a slow machine cannot let it expire while the checks run.
        renew = functools.partial(store.heartbeat, rollout.rollout_id, second.attempt_id)
        await renew()
        attempts = await store.get_attempts(rollout.rollout_id)
        assert [a.status for a in attempts] == ["lost", "running"]
        assert attempts[0].ended_at is not None and attempts[0].error
        # The first worker comes back too late: nothing it says changes the store.
        await renew()
        await assert_rejected(
            store, LeaseLost, lambda: store.complete_attempt(rollout.rollout_id, first.attempt_id, "succeeded")
        )
        await renew()
        await assert_rejected(store, LeaseLost, lambda: store.heartbeat(rollout.rollout_id, first.attempt_id))
        await renew()
        done = await store.complete_attempt(rollout.rollout_id, second.attempt_id, "succeeded")
        assert done.status == "succeeded" and done.attempt_count == 2

    @store_test
    async def test_heartbeat_after_the_lease_ran_out_raises_lease_lost(self, store: LightningStore) -> None:
        await store.enqueue_rollout("x", config=RolloutConfig(lease_seconds=self.short_lease, max_attempts=1))
        item = await store.claim_rollout("w1")
        assert item is not None
        await asyncio.sleep(self.short_lease * 2)
        with pytest.raises(LeaseLost):
            await store.heartbeat(item.rollout_id, item.attempt_id)
        (attempt,) = await store.get_attempts(item.rollout_id)
        assert attempt.status == "lost"
        final = await store.get_rollout(item.rollout_id)
        assert final.status == "failed" and final.error, "the last attempt lost: the rollout fails with a reason"

    @store_test
    async def test_reap_expired_with_an_explicit_clock(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x", config=RolloutConfig(lease_seconds=60, max_attempts=2))
        item = await store.claim_rollout("w1")
        assert item is not None
        if not self.supports_explicit_clock:
            await assert_rejected(store, ValueError, lambda: store.reap_expired(now=time.time() + 120))
            assert await store.reap_expired() == []
            return
        assert await store.reap_expired(now=time.time()) == []
        (reaped,) = await store.reap_expired(now=time.time() + 120)
        assert (reaped.attempt_id, reaped.status) == (item.attempt_id, "lost")
        assert (await store.get_rollout(rollout.rollout_id)).status == "requeuing"
        assert await store.reap_expired(now=time.time() + 120) == []
        again = await store.claim_rollout("w2")
        assert again is not None and again.attempt.sequence == 2
        (last,) = await store.reap_expired(now=time.time() + 120)
        assert last.attempt_id == again.attempt_id
        final = await store.get_rollout(rollout.rollout_id)
        assert final.status == "failed" and final.error and final.ended_at is not None

    @store_test
    async def test_timeout_seconds_marks_the_attempt_timeout(self, store: LightningStore) -> None:
        config = RolloutConfig(lease_seconds=3600, timeout_seconds=self.short_timeout, max_attempts=1)
        rollout = await store.enqueue_rollout("long task", config=config)
        item = await store.claim_rollout("w1")
        assert item is not None

        async def ended_attempts() -> list[Attempt]:
            with contextlib.suppress(LeaseLost):  # heart-beating does not lift the wall-clock limit
                await store.heartbeat(item.rollout_id, item.attempt_id)
            await store.reap_expired()
            return [a for a in await store.get_attempts(rollout.rollout_id) if a.status != "running"]

        (ended,) = await _eventually(ended_attempts, self.patience, self.short_timeout / 4, "the attempt to time out")
        assert ended.status == "timeout"
        final = await store.get_rollout(rollout.rollout_id)
        assert final.status == "failed" and final.error and "timeout" in final.error
        await assert_rejected(store, LeaseLost, lambda: store.heartbeat(item.rollout_id, item.attempt_id))
        await assert_rejected(
            store, LeaseLost, lambda: store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        )

    # ------------------------------------------------------------------ cancel
    @store_test
    async def test_cancel_queued_and_running_rollouts(self, store: LightningStore) -> None:
        queued = await store.enqueue_rollout("q", config=LONG)
        running_rollout = await store.enqueue_rollout("r", config=LONG)
        cancelled = await store.cancel_rollout(queued.rollout_id)
        assert cancelled.status == "cancelled" and cancelled.is_terminal and cancelled.ended_at is not None
        item = await store.claim_rollout("w1")
        assert item is not None and item.rollout_id == running_rollout.rollout_id, "a cancelled rollout is not claimed"
        assert await store.claim_rollout("w2") is None
        stopped = await store.cancel_rollout(item.rollout_id)
        assert stopped.status == "cancelled"
        (attempt,) = await store.get_attempts(item.rollout_id)
        assert attempt.status == "failed" and attempt.ended_at is not None
        await assert_rejected(
            store, InvalidTransition, lambda: store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        )
        await assert_rejected(store, InvalidTransition, lambda: store.cancel_rollout(queued.rollout_id))
        await assert_rejected(store, NotFound, lambda: store.cancel_rollout("no-such-rollout"))
        finished = await _run_to_end(store, RolloutRequest(config=LONG))
        await assert_rejected(store, InvalidTransition, lambda: store.cancel_rollout(finished.rollout_id))

    @store_test
    async def test_cancel_a_requeuing_rollout(self, store: LightningStore) -> None:
        await store.enqueue_rollout("x", config=RolloutConfig(max_attempts=2, lease_seconds=3600))
        item = await store.claim_rollout("w1")
        assert item is not None
        await store.complete_attempt(item.rollout_id, item.attempt_id, "failed")
        assert (await store.cancel_rollout(item.rollout_id)).status == "cancelled"
        assert await store.claim_rollout("w2") is None

    # ------------------------------------------------------------------ queries
    @store_test
    async def test_get_rollout_and_attempts_of_unknown_ids(self, store: LightningStore) -> None:
        with pytest.raises(NotFound):
            await store.get_rollout("no-such-rollout")
        with pytest.raises(NotFound):
            await store.get_attempts("no-such-rollout")
        with pytest.raises(NotFound):
            await store.get_resources("no-such-resources")

    @store_test
    async def test_query_rollouts_filters_and_paginates(self, store: LightningStore) -> None:
        kinds: list[tuple[str, RolloutMode]] = [
            ("math", "train"),
            ("code", "train"),
            ("math", "val"),
            ("code", "test"),
            ("math", "train"),
        ]
        made = await store.enqueue_rollouts(
            [RolloutRequest(input=i, task_type=t, mode=m, config=LONG) for i, (t, m) in enumerate(kinds * 2)]
        )
        ids = [r.rollout_id for r in made]
        first = await store.claim_rollout("w")  # ids[0] → running
        assert first is not None and first.rollout_id == ids[0]
        second = await store.claim_rollout("w")  # ids[1] → succeeded
        assert second is not None
        await store.complete_attempt(second.rollout_id, second.attempt_id, "succeeded")
        await store.cancel_rollout(ids[2])

        async def found(**filters: Any) -> list[str]:
            return [r.rollout_id for r in await store.query_rollouts(**filters)]

        assert await found() == ids
        assert await found(status=["running"]) == [ids[0]]
        assert await found(status=["succeeded", "cancelled"]) == [ids[1], ids[2]]
        assert await found(status=["queuing"]) == ids[3:]
        assert await found(task_types=["code"]) == [ids[i] for i in (1, 3, 6, 8)]
        assert await found(mode="val") == [ids[2], ids[7]]
        assert await found(task_types=["math"], mode="train", status=["queuing"]) == [ids[4], ids[5], ids[9]]
        assert await found(rollout_ids=[ids[7], ids[2], "unknown"]) == [ids[2], ids[7]], "oldest first, unknown skipped"
        assert await found(rollout_ids=[]) == [] and await found(status=[]) == [] and await found(task_types=[]) == []
        assert await found(status=["failed"]) == []
        pages = [await found(limit=3, offset=offset) for offset in range(0, 12, 3)]
        assert pages == [ids[0:3], ids[3:6], ids[6:9], ids[9:]]
        assert await found(limit=0) == []
        assert await found(offset=10) == []
        assert await found(task_types=["math"], limit=2, offset=1) == [ids[2], ids[4]]
        await assert_rejected(store, ValueError, lambda: store.query_rollouts(limit=-1))
        await assert_rejected(store, ValueError, lambda: store.query_rollouts(offset=-1))

    @store_test
    async def test_count_rollouts_by_task_type_and_status(self, store: LightningStore) -> None:
        assert await store.count_rollouts() == {}
        kinds: list[tuple[str, RolloutMode]] = [("math", "train"), ("code", "train"), ("math", "val"), ("code", "test")]
        made = await store.enqueue_rollouts(
            [RolloutRequest(input=i, task_type=t, mode=m, config=LONG) for i, (t, m) in enumerate(kinds * 3)]
        )
        first = await store.claim_rollout("w")  # made[0] (math) → running
        second = await store.claim_rollout("w")  # made[1] (code) → succeeded
        assert first is not None and second is not None
        await store.complete_attempt(second.rollout_id, second.attempt_id, "succeeded")
        await store.cancel_rollout(made[2].rollout_id)  # math, val
        assert await store.count_rollouts() == {
            "math": {"running": 1, "cancelled": 1, "queuing": 4},
            "code": {"succeeded": 1, "queuing": 5},
        }
        assert await store.count_rollouts(status=["queuing"], task_types=["code"]) == {"code": {"queuing": 5}}
        assert await store.count_rollouts(status=["running", "succeeded"]) == {
            "math": {"running": 1},
            "code": {"succeeded": 1},
        }
        assert await store.count_rollouts(mode="val") == {"math": {"cancelled": 1, "queuing": 2}}
        assert await store.count_rollouts(mode="test", status=["queuing"]) == {"code": {"queuing": 3}}
        assert await store.count_rollouts(status=[]) == {} and await store.count_rollouts(task_types=[]) == {}
        assert await store.count_rollouts(status=["failed"]) == {}
        for status in (["queuing"], ["running", "cancelled"], None):
            for task_types in (["math"], None):
                listed = await store.query_rollouts(status=status, task_types=task_types, limit=1000)
                counted = await store.count_rollouts(status=status, task_types=task_types)
                assert sum(n for per in counted.values() for n in per.values()) == len(listed)

    # ------------------------------------------------------------------ waiting
    @store_test
    async def test_wait_for_rollouts_returns_when_they_finish(self, store: LightningStore) -> None:
        rollouts = await store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)])
        ids = [r.rollout_id for r in rollouts]

        async def work() -> None:
            await asyncio.sleep(0.1)
            while (item := await store.claim_rollout("w")) is not None:
                await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")

        worker = asyncio.create_task(work())
        began = time.monotonic()
        done = await store.wait_for_rollouts(list(reversed(ids)), timeout=self.patience)
        await worker
        assert time.monotonic() - began < self.patience
        assert [r.rollout_id for r in done] == list(reversed(ids)), "results follow the requested order"
        assert all(r.status == "succeeded" for r in done)
        assert await store.wait_for_rollouts(ids, timeout=0) == await store.query_rollouts()

    @store_test
    async def test_wait_for_rollouts_timeout_returns_the_finished_ones(self, store: LightningStore) -> None:
        finished = await _run_to_end(store, RolloutRequest(config=LONG), "succeeded")
        pending = await store.enqueue_rollout("never claimed", config=LONG)
        began = time.monotonic()
        done = await store.wait_for_rollouts([finished.rollout_id, pending.rollout_id], timeout=0.3)
        assert 0.2 <= time.monotonic() - began < self.patience
        assert done == [finished]
        with pytest.raises(NotFound):
            await store.wait_for_rollouts(["no-such-rollout"], timeout=0)

    # ------------------------------------------------------------------ spans
    @store_test
    async def test_add_spans_and_query_them_in_sequence_order(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        spans = [make_span(item.rollout_id, item.attempt_id, seq) for seq in (3, 0, 4, 1, 2)]
        assert await store.add_spans(spans) == 5
        got = await store.query_spans(item.rollout_id)
        assert [s.sequence_id for s in got] == [0, 1, 2, 3, 4]
        assert sorted(got, key=lambda s: s.span_id) == sorted(spans, key=lambda s: s.span_id)
        single = make_span(item.rollout_id, item.attempt_id, 5)
        assert await store.add_span(single) == single
        assert (await store.query_spans(item.rollout_id))[-1] == single
        assert await store.add_spans([]) == 0
        empty = await store.start_rollout(RolloutRequest(config=LONG), "w")
        assert await store.query_spans(empty.rollout_id) == []

    @store_test
    async def test_add_span_refuses_a_bad_span(self, store: LightningStore) -> None:
        """add_span is add_spans([span]): what add_spans would refuse it refuses, storing nothing."""
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        await store.add_span(make_span(item.rollout_id, item.attempt_id, 1))
        await store.add_span(make_span(item.rollout_id, item.attempt_id, 2))
        await assert_rejected(store, NotFound, lambda: store.add_span(make_span("no-such-rollout", item.attempt_id, 3)))
        await assert_rejected(store, NotFound, lambda: store.add_span(make_span(item.rollout_id, "no-such-attempt", 3)))
        sneaky = Span.model_construct(
            **{**make_span(item.rollout_id, item.attempt_id, 3).__dict__, "start_time": math.nan}
        )
        await assert_rejected(store, ValueError, lambda: store.add_span(sneaky))
        assert [s.sequence_id for s in await store.query_spans(item.rollout_id)] == [1, 2]

    @store_test
    async def test_add_span_one_by_one_keeps_every_span_once(self, store: LightningStore) -> None:
        """add_span calls one after another: every span stored once, a re-sent one replaced, none aliased."""
        items = [await store.start_rollout(RolloutRequest(config=LONG), "w") for _ in range(2)]
        sent: dict[str, list[Span]] = {item.rollout_id: [] for item in items}
        for seq in range(1, 31):
            for item in items:
                span = make_span(item.rollout_id, item.attempt_id, seq, attributes={"n": seq})
                assert await store.add_span(span) is span
                sent[item.rollout_id].append(span)
        first = items[0]
        resent = sent[first.rollout_id][5].model_copy(update={"attributes": {"n": "resent"}})
        await store.add_span(resent)
        sent[first.rollout_id][6].attributes["n"] = "changed after add_span"  # the store kept its own copy
        for item in items:
            got = await store.query_spans(item.rollout_id)
            assert [s.sequence_id for s in got] == list(range(1, 31))
            assert [s.attributes["n"] for s in got[:8]] == [1, 2, 3, 4, 5, "resent" if item is first else 6, 7, 8]

    @store_test
    async def test_add_span_is_durable_when_it_returns(self, store: LightningStore) -> None:
        """Another store object on the same data sees a span as soon as add_span returned."""
        if not self.supports_multiprocess:
            pytest.skip(f"{type(self).__name__}.supports_multiprocess is False: no second store object to read with")
        from agent_lightning.store import open_store

        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        other = open_store(self.process_store_url(store))
        try:
            for seq in range(1, 6):
                await store.add_span(make_span(item.rollout_id, item.attempt_id, seq))
                got = await other.query_spans(item.rollout_id)
                assert [s.sequence_id for s in got] == list(range(1, seq + 1))
        finally:
            await other.close()

    @store_test
    async def test_add_spans_is_idempotent(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        spans = [make_span(item.rollout_id, item.attempt_id, seq) for seq in range(4)]
        await store.add_spans(spans)
        await store.add_spans(spans)  # a retry of the whole batch
        await store.add_spans(spans[1:3])
        assert await store.query_spans(item.rollout_id) == spans
        updated = spans[2].model_copy(update={"attributes": {"note": "resent"}, "end_time": spans[2].start_time + 9})
        await store.add_spans([updated])
        got = await store.query_spans(item.rollout_id)
        assert len(got) == 4 and got[2] == updated, "a re-sent span replaces the stored one"
        # The same span id in another attempt is another span.
        await store.complete_attempt(item.rollout_id, item.attempt_id, "failed")
        retry = await store.claim_rollout("w2")
        assert retry is not None
        copy = spans[0].model_copy(update={"attempt_id": retry.attempt_id})
        await store.add_spans([copy])
        assert len(await store.query_spans(item.rollout_id)) == 5
        assert await store.query_spans(item.rollout_id, LATEST) == [copy]

    @store_test
    async def test_a_finished_attempt_keeps_its_reward_and_spans(self, store: LightningStore) -> None:
        """Succeeded and failed attempts are immutable: no new reward, no changed span; re-sends and late calls pass."""
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        step = make_span(item.rollout_id, item.attempt_id, 1)
        reward = make_span(item.rollout_id, item.attempt_id, 2, kind="reward", attributes={semconv.REWARD_VALUE: 0.0})
        await store.add_spans([step, reward])
        await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        late_reward = make_span(
            item.rollout_id, item.attempt_id, 3, kind="reward", attributes={semconv.REWARD_VALUE: 1000.0}
        )
        late_call = make_span(item.rollout_id, item.attempt_id, 4, name="late llm call", kind="llm")
        for batch in (
            [late_reward],
            [reward.model_copy(update={"attributes": {semconv.REWARD_VALUE: 1000.0}})],  # overwrite by span id
            [step.model_copy(update={"name": "rewritten"})],
            [late_call, late_reward],  # all or nothing: the allowed span is not stored either
        ):
            await assert_rejected(store, InvalidTransition, lambda b=batch: store.add_spans(b), "cannot be changed")
        assert await store.add_spans([step, reward]) == 2, "the same spans sent again are accepted"
        assert await store.add_spans([late_call]) == 1, "a late span of another kind is accepted"
        stored = await store.query_spans(item.rollout_id)
        assert stored == [step, reward, late_call]
        # A failed attempt is final too, while its rollout's next attempt runs and takes changes.
        retried = await store.start_rollout(RolloutRequest(config=RolloutConfig(lease_seconds=3600, max_attempts=2)))
        first = make_span(retried.rollout_id, retried.attempt_id, 1)
        await store.add_spans([first])
        await store.complete_attempt(retried.rollout_id, retried.attempt_id, "failed")
        changed = first.model_copy(update={"name": "rewritten"})
        await assert_rejected(store, InvalidTransition, lambda: store.add_spans([changed]), "cannot be changed")
        second = await store.claim_rollout("w2")
        assert second is not None and second.rollout_id == retried.rollout_id
        mine = make_span(retried.rollout_id, second.attempt_id, 1, kind="reward", attributes={semconv.REWARD_VALUE: 1})
        assert await store.add_spans([mine]) == 1
        assert await store.add_spans([mine.model_copy(update={"attributes": {semconv.REWARD_VALUE: 2}})]) == 1

    @store_test
    async def test_query_spans_filters(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        rid, aid = item.rollout_id, item.attempt_id
        kinds: list[SpanKind] = ["agent", "llm", "tool", "llm", "reward", "llm"]
        spans = [make_span(rid, aid, seq, kind=kind, name=f"{kind}-op") for seq, kind in enumerate(kinds, start=1)]
        random.Random(7).shuffle(spans)
        await store.add_spans(spans)

        async def seqs(**filters: Any) -> list[int]:
            return [s.sequence_id for s in await store.query_spans(rid, **filters)]

        assert await seqs() == [1, 2, 3, 4, 5, 6]
        assert await seqs(kinds=["llm"]) == [2, 4, 6]
        assert await seqs(kinds=["llm", "reward"]) == [2, 4, 5, 6]
        assert await seqs(names=["tool-op", "agent-op"]) == [1, 3]
        assert await seqs(after_sequence_id=3) == [4, 5, 6]
        assert await seqs(after_sequence_id=0) == [1, 2, 3, 4, 5, 6]
        assert await seqs(after_sequence_id=6) == []
        assert await seqs(limit=2) == [1, 2]
        assert await seqs(limit=0) == []
        assert await seqs(kinds=["llm"], after_sequence_id=2, limit=1) == [4]
        assert await seqs(kinds=[]) == []
        assert await seqs(names=["nothing"]) == []
        await assert_rejected(store, ValueError, lambda: store.query_spans(rid, limit=-1))

    @store_test
    async def test_query_spans_by_attempt(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x", config=RolloutConfig(max_attempts=3, lease_seconds=3600))
        assert await store.query_spans(rollout.rollout_id, LATEST) == [], "no attempt yet: no spans"
        first = await store.claim_rollout("w1")
        assert first is not None
        first_spans = [make_span(rollout.rollout_id, first.attempt_id, seq) for seq in (1, 2, 3)]
        await store.add_spans(first_spans)
        await store.complete_attempt(rollout.rollout_id, first.attempt_id, "failed")
        second = await store.claim_rollout("w2")
        assert second is not None
        assert await store.query_spans(rollout.rollout_id, LATEST) == [], "the newest attempt has no spans yet"
        second_spans = [make_span(rollout.rollout_id, second.attempt_id, seq) for seq in (2, 1)]
        await store.add_spans(second_spans)
        everything = await store.query_spans(rollout.rollout_id)
        assert everything == [*first_spans, second_spans[1], second_spans[0]], "ordered by (attempt, sequence_id)"
        assert await store.query_spans(rollout.rollout_id, None) == everything
        assert await store.query_spans(rollout.rollout_id, LATEST) == [second_spans[1], second_spans[0]]
        assert await store.query_spans(rollout.rollout_id, first.attempt_id) == first_spans
        assert await store.query_spans(rollout.rollout_id, first.attempt_id, after_sequence_id=1, limit=1) == [
            first_spans[1]
        ]
        with pytest.raises(NotFound):
            await store.query_spans(rollout.rollout_id, "no-such-attempt")
        with pytest.raises(NotFound):
            await store.query_spans("no-such-rollout")

    @store_test
    async def test_query_spans_pages_across_attempts_with_a_cursor(self, store: LightningStore) -> None:
        rollout = await store.enqueue_rollout("x", config=RolloutConfig(max_attempts=3, lease_seconds=3600))
        rid = rollout.rollout_id
        attempts: list[str] = []
        for n in range(3):  # sequence ids start again at 1 in each attempt
            item = await store.claim_rollout(f"w{n}")
            assert item is not None
            attempts.append(item.attempt_id)
            batch = [make_span(rid, item.attempt_id, seq, kind="llm" if seq % 2 else "tool") for seq in (1, 2, 3, 4)]
            batch.append(make_span(rid, item.attempt_id, 2, kind="llm"))  # a tie on (sequence_id, start_time)
            random.Random(n).shuffle(batch)
            await store.add_spans(batch)
            if n < 2:
                await store.complete_attempt(rid, item.attempt_id, "failed")
        everything = await store.query_spans(rid)
        rank = {attempt_id: n for n, attempt_id in enumerate(attempts)}
        keys = [(rank[s.attempt_id], s.sequence_id, s.start_time, s.span_id) for s in everything]
        assert len(everything) == 15 and keys == sorted(keys), "ordered by (attempt, sequence_id, start_time, span_id)"

        async def pages(size: int, **filters: Any) -> list[Span]:
            got: list[Span] = []
            cursor: Span | SpanCursor | None = None
            while True:
                page = await store.query_spans(rid, limit=size, after=cursor, **filters)
                assert len(page) <= size
                if not page:
                    return got
                got.extend(page)
                cursor = page[-1] if len(got) % 2 else SpanCursor.after(page[-1])  # a span or its cursor

        for size in (1, 2, 4, 7, 100):
            assert await pages(size) == everything, f"pages of {size} skipped or repeated spans"
        assert await pages(2, kinds=["llm"]) == [s for s in everything if s.kind == "llm"]
        assert await pages(3, attempt_id=LATEST) == await store.query_spans(rid, LATEST)
        assert await pages(2, after_sequence_id=2) == [s for s in everything if s.sequence_id > 2]
        middle = everything[7]
        assert await store.query_spans(rid, after=middle) == everything[8:]
        assert await store.query_spans(rid, after=middle, limit=2) == everything[8:10]
        assert await store.query_spans(rid, after=everything[-1]) == []
        between = SpanCursor(attempt_id=attempts[0], sequence_id=3, start_time=0.0, span_id="0" * 16)  # no span there
        later = [s for s in everything if rank[s.attempt_id] > 0 or s.sequence_id >= 3]
        assert await store.query_spans(rid, after=between) == later
        with pytest.raises(NotFound):
            await store.query_spans(rid, after=middle.model_copy(update={"attempt_id": "no-such-attempt"}))

    @store_test
    async def test_spans_of_unknown_rollouts_or_attempts_store_nothing(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        other = await store.start_rollout(RolloutRequest(config=LONG), "w")
        kept = make_span(item.rollout_id, item.attempt_id, 1)
        await store.add_spans([kept])
        good = make_span(item.rollout_id, item.attempt_id, 2)
        for bad in (
            make_span("no-such-rollout", item.attempt_id, 3),
            make_span(item.rollout_id, "no-such-attempt", 3),
            make_span(item.rollout_id, other.attempt_id, 3),  # an attempt of another rollout
        ):
            await assert_rejected(store, NotFound, functools.partial(store.add_spans, [good, bad]))
            await assert_rejected(store, NotFound, functools.partial(store.add_spans, [bad, good]))
        assert await store.query_spans(item.rollout_id) == [kept]
        assert await store.query_spans(other.rollout_id) == []

    @store_test
    async def test_malformed_spans_are_rejected(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        fields: dict[str, Any] = {
            "rollout_id": item.rollout_id,
            "attempt_id": item.attempt_id,
            "sequence_id": 1,
            "trace_id": new_trace_id(),
            "span_id": new_span_id(),
            "name": "op",
        }
        bad_fields: list[dict[str, Any]] = [
            {"trace_id": "xyz"},
            {"trace_id": "A" * 32},
            {"span_id": "123"},
            {"span_id": "g" * 16},
            {"parent_id": "not-hex-at-all!"},
            {"attributes": {"score": math.nan}},
            {"attributes": {semconv.REWARD_VALUE: math.nan}},
            {"attributes": {"nested": {"deep": [1.0, math.inf]}}},
            {"attributes": {"obj": object()}},
            {"start_time": math.nan},
            {"start_time": 10.0, "end_time": 5.0},
            {"sequence_id": -1},
            {"name": ""},
            {"kind": "bogus"},
        ]
        for bad in bad_fields:
            with pytest.raises(ValueError):
                Span(**{**fields, **bad})
        # A span that skipped validation (built with model_construct, or decoded carelessly) is still refused.
        good = make_span(item.rollout_id, item.attempt_id, 2)
        for bad in bad_fields[:8]:
            sneaky = Span.model_construct(**{**make_span(item.rollout_id, item.attempt_id, 3).__dict__, **bad})
            await assert_rejected(store, ValueError, functools.partial(store.add_spans, [good, sneaky]))
        assert await store.query_spans(item.rollout_id) == []

    @store_test
    async def test_span_attributes_round_trip(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        attributes: dict[str, Any] = {
            semconv.REWARD_VALUE: 0.75,
            semconv.PROMPT_TOKEN_IDS: [1, 2, 3, 151643],
            semconv.TOKEN_IDS_AVAILABLE: True,
            "int": 7,
            "big": 2**62,
            "float": -1.5e-9,
            "false": False,
            "none": None,
            "text": 'ünïcode ✓\n"quoted"',
            "nested": {"a": [{"b": 1}, [], {}], "c": None},
        }
        parent = make_span(item.rollout_id, item.attempt_id, 1, kind="agent")
        child = make_span(item.rollout_id, item.attempt_id, 2, kind="reward", attributes=attributes)
        child = child.model_copy(update={"parent_id": parent.span_id, "trace_id": parent.trace_id})
        open_span = make_span(item.rollout_id, item.attempt_id, 3).model_copy(update={"end_time": None})
        await store.add_spans([parent, child, open_span])
        got = await store.query_spans(item.rollout_id)
        assert got == [parent, child, open_span]
        stored = got[1].attributes
        assert (
            isinstance(stored["false"], bool) and isinstance(stored["int"], int) and not isinstance(stored["int"], bool)
        )
        assert got[1].reward == 0.75 and got[1].parent_id == parent.span_id and got[2].end_time is None

    # ------------------------------------------------------------------ resources
    @store_test
    async def test_resources_are_versioned_snapshots(self, store: LightningStore) -> None:
        assert await store.get_latest_resources() is None
        made = []
        for version in (1, 2, 3):
            snapshot_ = await store.add_resources(
                {
                    "prompt": PromptTemplate(template=f"v{version}: solve {{question}}"),
                    "policy": LLM(
                        endpoint="http://127.0.0.1:9/v1", model=f"m{version}", sampling_parameters={"t": 0.5}
                    ),
                    "tool": ToolConfig(config={"depth": version}),
                },
                metadata={"step": version},
            )
            assert snapshot_.version == version and snapshot_.metadata == {"step": version}
            made.append(snapshot_)
            assert await store.get_latest_resources() == snapshot_
        assert len({s.resources_id for s in made}) == 3
        for snapshot_ in made:
            assert await store.get_resources(snapshot_.resources_id) == snapshot_
        prompt = made[1].get("prompt")
        assert isinstance(prompt, PromptTemplate) and prompt.format(question="1+1") == "v2: solve 1+1"
        from_dicts = await store.add_resources({"p": {"resource_type": "prompt_template", "template": "hi"}})  # type: ignore[dict-item]
        assert from_dicts.version == 4 and from_dicts.get("p") == PromptTemplate(template="hi")
        with pytest.raises(NotFound):
            await store.get_resources("no-such-resources")

    @store_test
    async def test_invalid_resources_are_rejected(self, store: LightningStore) -> None:
        first = await store.add_resources({"prompt": PromptTemplate(template="ok {x}")})
        invalid: list[dict[str, Any]] = [
            {"thing": {"resource_type": "spaceship"}},
            {"prompt": {"resource_type": "prompt_template", "template": "unclosed {"}},
            {"policy": {"resource_type": "llm", "endpoint": "http://x"}},  # no model
            {"tool": {"resource_type": "tool", "config": {}, "extra": 1}},
            {"raw": "just a string"},
        ]
        for resources in invalid:
            await assert_rejected(store, ValueError, functools.partial(store.add_resources, resources))
        assert await store.get_latest_resources() == first
        second = await store.add_resources({"prompt": PromptTemplate(template="better {x}")})
        assert second.version == 2, "rejected snapshots use up no version"

    # ------------------------------------------------------------------ publish–subscribe
    @store_test
    async def test_each_group_receives_each_finished_rollout_once(self, store: LightningStore) -> None:
        await store.subscribe("trainer")
        await store.subscribe("evaluator")
        ok = await _run_to_end(store, RolloutRequest(input="ok", config=LONG), "succeeded")
        bad = await _run_to_end(store, RolloutRequest(input="bad", config=RolloutConfig(max_attempts=1)), "failed")
        cancelled = await store.enqueue_rollout("cancelled", config=LONG)
        await store.cancel_rollout(cancelled.rollout_id)
        await store.enqueue_rollout("still queued", config=LONG)
        for group in ("trainer", "evaluator"):
            got = await store.pull_completed(group)
            assert sorted(r.rollout_id for r in got) == sorted([ok.rollout_id, bad.rollout_id])
            assert {r.rollout_id: r.status for r in got} == {ok.rollout_id: "succeeded", bad.rollout_id: "failed"}
            assert await store.pull_completed(group) == [], "a delivery in flight is not handed out again"
            assert await store.ack_completed(group, [r.rollout_id for r in got]) == 2
            assert await store.ack_completed(group, [ok.rollout_id]) == 0
            assert await store.pull_completed(group) == []

    @store_test
    async def test_retries_and_reaped_rollouts_are_delivered_when_final(self, store: LightningStore) -> None:
        await store.subscribe("g")
        config = RolloutConfig(max_attempts=2, lease_seconds=self.short_lease)
        rollout = await store.enqueue_rollout("x", config=config)
        item = await store.claim_rollout("w")
        assert item is not None
        await store.complete_attempt(item.rollout_id, item.attempt_id, "failed")
        assert await store.pull_completed("g") == [], "a requeued rollout is not finished"
        await store.claim_rollout("w")
        await asyncio.sleep(self.short_lease)

        async def reaped_and_delivered() -> list[Rollout]:
            await store.reap_expired()  # the last attempt is lost: the rollout fails
            return await store.pull_completed("g")

        (got,) = await _eventually(reaped_and_delivered, self.patience, 0.05, "the reaped rollout's delivery")
        assert got.rollout_id == rollout.rollout_id and got.status == "failed"

    @store_test
    async def test_subscriptions_by_task_type_split_trainer_pools(self, store: LightningStore) -> None:
        await store.subscribe("math-trainers", task_types=["math"])
        await store.subscribe("code-trainers", task_types=["code", "sql"])
        finished: dict[str, list[str]] = {"math": [], "code": [], "sql": [], "chat": []}
        for i in range(3):
            for task_type in finished:
                rollout = await _run_to_end(store, RolloutRequest(input=i, task_type=task_type, config=LONG))
                finished[task_type].append(rollout.rollout_id)
        math_got = await store.pull_completed("math-trainers", max_count=100)
        code_got = await store.pull_completed("code-trainers", max_count=2)
        code_got += await store.pull_completed("code-trainers", max_count=100)
        assert sorted(r.rollout_id for r in math_got) == sorted(finished["math"])
        assert sorted(r.rollout_id for r in code_got) == sorted(finished["code"] + finished["sql"])
        assert {r.task_type for r in math_got} == {"math"} and {r.task_type for r in code_got} == {"code", "sql"}

    @store_test
    async def test_subscribe_from_beginning(self, store: LightningStore) -> None:
        early = await _run_to_end(store, RolloutRequest(input="early", task_type="math", config=LONG))
        early_code = await _run_to_end(store, RolloutRequest(input="early", task_type="code", config=LONG))
        await store.subscribe("late")
        await store.subscribe("replay", from_beginning=True)
        await store.subscribe("replay-math", task_types=["math"], from_beginning=True)
        later = await _run_to_end(store, RolloutRequest(input="later", task_type="math", config=LONG))
        assert [r.rollout_id for r in await store.pull_completed("late")] == [later.rollout_id]
        replayed = [r.rollout_id for r in await store.pull_completed("replay")]
        assert sorted(replayed) == sorted([early.rollout_id, early_code.rollout_id, later.rollout_id])
        math_replayed = [r.rollout_id for r in await store.pull_completed("replay-math")]
        assert sorted(math_replayed) == sorted([early.rollout_id, later.rollout_id])

    @store_test
    async def test_subscribe_is_idempotent_and_checks_its_arguments(self, store: LightningStore) -> None:
        await store.subscribe("g", task_types=["math", "code"])
        await store.subscribe("g", task_types=["code", "math"])  # the same group again: a no-op
        done = await _run_to_end(store, RolloutRequest(task_type="math", config=LONG))
        await store.subscribe("g", task_types=["math", "code"], from_beginning=True)  # no duplicate delivery
        assert [r.rollout_id for r in await store.pull_completed("g")] == [done.rollout_id]
        assert await store.pull_completed("g") == []
        with pytest.raises(ValueError):
            await store.subscribe("g", task_types=["math"])
        with pytest.raises(ValueError):
            await store.subscribe("g")
        with pytest.raises(ValueError):
            await store.subscribe("")
        await assert_rejected(store, ValueError, lambda: store.pull_completed("g", max_count=0))
        await assert_rejected(store, NotFound, lambda: store.pull_completed("no-such-group"))
        await assert_rejected(store, NotFound, lambda: store.ack_completed("no-such-group", [done.rollout_id]))
        assert await store.ack_completed("g", ["never-delivered"]) == 0

    @store_test
    async def test_consumers_of_one_group_share_its_deliveries(self, store: LightningStore) -> None:
        await store.subscribe("pool")
        ids = [(await _run_to_end(store, RolloutRequest(input=i, config=LONG))).rollout_id for i in range(5)]
        taken: list[str] = []
        for consumer in ("a", "b", "c", "a", "b"):
            (got,) = await store.pull_completed("pool", consumer=consumer, max_count=1)
            taken.append(got.rollout_id)
        assert sorted(taken) == sorted(ids), "each rollout goes to exactly one consumer"
        assert await store.pull_completed("pool", consumer="c") == []

    @store_test
    async def test_unacknowledged_deliveries_come_back_after_the_visibility_timeout(
        self, store: LightningStore
    ) -> None:
        await store.subscribe("g")
        first = await _run_to_end(store, RolloutRequest(input=1, config=LONG))
        second = await _run_to_end(store, RolloutRequest(input=2, config=LONG))
        got = await store.pull_completed("g", consumer="crashy", visibility_timeout=self.short_visibility)
        assert sorted(r.rollout_id for r in got) == sorted([first.rollout_id, second.rollout_id])
        assert await store.ack_completed("g", [first.rollout_id]) == 1
        assert await store.pull_completed("g", consumer="other") == []
        again = await _eventually(
            lambda: store.pull_completed("g", consumer="other", timeout=self.short_visibility),
            self.patience,
            0.0,
            "the unacknowledged rollout to be delivered again",
        )
        assert [r.rollout_id for r in again] == [second.rollout_id], "only the unacknowledged one comes back"
        assert await store.ack_completed("g", [second.rollout_id]) == 1
        await asyncio.sleep(self.short_visibility * 1.5)
        assert await store.pull_completed("g", timeout=0) == [], "acknowledged deliveries never come back"

    @store_test
    async def test_pull_with_timeout_wakes_when_a_rollout_finishes(self, store: LightningStore) -> None:
        await store.subscribe("g")
        began = time.monotonic()
        assert await store.pull_completed("g", timeout=0.3) == []
        assert time.monotonic() - began >= 0.2, "pull_completed must wait up to its timeout"
        rollout = await store.enqueue_rollout("x", config=LONG)
        waiting = asyncio.create_task(store.pull_completed("g", timeout=self.patience))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        item = await store.claim_rollout("w")
        assert item is not None
        finished_at = time.monotonic()
        await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
        got = await waiting
        assert [r.rollout_id for r in got] == [rollout.rollout_id]
        assert time.monotonic() - finished_at < self.patience / 2

    @store_test
    async def test_list_subscriptions_reports_each_group_and_its_backlog(self, store: LightningStore) -> None:
        assert await store.list_subscriptions() == []
        await store.subscribe("trainer")
        await store.subscribe("math-only", task_types=["math", "algebra"])
        for i in range(3):
            await _run_to_end(store, RolloutRequest(input=i, task_type="math", config=LONG))
        await _run_to_end(store, RolloutRequest(input="c", task_type="code", config=LONG))
        await store.enqueue_rollout("still queued", task_type="math", config=LONG)

        async def backlog() -> dict[str, tuple[list[str] | None, int, int]]:
            listed = await store.list_subscriptions()
            assert [s.group for s in listed] == sorted(s.group for s in listed), "listed by group name"
            return {s.group: (s.task_types, s.pending, s.delivered) for s in listed}

        assert await backlog() == {"math-only": (["algebra", "math"], 3, 0), "trainer": (None, 4, 0)}
        got = await store.pull_completed("trainer", max_count=3, visibility_timeout=self.short_visibility)
        assert len(got) == 3
        assert (await backlog())["trainer"] == (None, 1, 3)
        assert await store.ack_completed("trainer", [got[0].rollout_id]) == 1
        assert (await backlog())["trainer"] == (None, 1, 2)
        await asyncio.sleep(self.short_visibility * 1.5)
        assert (await backlog())["trainer"] == (None, 3, 0), "deliveries past their visibility timeout are pending"
        assert len(await store.pull_completed("trainer")) == 3
        assert await backlog() == {"math-only": (["algebra", "math"], 3, 0), "trainer": (None, 0, 3)}

    # ------------------------------------------------------------------ batches: claim_rollouts, complete_attempts
    @store_test
    async def test_claim_rollouts_takes_the_oldest_up_to_the_limit(self, store: LightningStore) -> None:
        assert await store.claim_rollouts("w", 4) == [], "an empty queue gives an empty list"
        rollouts = await store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(5)])
        first = await store.claim_rollouts("w1", 3)
        assert [c.rollout_id for c in first] == [r.rollout_id for r in rollouts[:3]]
        for item in first:
            assert item.rollout.status == "running" and item.rollout.attempt_count == 1
            assert item.attempt.status == "running" and item.attempt.sequence == 1 and item.attempt.worker_id == "w1"
            assert item.attempt.rollout_id == item.rollout_id
            assert abs(item.attempt.lease_expires_at - (time.time() + LONG.lease_seconds)) < 60
            assert await store.get_rollout(item.rollout_id) == item.rollout
            assert await store.get_attempts(item.rollout_id) == [item.attempt]
        assert len({c.attempt_id for c in first}) == 3
        assert await store.claim_rollouts("w2", 0) == []
        rest = await store.claim_rollouts("w2", 10)
        assert [c.rollout_id for c in rest] == [r.rollout_id for r in rollouts[3:]], "fewer only when no more are left"
        assert await store.claim_rollouts("w3", 10) == []
        assert await store.claim_rollout("w3") is None
        # A requeued rollout goes to the back of the queue, as for claim_rollout.
        await store.complete_attempt(first[0].rollout_id, first[0].attempt_id, "failed")
        (again,) = await store.claim_rollouts("w4", 5)
        assert again.rollout_id == first[0].rollout_id and again.attempt.sequence == 2

    @store_test
    async def test_claim_rollouts_filters_by_task_types_and_modes(self, store: LightningStore) -> None:
        math_train = await store.enqueue_rollouts(
            [RolloutRequest(input=i, task_type="math", config=LONG) for i in range(3)]
        )
        code_train = await store.enqueue_rollout("c", task_type="code", config=LONG)
        math_val = await store.enqueue_rollout("mv", task_type="math", mode="val", config=LONG)
        assert await store.claim_rollouts("w", 5, task_types=["search"]) == []
        assert await store.claim_rollouts("w", 5, modes=["test"]) == []
        assert await store.claim_rollouts("w", 5, task_types=[]) == [], "an empty filter matches nothing"
        assert await store.claim_rollouts("w", 5, modes=[]) == []
        got = await store.claim_rollouts("w", 5, task_types=["math"], modes=["train"])
        assert [g.rollout_id for g in got] == [r.rollout_id for r in math_train]
        got = await store.claim_rollouts("w", 5, task_types=["code", "math"])
        assert [g.rollout_id for g in got] == [code_train.rollout_id, math_val.rollout_id]
        assert await store.claim_rollouts("w", 5) == []

    @store_test
    async def test_claim_rollouts_refuses_bad_arguments(self, store: LightningStore) -> None:
        await store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)])
        for bad in (-1, limits.MAX_BATCH + 1, True, 2.0, "2", None):
            await assert_rejected(store, ValueError, functools.partial(store.claim_rollouts, "w", bad))  # type: ignore[arg-type]
        await assert_rejected(store, ValueError, lambda: store.claim_rollouts("", 2))
        assert len(await store.claim_rollouts("w", limits.MAX_BATCH)) == 2

    @store_test
    async def test_claim_rollouts_reaps_expired_leases_first(self, store: LightningStore) -> None:
        expiring = await store.enqueue_rollout(
            "slow", config=RolloutConfig(lease_seconds=self.short_lease, max_attempts=2)
        )
        (first,) = await store.claim_rollouts("w1", 5)
        assert first.rollout_id == expiring.rollout_id
        fresh = await store.enqueue_rollout("fresh", config=LONG)
        await asyncio.sleep(self.short_lease * 2)
        claimed = await store.claim_rollouts("w2", 5)
        assert [c.rollout_id for c in claimed] == [fresh.rollout_id, expiring.rollout_id], (
            "the lapsed attempt is reaped first; its rollout, requeued, is at the back of the queue"
        )
        assert claimed[1].attempt.sequence == 2 and claimed[1].attempt.worker_id == "w2"
        assert [a.status for a in await store.get_attempts(expiring.rollout_id)] == ["lost", "running"]

    @store_test
    async def test_complete_attempts_finishes_each_as_complete_attempt_would(self, store: LightningStore) -> None:
        assert await store.complete_attempts([]) == []
        config = RolloutConfig(max_attempts=2, lease_seconds=3600)
        rollouts = await store.enqueue_rollouts([RolloutRequest(input=i, config=config) for i in range(3)])
        await store.subscribe("finished")
        items = await store.claim_rollouts("w", 3)
        assert [i.rollout_id for i in items] == [r.rollout_id for r in rollouts]
        done = await store.complete_attempts(
            [
                AttemptCompletion(rollout_id=items[0].rollout_id, attempt_id=items[0].attempt_id, status="succeeded"),
                AttemptCompletion(
                    rollout_id=items[1].rollout_id, attempt_id=items[1].attempt_id, status="failed", error="boom"
                ),
                AttemptCompletion(
                    rollout_id=items[2].rollout_id, attempt_id=items[2].attempt_id, status="succeeded", error="noted"
                ),
            ]
        )
        assert [d.rollout_id for d in done] == [r.rollout_id for r in rollouts]
        assert [d.status for d in done] == ["succeeded", "requeuing", "succeeded"]
        for rollout in done:
            assert await store.get_rollout(rollout.rollout_id) == rollout
        assert done[0].ended_at is not None and done[0].error is None and done[1].ended_at is None
        statuses = [(await store.get_attempts(i.rollout_id))[-1] for i in items]
        assert [(a.status, a.error) for a in statuses] == [
            ("succeeded", None),
            ("failed", "boom"),
            ("succeeded", "noted"),
        ]
        assert all(a.ended_at is not None for a in statuses)
        pulled = await store.pull_completed("finished", max_count=10)
        assert sorted(r.rollout_id for r in pulled) == sorted([items[0].rollout_id, items[2].rollout_id])
        # The requeued one comes back; its last attempt failing fails it for good, with the reason.
        (retry,) = await store.claim_rollouts("w", 3)
        assert retry.rollout_id == items[1].rollout_id and retry.attempt.sequence == 2
        (final,) = await store.complete_attempts(
            [
                AttemptCompletion(
                    rollout_id=retry.rollout_id, attempt_id=retry.attempt_id, status="failed", error="again"
                )
            ]
        )
        assert final.status == "failed" and final.error and "again" in final.error
        assert [r.rollout_id for r in await store.pull_completed("finished")] == [retry.rollout_id]

    @store_test
    async def test_complete_attempts_with_one_bad_item_stores_nothing(self, store: LightningStore) -> None:
        await store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(3)])
        running = await store.claim_rollouts("w", 2)
        finished = await store.start_rollout(RolloutRequest(input="done", config=LONG), "w")
        await store.complete_attempt(finished.rollout_id, finished.attempt_id, "succeeded")
        other = await store.start_rollout(RolloutRequest(input="other", config=LONG), "w")

        def item(rollout_id: str, attempt_id: str, status: str = "succeeded", **extra: Any) -> AttemptCompletion:
            return AttemptCompletion.model_construct(
                rollout_id=rollout_id, attempt_id=attempt_id, status=status, error=extra.get("error")
            )

        good = [item(r.rollout_id, r.attempt_id) for r in running]
        bad_items: list[tuple[Any, AttemptCompletion]] = [
            (NotFound, item("no-such-rollout", running[0].attempt_id)),
            (NotFound, item(running[0].rollout_id, "no-such-attempt")),
            (NotFound, item(running[0].rollout_id, other.attempt_id)),  # an attempt of another rollout
            (LeaseLost, item(finished.rollout_id, finished.attempt_id)),  # finished: as complete_attempt says
            (LeaseLost, item(finished.rollout_id, finished.attempt_id, "failed")),
            (ValueError, item(other.rollout_id, other.attempt_id, "lost")),
            (ValueError, item(other.rollout_id, other.attempt_id, error="e" * (limits.MAX_TEXT_LENGTH + 1))),
            (ValueError, good[0]),  # the same attempt twice
        ]
        for error, bad in bad_items:
            for position in (0, 1, 2):  # first, in the middle, last
                batch = [*good[:position], bad, *good[position:]]
                await assert_rejected(store, error, functools.partial(store.complete_attempts, batch))
        for wrong in (("r", "a", "succeeded"), {"rollout_id": other.rollout_id, "attempt_id": other.attempt_id}):
            await assert_rejected(store, TypeError, functools.partial(store.complete_attempts, [*good, wrong]))  # type: ignore[list-item]
        too_many = [item(other.rollout_id, f"a{n}") for n in range(limits.MAX_BATCH + 1)]
        await assert_rejected(store, ValueError, functools.partial(store.complete_attempts, too_many))
        # The single call refuses a finished attempt the same way.
        await assert_rejected(
            store, LeaseLost, lambda: store.complete_attempt(finished.rollout_id, finished.attempt_id, "succeeded")
        )
        done = await store.complete_attempts([*good, item(other.rollout_id, other.attempt_id, "failed")])
        assert [d.status for d in done] == ["succeeded", "succeeded", "requeuing"]
        await assert_rejected(store, LeaseLost, functools.partial(store.complete_attempts, good))

    @store_test
    async def test_complete_attempts_with_a_lapsed_lease_reaps_it_and_stores_nothing_else(
        self, store: LightningStore
    ) -> None:
        fine = await store.start_rollout(RolloutRequest(input="fine", config=LONG), "w")
        short = RolloutConfig(lease_seconds=self.short_lease, max_attempts=2)
        lapsed = await store.start_rollout(RolloutRequest(input="lapsed", config=short), "w")
        await asyncio.sleep(self.short_lease * 2)
        batch = [
            AttemptCompletion(rollout_id=fine.rollout_id, attempt_id=fine.attempt_id, status="succeeded"),
            AttemptCompletion(rollout_id=lapsed.rollout_id, attempt_id=lapsed.attempt_id, status="succeeded"),
        ]
        with pytest.raises(LeaseLost):
            await store.complete_attempts(batch)
        assert [a.status for a in await store.get_attempts(fine.rollout_id)] == ["running"]
        assert (await store.get_rollout(fine.rollout_id)).status == "running"
        (reaped,) = await store.get_attempts(lapsed.rollout_id)
        assert reaped.status == "lost", "as complete_attempt does, the lapsed attempt is reaped"
        assert (await store.get_rollout(lapsed.rollout_id)).status == "requeuing"
        (done,) = await store.complete_attempts(batch[:1])
        assert done.status == "succeeded"

    # ------------------------------------------------------------------ concurrency
    @store_test
    async def test_concurrent_claimers_take_each_rollout_exactly_once(self, store: LightningStore) -> None:
        rollouts = await store.enqueue_rollouts(
            [RolloutRequest(input=i, config=LONG) for i in range(self.concurrent_rollouts)]
        )

        async def claimer(number: int) -> list[str]:
            claimed: list[str] = []
            while (item := await store.claim_rollout(f"claimer-{number}")) is not None:
                await store.add_spans([make_span(item.rollout_id, item.attempt_id, 1)])
                await store.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
                claimed.append(item.rollout_id)
            return claimed

        results = await asyncio.gather(*(claimer(n) for n in range(self.concurrent_claimers)))
        _assert_each_claimed_once([r.rollout_id for r in rollouts], results)
        final = await store.query_rollouts(limit=self.concurrent_rollouts + 1)
        assert len(final) == self.concurrent_rollouts
        assert all(r.status == "succeeded" and r.attempt_count == 1 for r in final)

    @store_test
    async def test_concurrent_batch_claimers_take_each_rollout_exactly_once(self, store: LightningStore) -> None:
        """Batch and single claimers together: no rollout is claimed twice, and every one is claimed."""
        rollouts = await store.enqueue_rollouts(
            [RolloutRequest(input=i, config=LONG) for i in range(self.concurrent_rollouts)]
        )

        async def claimer(number: int) -> list[str]:
            claimed: list[str] = []
            while True:
                if number % 4 == 0:
                    single = await store.claim_rollout(f"claimer-{number}")
                    items = [] if single is None else [single]
                else:
                    items = await store.claim_rollouts(f"claimer-{number}", 1 + number % 7)
                if not items:
                    return claimed
                assert all(i.attempt.worker_id == f"claimer-{number}" for i in items)
                await store.complete_attempts(
                    [
                        AttemptCompletion(rollout_id=i.rollout_id, attempt_id=i.attempt_id, status="succeeded")
                        for i in items
                    ]
                )
                claimed.extend(i.rollout_id for i in items)

        results = await asyncio.gather(*(claimer(n) for n in range(self.concurrent_claimers)))
        _assert_each_claimed_once([r.rollout_id for r in rollouts], results)
        final = await store.query_rollouts(limit=self.concurrent_rollouts + 1)
        assert len(final) == self.concurrent_rollouts
        assert all(r.status == "succeeded" and r.attempt_count == 1 for r in final)

    @store_test
    async def test_threads_with_their_own_event_loops_claim_each_rollout_once(self, store: LightningStore) -> None:
        if not self.supports_threads:
            pytest.skip(f"{type(self).__name__}.supports_threads is False")
        rollouts = await store.enqueue_rollouts(
            [RolloutRequest(input=i, config=LONG) for i in range(self.concurrent_rollouts)]
        )
        barrier = threading.Barrier(self.thread_count, timeout=self.patience)

        def worker(number: int) -> list[str]:
            own_loop = EventLoopThread(f"agl-conformance-loop-{number}")
            try:
                sync = SyncStore(store, loop_thread=own_loop)
                claimed: list[str] = []
                barrier.wait()
                while (item := sync.claim_rollout(f"thread-{number}")) is not None:
                    sync.complete_attempt(item.rollout_id, item.attempt_id, "succeeded")
                    claimed.append(item.rollout_id)
                return claimed
            finally:
                own_loop.stop()

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(self.thread_count, thread_name_prefix="agl-conformance") as pool:
            results = await asyncio.gather(*(loop.run_in_executor(pool, worker, n) for n in range(self.thread_count)))
        _assert_each_claimed_once([r.rollout_id for r in rollouts], results)
        final = await store.query_rollouts(status=["succeeded"], limit=self.concurrent_rollouts + 1)
        assert len(final) == self.concurrent_rollouts

    @store_test
    async def test_processes_claim_each_rollout_once(self, store: LightningStore) -> None:
        if not self.supports_multiprocess:
            pytest.skip(f"{type(self).__name__}.supports_multiprocess is False")
        rollouts = await store.enqueue_rollouts(
            [RolloutRequest(input=i, config=LONG) for i in range(self.concurrent_rollouts)]
        )
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(self.process_count, timeout=self.patience * 3)
        results = context.Queue()
        url = self.process_store_url(store)
        processes = [
            context.Process(target=_claim_in_process, args=(url, f"process-{n}", barrier, results), daemon=True)
            for n in range(self.process_count)
        ]
        for process in processes:
            process.start()
        try:
            outcomes = []
            for _ in processes:
                try:
                    outcomes.append(await asyncio.to_thread(results.get, True, self.test_timeout / 2))
                except queue.Empty:
                    raise AssertionError("a worker process sent no result") from None
        finally:
            for process in processes:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
        errors = [f"{worker}: {error}" for worker, _, error in outcomes if error]
        assert not errors, f"worker processes failed: {errors}"
        _assert_each_claimed_once([r.rollout_id for r in rollouts], [claimed for _, claimed, _ in outcomes])
        final = await store.query_rollouts(status=["succeeded"], limit=self.concurrent_rollouts + 1)
        assert len(final) == self.concurrent_rollouts

    # ------------------------------------------------------------------ integrity
    @store_test
    async def test_rejected_calls_leave_the_store_unchanged(self, store: LightningStore) -> None:
        queued = await store.enqueue_rollout("queued", config=LONG)
        running = await store.start_rollout(RolloutRequest(input="running", config=LONG), "w")
        await store.add_spans([make_span(running.rollout_id, running.attempt_id, 1)])
        await store.subscribe("g", task_types=["default"])
        done = await store.start_rollout(RolloutRequest(input="done", config=LONG), "w")
        await store.complete_attempt(done.rollout_id, done.attempt_id, "succeeded")
        await store.add_resources({"prompt": PromptTemplate(template="t")})
        sneaky = Span.model_construct(
            **{**make_span(running.rollout_id, running.attempt_id, 2).__dict__, "attributes": {"r": math.nan}}
        )
        rejected: list[tuple[Any, Callable[[], Awaitable[object]]]] = [
            (
                DuplicateId,
                lambda: store.enqueue_rollouts([RolloutRequest(), RolloutRequest(rollout_id=queued.rollout_id)]),
            ),
            (DuplicateId, lambda: store.start_rollout(RolloutRequest(rollout_id=done.rollout_id), "w")),
            (ValueError, lambda: store.claim_rollout("")),
            (ValueError, lambda: store.claim_rollouts("w", -1)),
            (
                LeaseLost,
                lambda: store.complete_attempts(
                    [
                        AttemptCompletion(
                            rollout_id=running.rollout_id, attempt_id=running.attempt_id, status="failed"
                        ),
                        AttemptCompletion(rollout_id=done.rollout_id, attempt_id=done.attempt_id, status="failed"),
                    ]
                ),
            ),
            (NotFound, lambda: store.heartbeat(queued.rollout_id, running.attempt_id)),
            (ValueError, lambda: store.complete_attempt(running.rollout_id, running.attempt_id, "bogus")),  # type: ignore[arg-type]
            (LeaseLost, lambda: store.complete_attempt(done.rollout_id, done.attempt_id, "failed")),
            (NotFound, lambda: store.complete_attempt("nope", running.attempt_id, "succeeded")),
            (InvalidTransition, lambda: store.cancel_rollout(done.rollout_id)),
            (NotFound, lambda: store.cancel_rollout("nope")),
            (
                NotFound,
                lambda: store.add_spans(
                    [make_span(running.rollout_id, running.attempt_id, 3), make_span("nope", running.attempt_id, 4)]
                ),
            ),
            (ValueError, lambda: store.add_spans([make_span(running.rollout_id, running.attempt_id, 3), sneaky])),
            (ValueError, lambda: store.add_resources({"x": {"resource_type": "nope"}})),  # type: ignore[dict-item]
            (ValueError, lambda: store.subscribe("g", task_types=["other"])),
            (ValueError, lambda: store.query_rollouts(limit=-5)),
            (NotFound, lambda: store.query_spans("nope")),
            (NotFound, lambda: store.get_resources("nope")),
            (NotFound, lambda: store.pull_completed("nope")),
            (NotFound, lambda: store.wait_for_rollouts(["nope"], timeout=0)),
        ]
        for error, call in rejected:
            await assert_rejected(store, error, call)
        assert (await store.pull_completed("g"))[0].rollout_id == done.rollout_id

    @store_test
    async def test_returned_objects_are_copies(self, store: LightningStore) -> None:
        payload: dict[str, Any] = {"items": [1, 2]}
        rollout = await store.enqueue_rollout(payload, metadata={"k": "v"}, config=LONG)
        payload["items"].append(3)  # the caller keeps using its own objects
        rollout.input["items"].append(4)
        rollout.metadata["k"] = "changed"
        fetched = await store.get_rollout(rollout.rollout_id)
        assert fetched.input == {"items": [1, 2]} and fetched.metadata == {"k": "v"}
        fetched.status = "succeeded"
        fetched.input["items"].clear()
        listed = await store.query_rollouts()
        listed[0].metadata.clear()
        assert await store.get_rollout(rollout.rollout_id) == rollout.model_copy(
            update={"input": {"items": [1, 2]}, "metadata": {"k": "v"}}
        )
        item = await store.claim_rollout("w")
        assert item is not None
        item.attempt.status = "lost"
        attempts = await store.get_attempts(item.rollout_id)
        attempts[0].lease_expires_at = 0.0
        assert (await store.get_attempts(item.rollout_id))[0] == attempts[0].model_copy(
            update={"lease_expires_at": item.attempt.lease_expires_at}
        )
        span = make_span(item.rollout_id, item.attempt_id, 1, attributes={"tokens": [1, 2]})
        await store.add_spans([span])
        span.attributes["tokens"].append(3)  # type: ignore[union-attr]
        (stored,) = await store.query_spans(item.rollout_id)
        assert stored.attributes == {"tokens": [1, 2]}
        stored.attributes.clear()
        assert (await store.query_spans(item.rollout_id))[0].attributes == {"tokens": [1, 2]}
        parameters: dict[str, Any] = {"temperature": 0.5}
        snapshot_ = await store.add_resources(
            {"policy": LLM(endpoint="http://x/v1", model="m", sampling_parameters=parameters)}
        )
        parameters["temperature"] = 9.0
        snapshot_.resources.clear()
        again = await store.get_resources(snapshot_.resources_id)
        policy = again.get("policy")
        assert isinstance(policy, LLM) and policy.sampling_parameters == {"temperature": 0.5}

    # ------------------------------------------------------------------ limits (agent_lightning.limits)
    @store_test
    async def test_inputs_nested_too_deep_are_refused_and_store_nothing(self, store: LightningStore) -> None:
        kept = await store.enqueue_rollout(_nested(limits.MAX_JSON_DEPTH), metadata={"m": _nested(98)}, config=LONG)
        assert (await store.get_rollout(kept.rollout_id)).input == _nested(limits.MAX_JSON_DEPTH)
        for deep in (_nested(limits.MAX_JSON_DEPTH + 1), _nested(600)):
            await assert_rejected(
                store,
                ValueError,
                functools.partial(store.enqueue_rollouts, [RolloutRequest(input="ok"), _unchecked(input=deep)]),
                match="nested too deep",
            )
            await assert_rejected(
                store, ValueError, functools.partial(store.enqueue_rollout, "x", metadata={"m": deep})
            )
            await assert_rejected(store, ValueError, functools.partial(store.start_rollout, _unchecked(input=deep)))
        sneaky = RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "input": _nested(600)})
        await assert_rejected(store, ValueError, lambda: store.enqueue_rollouts([sneaky]))
        assert await store.query_rollouts() == [kept], "an unfiltered query still reads every rollout"
        item = await store.claim_rollout("w")
        assert item is not None and item.rollout_id == kept.rollout_id and await store.claim_rollout("w") is None

    @store_test
    async def test_span_attributes_nested_too_deep_are_refused(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        ok = make_span(item.rollout_id, item.attempt_id, 1, attributes={"a": _nested(limits.MAX_JSON_DEPTH - 1)})
        await store.add_spans([ok])
        for depth in (limits.MAX_JSON_DEPTH, 600):
            with pytest.raises(ValueError, match="nested too deep"):
                make_span(item.rollout_id, item.attempt_id, 2, attributes={"a": _nested(depth)})
            fields = {**make_span(item.rollout_id, item.attempt_id, 2).__dict__, "attributes": {"a": _nested(depth)}}
            sneaky = Span.model_construct(**fields)
            await assert_rejected(store, ValueError, functools.partial(store.add_spans, [sneaky]))
            with pytest.raises(ValueError):
                await store.add_span(Span.model_construct(**fields))
        assert await store.query_spans(item.rollout_id) == [ok]

    @store_test
    async def test_ids_over_the_length_limit_are_refused(self, store: LightningStore) -> None:
        longest = "r" * limits.MAX_ID_LENGTH
        kept = await store.enqueue_rollout("x", rollout_id=longest, task_type="t" * limits.MAX_ID_LENGTH, config=LONG)
        assert (await store.get_rollout(longest)).rollout_id == longest
        for size in (limits.MAX_ID_LENGTH + 1, 260_000, 1_000_000):
            too_long = "x" * size
            await assert_rejected(
                store,
                ValueError,
                functools.partial(store.enqueue_rollout, "x", rollout_id=too_long),
                match="characters",
            )
            for request in (
                RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "rollout_id": too_long}),
                RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "task_type": too_long}),
                RolloutRequest.model_construct(**{**RolloutRequest().__dict__, "resources_id": too_long}),
            ):
                await assert_rejected(store, ValueError, functools.partial(store.enqueue_rollouts, [request]))
            await assert_rejected(store, ValueError, functools.partial(store.start_rollout, RolloutRequest(), too_long))
            await assert_rejected(store, ValueError, functools.partial(store.claim_rollout, too_long))
            await assert_rejected(store, ValueError, functools.partial(store.subscribe, too_long))
        assert await store.query_rollouts() == [kept]

    @store_test
    async def test_numbers_out_of_range_are_refused(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        await store.subscribe("g")
        for lease in (math.inf, math.nan, -1.0, 0.0, limits.MAX_SECONDS * 2):
            config = RolloutConfig.model_construct(max_attempts=3, lease_seconds=lease, timeout_seconds=None)
            await assert_rejected(
                store, ValueError, functools.partial(store.enqueue_rollouts, [_unchecked(config=config)])
            )
            timeout = RolloutConfig.model_construct(max_attempts=3, lease_seconds=60.0, timeout_seconds=lease)
            await assert_rejected(
                store, ValueError, functools.partial(store.start_rollout, _unchecked(config=timeout), "w")
            )
        with pytest.raises(ValueError):
            RolloutConfig(lease_seconds=math.inf)
        for now in (math.inf, -math.inf, math.nan):
            await assert_rejected(store, ValueError, functools.partial(store.reap_expired, now=now))
        for huge in (2**63, 2**64 + 5):
            await assert_rejected(store, ValueError, functools.partial(store.query_rollouts, limit=huge))
            await assert_rejected(store, ValueError, functools.partial(store.query_rollouts, offset=huge))
            await assert_rejected(store, ValueError, functools.partial(store.query_spans, item.rollout_id, limit=huge))
            await assert_rejected(
                store, ValueError, functools.partial(store.query_spans, item.rollout_id, after_sequence_id=huge)
            )
            await assert_rejected(store, ValueError, functools.partial(store.pull_completed, "g", max_count=huge))
            fields = {**make_span(item.rollout_id, item.attempt_id, 1).__dict__, "sequence_id": huge}
            await assert_rejected(
                store, ValueError, functools.partial(store.add_spans, [Span.model_construct(**fields)])
            )
        await assert_rejected(
            store,
            ValueError,
            lambda: store.pull_completed("g", visibility_timeout=math.inf),  # never redelivered
        )
        assert await store.query_rollouts(offset=limits.MAX_INT) == []
        assert await store.query_rollouts(limit=limits.MAX_INT) == [item.rollout]
        assert await store.query_spans(item.rollout_id, after_sequence_id=limits.MAX_INT, limit=limits.MAX_INT) == []

    @store_test
    async def test_texts_over_the_length_limit_are_refused(self, store: LightningStore) -> None:
        item = await store.start_rollout(RolloutRequest(config=LONG), "w")
        await assert_rejected(
            store,
            ValueError,
            lambda: store.complete_attempt(
                item.rollout_id, item.attempt_id, "failed", "e" * (limits.MAX_TEXT_LENGTH + 1)
            ),
        )
        long_name = make_span(item.rollout_id, item.attempt_id, 1).__dict__ | {
            "name": "n" * (limits.MAX_NAME_LENGTH + 1)
        }
        await assert_rejected(store, ValueError, lambda: store.add_spans([Span.model_construct(**long_name)]))
        done = await store.complete_attempt(item.rollout_id, item.attempt_id, "failed", "e" * 10_000)
        assert done.status == "requeuing"

    # ------------------------------------------------------------------ property test (hypothesis)
    def test_random_operations_keep_the_contract(self) -> None:
        """Random enqueue/claim/complete/add_spans/cancel sequences, with valid and invalid inputs.

        Invalid calls raise ``ValueError`` and change nothing; valid ones keep the state machine: no
        rollout is claimed while it runs, statuses follow the retry rules, every stored span reads back.
        Runs ``property_examples`` sequences (skipped without ``hypothesis``).
        """
        pytest.importorskip("hypothesis")
        from hypothesis import HealthCheck, given, settings
        from hypothesis import strategies as st

        loop = asyncio.new_event_loop()
        store = loop.run_until_complete(self.create_store())
        try:

            @settings(
                max_examples=self.property_examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(st.lists(_operations(st), min_size=1, max_size=12))
            def check(operations: list[tuple[Any, ...]]) -> None:
                loop.run_until_complete(asyncio.wait_for(_play(store, operations), self.test_timeout))

            check()
        finally:
            loop.run_until_complete(store.close())
            loop.close()


def _operations(st: Any) -> Any:
    """The hypothesis strategy of one store operation (see :func:`_play`)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8)
    )
    values = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    )
    attributes = st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=4)
    bad_input = st.sampled_from(["deep", "nan", "long_id", "inf_lease", "long_task_type", "long_resources_id"])
    return st.one_of(
        st.tuples(st.just("enqueue"), st.lists(values, min_size=1, max_size=2)),
        st.tuples(st.just("enqueue_bad"), bad_input, values),
        st.tuples(st.just("claim")),
        st.tuples(st.just("claim_many"), st.integers(0, 4)),
        st.tuples(st.just("complete"), st.integers(0, 7), st.booleans()),
        st.tuples(
            st.just("complete_many"),
            st.lists(st.tuples(st.integers(0, 7), st.booleans()), min_size=1, max_size=3),
            st.booleans(),
        ),
        st.tuples(st.just("span"), st.integers(0, 7), attributes),
        st.tuples(st.just("span_bad"), st.integers(0, 7), st.sampled_from(["deep", "nan", "sequence", "name"])),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
    )


def _bad_request(kind: str, value: Any, task_type: str) -> RolloutRequest:
    fields = {**RolloutRequest(task_type=task_type, config=LONG).__dict__, "input": value}
    if kind == "deep":
        fields["input"] = [_nested(limits.MAX_JSON_DEPTH + 1), value]
    elif kind == "nan":
        fields["input"] = {"v": value, "bad": math.nan}
    elif kind == "long_id":
        fields["rollout_id"] = "r" * (limits.MAX_ID_LENGTH + 1)
    elif kind == "inf_lease":
        fields["config"] = RolloutConfig.model_construct(max_attempts=2, lease_seconds=math.inf, timeout_seconds=None)
    elif kind == "long_task_type":
        fields["task_type"] = "t" * (limits.MAX_ID_LENGTH + 1)
    else:
        fields["resources_id"] = "s" * (limits.MAX_ID_LENGTH + 1)
    return RolloutRequest.model_construct(**fields)


async def _play(store: LightningStore, operations: list[tuple[Any, ...]]) -> None:
    """Apply ``operations`` to ``store`` and to a model of what it must hold, checking each answer."""
    task_type = f"prop-{uuid.uuid4().hex}"  # this sequence's rollouts only (hypothesis seeds ``random``)
    config = RolloutConfig(lease_seconds=3600.0, max_attempts=2)
    status: dict[str, str] = {}
    attempts: dict[str, int] = {}
    running: dict[str, str] = {}  # rollout id -> attempt id
    ended: list[tuple[str, str]] = []  # (rollout id, attempt id) of attempts completed
    spans: dict[str, set[str]] = {}
    sequence = 0

    async def everything() -> int:
        return len(await store.query_rollouts(limit=limits.MAX_INT))

    def pick(index: int, among: Sequence[str]) -> str | None:
        return sorted(among)[index % len(among)] if among else None

    for operation in operations:
        kind = operation[0]
        if kind == "enqueue":
            made = await store.enqueue_rollouts(
                [RolloutRequest(input=v, task_type=task_type, config=config) for v in operation[1]]
            )
            assert [r.input for r in made] == operation[1]
            for rollout in made:
                status[rollout.rollout_id], attempts[rollout.rollout_id] = "queuing", 0
                spans[rollout.rollout_id] = set()
        elif kind == "enqueue_bad":
            before = await everything()
            with pytest.raises(ValueError):
                await store.enqueue_rollouts(
                    [RolloutRequest(task_type=task_type), _bad_request(operation[1], operation[2], task_type)]
                )
            assert await everything() == before, f"a refused enqueue ({operation[1]}) stored a rollout"
        elif kind == "claim":
            claimable = {r for r, s in status.items() if s in ("queuing", "requeuing")}
            item = await store.claim_rollout("prop-worker", task_types=[task_type])
            if not claimable:
                assert item is None
                continue
            assert item is not None and item.rollout_id in claimable, "claimed a rollout that was not claimable"
            assert item.rollout_id not in running, "a rollout was claimed twice"
            attempts[item.rollout_id] += 1
            assert item.attempt.sequence == attempts[item.rollout_id] and item.rollout.status == "running"
            status[item.rollout_id], running[item.rollout_id] = "running", item.attempt_id
        elif kind == "claim_many":
            claimable = {r for r, s in status.items() if s in ("queuing", "requeuing")}
            items = await store.claim_rollouts("prop-worker", operation[1], task_types=[task_type])
            assert len(items) == min(operation[1], len(claimable)), "claimed fewer than the limit with more left"
            assert len({i.rollout_id for i in items}) == len(items) and {i.rollout_id for i in items} <= claimable
            for item in items:
                attempts[item.rollout_id] += 1
                assert item.attempt.sequence == attempts[item.rollout_id] and item.rollout.status == "running"
                status[item.rollout_id], running[item.rollout_id] = "running", item.attempt_id
        elif kind in ("complete", "complete_many"):
            chosen = [(operation[1], operation[2])] if kind == "complete" else operation[1]
            outcomes: dict[str, bool] = {}
            for index, succeeded in chosen:
                target = pick(index, [r for r in running if r not in outcomes])
                if target is not None:
                    outcomes[target] = succeeded
            if not outcomes:
                continue
            batch = [
                AttemptCompletion(rollout_id=r, attempt_id=running[r], status="succeeded" if ok else "failed")
                for r, ok in outcomes.items()
            ]
            if kind == "complete_many" and operation[2] and ended:  # one finished attempt spoils the batch
                stale = ended[len(batch) % len(ended)]
                batch.insert(
                    len(batch) // 2, AttemptCompletion(rollout_id=stale[0], attempt_id=stale[1], status="failed")
                )
                with pytest.raises(LeaseLost):
                    await store.complete_attempts(batch)
                for target in outcomes:
                    assert (await store.get_rollout(target)).status == "running", "a refused batch completed an attempt"
                continue
            if kind == "complete":
                done = [await store.complete_attempt(batch[0].rollout_id, batch[0].attempt_id, batch[0].status)]
            else:
                done = await store.complete_attempts(batch)
            for rollout, (target, succeeded) in zip(done, outcomes.items(), strict=True):
                ended.append((target, running.pop(target)))
                if succeeded:
                    status[target] = "succeeded"
                else:
                    status[target] = "requeuing" if attempts[target] < config.max_attempts else "failed"
                assert rollout.rollout_id == target and rollout.status == status[target]
        elif kind in ("span", "span_bad"):
            target = pick(operation[1], list(running))
            if target is None:
                continue
            sequence += 1
            span = make_span(target, running[target], sequence)
            if kind == "span":
                span = make_span(target, running[target], sequence, attributes=operation[2])
                assert await store.add_spans([span]) == 1
                spans[target].add(span.span_id)
                continue
            bads: dict[str, dict[str, Any]] = {
                "deep": {"attributes": {"a": _nested(limits.MAX_JSON_DEPTH)}},
                "nan": {"attributes": {"a": [1.0, math.nan]}},
                "sequence": {"sequence_id": 2**63},
                "name": {"name": "n" * (limits.MAX_NAME_LENGTH + 1)},
            }
            bad = bads[operation[2]]
            with pytest.raises(ValueError):
                await store.add_spans([Span.model_construct(**{**span.__dict__, **bad})])
        elif kind == "cancel":
            target = pick(operation[1], list(status))
            if target is None:
                continue
            if status[target] in ("succeeded", "failed", "cancelled"):
                with pytest.raises(InvalidTransition):
                    await store.cancel_rollout(target)
                continue
            assert (await store.cancel_rollout(target)).status == "cancelled"
            status[target] = "cancelled"
            running.pop(target, None)

    for rollout_id, expected in status.items():
        assert (await store.get_rollout(rollout_id)).status == expected, rollout_id
        got = await store.get_attempts(rollout_id)
        assert [a.sequence for a in got] == list(range(1, attempts[rollout_id] + 1))
        assert [a.attempt_id for a in got if a.status == "running"] == (
            [running[rollout_id]] if rollout_id in running else []
        )
        assert {s.span_id for s in await store.query_spans(rollout_id)} == spans[rollout_id]
    assert {r.rollout_id for r in await store.query_rollouts(task_types=[task_type], limit=1000)} == set(status)


def _unchecked(**fields: Any) -> RolloutRequest:
    """A request built without validation: the store must refuse what it breaks."""
    return RolloutRequest.model_construct(**{**RolloutRequest().__dict__, **fields})


def _nested(depth: int) -> Any:
    """A JSON value of ``depth`` nested containers (lists and objects in turn)."""
    value: Any = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def _assert_each_claimed_once(expected: Sequence[str], claimed_by_worker: Sequence[Sequence[str]]) -> None:
    counts = Counter(rollout_id for claimed in claimed_by_worker for rollout_id in claimed)
    twice = sorted(r for r, n in counts.items() if n > 1)
    missing = sorted(set(expected) - set(counts))
    assert not twice, f"{len(twice)} rollouts were claimed more than once, e.g. {twice[:3]}"
    assert not missing, f"{len(missing)} rollouts were never claimed, e.g. {missing[:3]}"
    assert set(counts) == set(expected)
