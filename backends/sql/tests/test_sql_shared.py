"""The shared pieces on their own: row codec, JSON column type, schema tables, cross-loop waker."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
import sqlalchemy as sa
from agent_lightning.types import (
    LLM,
    Attempt,
    PromptTemplate,
    ResourcesSnapshot,
    Rollout,
    RolloutConfig,
    Span,
    SpanStatus,
    new_span_id,
    new_trace_id,
)
from agent_lightning_sql import SCHEMA_VERSION, TABLES, codec
from agent_lightning_sql.schema import ATTEMPTS, RESOURCES, ROLLOUTS, SPANS, VERSION
from agent_lightning_sql.waker import Waker


def _span(**changes: object) -> Span:
    span = Span(
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=3,
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        parent_id=new_span_id(),
        name="llm.call",
        kind="llm",
        attributes={"tokens": [1, 2, 3], "reward": 0.5, "ok": True, "nested": {"a": None}},
        start_time=10.0,
        end_time=11.5,
        status=SpanStatus(code="error", message="boom"),
    )
    return Span.model_construct(**{**span.__dict__, **changes}) if changes else span


@pytest.fixture
def engine() -> sa.Engine:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        for table in TABLES:
            table.create(conn)
    return engine


def test_every_model_round_trips_through_its_table(engine: sa.Engine) -> None:
    rollout = Rollout(
        rollout_id="ro-1",
        task_type="math",
        input={"q": "2+2", "list": [1, 2.5, None]},
        config=RolloutConfig(max_attempts=2, lease_seconds=5, timeout_seconds=9),
        metadata={"split": "dev"},
        created_at=123.25,
    )
    attempt = Attempt(rollout_id="ro-1", attempt_id="at-1", sequence=1, started_at=5.0, lease_expires_at=10.0)
    span = _span()
    snapshot = ResourcesSnapshot(
        resources_id="rs-1",
        version=1,
        resources={"p": PromptTemplate(template="hi {x}"), "m": LLM(endpoint="http://x/v1", model="m")},
        metadata={"step": 1},
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(ROLLOUTS).values(codec.rollout_values(rollout)))
        values = codec.attempt_values(attempt, rollout.config.timeout_seconds)
        assert values["deadline_at"] == 14.0
        conn.execute(sa.insert(ATTEMPTS).values(values))
        conn.execute(sa.insert(SPANS).values({**codec.span_values(span), "attempt_seq": 1}))
        conn.execute(sa.insert(RESOURCES).values(codec.resources_values(snapshot)))
    with engine.connect() as conn:
        assert codec.rollout_from_row(conn.execute(sa.select(ROLLOUTS)).one()) == rollout
        assert codec.attempt_from_row(conn.execute(sa.select(ATTEMPTS)).one()) == attempt
        assert codec.span_from_row(conn.execute(sa.select(SPANS)).one()) == span
        assert codec.resources_from_row(conn.execute(sa.select(RESOURCES)).one()) == snapshot


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trace_id": "xyz"}, "trace_id"),
        ({"span_id": "G" * 16}, "span_id"),
        ({"parent_id": "not-hex"}, "parent_id"),
        ({"attributes": {"x": math.nan}}, "attributes"),
        ({"attributes": {"deep": [{"x": math.inf}]}}, "attributes"),
        ({"attributes": {"obj": object()}}, "attributes"),
        ({"start_time": math.nan}, "start_time"),
        ({"end_time": 1.0}, "before start_time"),
        ({"sequence_id": -1}, "sequence_id"),
        ({"name": ""}, "name"),
        ({"kind": "bogus"}, "kind"),
    ],
)
def test_spans_that_skipped_validation_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        codec.span_batch_values([_span(), _span(**changes)])


def test_a_batch_rejects_non_spans_and_repeated_ids() -> None:
    span = _span()
    with pytest.raises(TypeError, match=r"spans\[1\] is a dict"):
        codec.span_batch_values([span, {"span_id": "x"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="twice"):
        codec.span_batch_values([span, span])
    assert codec.span_batch_values([]) == []


def test_dumps_names_the_field_it_cannot_store() -> None:
    assert codec.dumps({"a": [1, "é"]}, "x") == '{"a":[1,"\\u00e9"]}'
    with pytest.raises(ValueError, match="rollout 'r' input cannot be stored"):
        codec.dumps({"a": math.nan}, "rollout 'r' input")
    with pytest.raises(ValueError, match="metadata cannot be stored"):
        codec.dumps({"a": {1, 2}}, "metadata")


def test_schema_version_table_and_indexes() -> None:
    assert SCHEMA_VERSION >= 1 and VERSION.name == "agl_schema_version"
    assert all(table.name.startswith("agl_") for table in TABLES)
    span_indexes = {tuple(c.name for c in index.columns) for index in SPANS.indexes}
    assert ("rollout_id", "attempt_seq", "sequence_id") in span_indexes
    assert [c.name for c in SPANS.primary_key.columns] == ["rollout_id", "attempt_id", "span_id"]
    rollout_indexes = {tuple(c.name for c in index.columns) for index in ROLLOUTS.indexes}
    assert ("status", "seq") in rollout_indexes and ("status", "task_type", "mode") in rollout_indexes


def test_waker_wakes_waiters_in_other_threads_loops_and_never_loses_a_change() -> None:
    waker = Waker()
    woken: list[float] = []

    def waiter(version: int) -> None:
        async def main() -> None:
            began = time.monotonic()
            await waker.wait(version, 5.0)
            woken.append(time.monotonic() - began)

        asyncio.run(main())

    threads = [threading.Thread(target=waiter, args=(waker.version,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    waker.notify()
    for thread in threads:
        thread.join(5)
    assert len(woken) == 3 and max(woken) < 2

    stale = waker.version
    waker.notify()  # a change between reading the version and waiting: wait returns at once

    async def late() -> float:
        began = time.monotonic()
        await waker.wait(stale, 5.0)
        return time.monotonic() - began

    assert asyncio.run(late()) < 0.5
