"""agent_lightning.limits on Redis: an infinite lease is refused; rows stored before a limit are read repaired."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import httpx
import pytest
import redis
from agent_lightning.types import RolloutConfig, RolloutRequest, Span, new_span_id, new_trace_id
from agent_lightning_http import StoreServer
from agent_lightning_redis import RedisLightningStore
from agent_lightning_redis.url import parse_url


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_an_infinite_lease_is_refused_and_stores_nothing(redis_url: str) -> None:
    store = RedisLightningStore(redis_url)

    async def main() -> None:
        try:
            for lease in (math.inf, math.nan):
                config = RolloutConfig.model_construct(max_attempts=3, lease_seconds=lease, timeout_seconds=None)
                with pytest.raises(ValueError, match="lease_seconds"):
                    await store.enqueue_rollouts([RolloutRequest(config=config)])
                with pytest.raises(ValueError):
                    RolloutConfig(lease_seconds=lease)
            assert await store.query_rollouts() == [] and await store.claim_rollout("w") is None
        finally:
            await store.close()

    asyncio.run(main())


def test_rows_an_older_release_stored_are_read_repaired(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = RedisLightningStore(redis_url)
    prefix = parse_url(redis_url).prefix
    raw = redis.Redis.from_url(parse_url(redis_url).connect_url, decode_responses=True)

    async def main() -> None:
        running = await store.start_rollout(RolloutRequest(input="fine", config=RolloutConfig(lease_seconds=5)), "w")
        queued = await store.enqueue_rollout("queued")
        span = Span(
            rollout_id=running.rollout_id, attempt_id=running.attempt_id, sequence_id=1, trace_id=new_trace_id(),
            span_id=new_span_id(), name="op", attributes={"ok": 1},
        )  # fmt: skip
        await store.add_spans([span])
        # what an older release stored: lease_seconds=inf (a null in the body, 'inf' in the hash), a 600-deep input
        for rollout_id in (running.rollout_id, queued.rollout_id):
            body = json.loads(raw.hget(f"{prefix}ro:{rollout_id}", "body"))
            body["config"]["lease_seconds"] = None
            body["input"] = _nested(600)
            raw.hset(f"{prefix}ro:{rollout_id}", mapping={"body": json.dumps(body), "lease": "inf"})
        stored = json.loads(raw.hget(f"{prefix}sp:{running.rollout_id}", f"{running.attempt_id}:{span.span_id}"))
        stored["attributes"]["bad"] = _nested(600)
        raw.hset(f"{prefix}sp:{running.rollout_id}", f"{running.attempt_id}:{span.span_id}", json.dumps(stored))

        listed = await store.query_rollouts()
        assert [(r.input, r.config.lease_seconds) for r in listed] == [(None, 60.0), (None, 60.0)]
        (attempt,) = await store.get_attempts(running.rollout_id)
        assert math.isfinite(attempt.lease_expires_at)
        (read,) = await store.query_spans(running.rollout_id)
        assert read.attributes == {"ok": 1}
        claimed = await store.claim_rollout("w2")
        assert claimed is not None and claimed.rollout_id == queued.rollout_id
        assert claimed.attempt.lease_expires_at == pytest.approx(claimed.attempt.started_at + 60.0)
        deadline = raw.zscore(f"{prefix}leases", queued.rollout_id)
        assert deadline is not None and math.isfinite(deadline), "the claimed attempt's lease must expire"

        def over_http() -> None:
            with StoreServer(store) as server, httpx.Client(base_url=server.url) as http:
                response = http.post("/v1/query_rollouts", json={})
                assert response.status_code == 200 and len(response.json()) == 2, response.text
                response = http.post("/v1/query_spans", json={"rollout_id": running.rollout_id})
                assert response.status_code == 200 and response.json()[0]["attributes"] == {"ok": 1}, response.text

        await asyncio.to_thread(over_http)
        await store.close()

    with caplog.at_level(logging.WARNING, logger="agent_lightning.limits"):
        asyncio.run(main())
    raw.close()
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "agent_lightning.limits")
    assert "lease_seconds None replaced by 60.0" in warned and "nested more than" in warned
