"""The synchronous facade over the in-memory store, and the stores' span check."""

from __future__ import annotations

import asyncio
import threading

import pytest
from agent_lightning.errors import LeaseLost, NotFound
from agent_lightning.store import InMemoryLightningStore, SyncStore
from agent_lightning.store.sync import EventLoopThread
from agent_lightning.types import RolloutRequest


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


# ---------------------------------------------------------------------- the stores' fast span check
def _fields(**changes: object) -> dict[str, object]:
    from agent_lightning.types import SpanStatus

    fields: dict[str, object] = {
        "rollout_id": "ro-1",
        "attempt_id": "at-1",
        "sequence_id": 3,
        "trace_id": "a" * 32,
        "span_id": "b" * 16,
        "parent_id": None,
        "name": "op",
        "kind": "llm",
        "attributes": {"tokens": [1, 2, 3], "nested": {"x": [1.5, {"y": None}], "t": (1, 2)}, "ok": True},
        "start_time": 10.0,
        "end_time": 11.0,
        "status": SpanStatus(code="ok"),
    }
    fields.update(changes)
    return fields


_VARIANTS: list[dict[str, object]] = [
    {},
    {"trace_id": "xyz"},
    {"trace_id": "A" * 32},
    {"trace_id": 7},
    {"span_id": "g" * 16},
    {"parent_id": "not-hex-at-all!"},
    {"parent_id": "b" * 16},
    {"parent_id": "c" * 16},
    {"attributes": {"score": float("nan")}},
    {"attributes": {"deep": [1.0, {"x": float("inf")}]}},
    {"attributes": {"obj": object()}},
    {"attributes": {1: "non-string key"}},
    {"attributes": {"nested": {2: "non-string key"}}},
    {"attributes": {"t": (1, (2, 3))}},
    {"attributes": []},
    {"start_time": float("nan")},
    {"start_time": 10},
    {"start_time": 10.0, "end_time": 5.0},
    {"end_time": None},
    {"end_time": float("inf")},
    {"sequence_id": -1},
    {"sequence_id": True},
    {"sequence_id": 2.0},
    {"name": ""},
    {"name": 5},
    {"rollout_id": ""},
    {"kind": "bogus"},
    {"kind": ["llm"]},
    {"status": "ok"},
    {"status": {"code": "error", "message": "m"}},
    {"status": "bogus-status"},
]


@pytest.mark.parametrize("changes", _VARIANTS, ids=[str(v) for v in _VARIANTS])
def test_stores_check_spans_exactly_like_the_model(changes: dict[str, object]) -> None:
    """``checked_copy`` (what every store runs on ``add_spans``) accepts what the model accepts, no more."""
    from agent_lightning.types import Span, SpanStatus
    from agent_lightning.types.spans import checked, checked_copy

    if changes.get("status") == "bogus-status":  # a status instance that skipped validation too
        changes = {**changes, "status": SpanStatus.model_construct(code="bogus", message=None)}
    fields = _fields(**changes)
    sneaky = Span.model_construct(**fields)  # type: ignore[arg-type]
    if isinstance(fields["status"], SpanStatus):
        fields["status"] = dict(fields["status"].__dict__)  # what the model checks an instance against
    try:
        expected = Span.model_validate(fields)
    except ValueError:
        with pytest.raises(ValueError):
            checked_copy(sneaky)
        with pytest.raises(ValueError):
            checked(sneaky)
        return
    copied = checked_copy(sneaky)
    assert copied == expected.model_copy(update={"attributes": copied.attributes})
    assert _as_json(copied.attributes) == _as_json(expected.attributes)
    assert copied.attributes is not sneaky.attributes
    same = checked(sneaky)  # the same checks without the copy
    assert same == expected.model_copy(update={"attributes": same.attributes})
    assert _as_json(same.attributes) == _as_json(expected.attributes)


def test_checked_copies_alias_nothing() -> None:
    from agent_lightning.types import Span
    from agent_lightning.types.spans import checked_copy, copy_span

    span = Span(**_fields())  # type: ignore[arg-type]
    for copy in (checked_copy(span), copy_span(span)):
        assert copy == span.model_copy(update={"attributes": copy.attributes})
        assert copy.attributes["tokens"] is not span.attributes["tokens"]
        assert copy.attributes["nested"]["x"][1] is not span.attributes["nested"]["x"][1]  # type: ignore[index]
        copy.attributes["nested"]["x"][1]["y"] = 1  # type: ignore[index]
        assert span.attributes["nested"]["x"][1] == {"y": None}  # type: ignore[index]


def _as_json(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def test_memory_store_keeps_spans_that_json_cannot_hold() -> None:
    """Spans are kept as JSON bytes (out of the garbage collector's way); a lone surrogate is kept as a copy."""
    from agent_lightning.types import RolloutConfig, RolloutRequest, Span

    async def main() -> None:
        store = InMemoryLightningStore()
        item = await store.start_rollout(RolloutRequest(config=RolloutConfig(lease_seconds=3600)), "w")
        fields = {**_fields(), "rollout_id": item.rollout_id, "attempt_id": item.attempt_id}
        odd = Span(**{**fields, "attributes": {"text": "half a pair: \ud800", "big": 2**70}})  # type: ignore[arg-type]
        plain = Span(**{**fields, "span_id": "c" * 16, "sequence_id": 4})  # type: ignore[arg-type]
        await store.add_spans([odd, plain])
        got = await store.query_spans(item.rollout_id)
        assert got[0] == odd and got[0].attributes["big"] == 2**70
        assert _as_json(got[1].attributes) == _as_json(plain.attributes)
        got[0].attributes["text"] = "changed"
        assert (await store.query_spans(item.rollout_id))[0] == odd

    asyncio.run(main())


def test_the_contracts_default_count_rollouts_pages_through_query_rollouts() -> None:
    from agent_lightning.store.base import LightningStore

    class Paging(InMemoryLightningStore):
        count_rollouts = LightningStore.count_rollouts

    async def main() -> None:
        for store in (Paging(), InMemoryLightningStore()):
            await store.enqueue_rollouts([RolloutRequest(input=i, task_type=f"t{i % 3}") for i in range(2500)])
            claimed = await store.claim_rollout("w")
            assert claimed is not None
            assert await store.count_rollouts() == {
                "t0": {"running": 1, "queuing": 833},
                "t1": {"queuing": 833},
                "t2": {"queuing": 833},
            }
            assert await store.count_rollouts(status=["queuing"], task_types=["t0"]) == {"t0": {"queuing": 833}}

    asyncio.run(main())
