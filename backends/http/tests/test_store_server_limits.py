"""The store server applies agent_lightning.limits while parsing: a JSON 422 naming the field, nothing stored."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agent_lightning.limits import MAX_INT
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.types import RolloutConfig, RolloutRequest
from agent_lightning_http import StoreServer
from agent_lightning_testkit import snapshot

LONG = RolloutConfig(lease_seconds=3600)


@pytest.fixture
def http(store: InMemoryLightningStore) -> Iterator[httpx.Client]:
    with StoreServer(store) as server, httpx.Client(base_url=server.url) as client:
        yield client


def _post(http: httpx.Client, method: str, body: str) -> httpx.Response:
    return http.post(f"/v1/{method}", content=body, headers={"content-type": "application/json"})


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "ValueError" and all(w in error["message"] for w in words), error


def test_a_600_deep_input_is_a_422_and_not_stored(http: httpx.Client, store: InMemoryLightningStore) -> None:
    before = asyncio.run(snapshot(store))
    body = json.dumps({"requests": [{"input": "fine"}, {"input": _nested(600)}]})
    _refused(_post(http, "enqueue_rollouts", body), "input", "nested too deep")
    assert asyncio.run(snapshot(store)) == before
    assert http.post("/v1/query_rollouts", json={}).json() == []
    assert http.post("/v1/claim_rollout", json={"worker_id": "w"}).json() is None


def test_a_600_deep_span_attribute_is_a_422(http: httpx.Client, store: InMemoryLightningStore) -> None:
    item = asyncio.run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    span = {
        "rollout_id": item.rollout_id, "attempt_id": item.attempt_id, "sequence_id": 1, "trace_id": "1" * 32,
        "span_id": "2" * 16, "parent_id": None, "name": "op", "kind": "custom", "attributes": {"a": _nested(600)},
        "start_time": 1.0, "end_time": 2.0, "status": {"code": "ok", "message": None},
    }  # fmt: skip
    _refused(_post(http, "add_spans", json.dumps([span])), "nested too deep")
    assert http.post("/v1/query_spans", json={"rollout_id": item.rollout_id}).json() == []


@pytest.mark.parametrize("now", ["1e309", "-1e309", "NaN", "Infinity", "1e12", "0"])
def test_reap_expired_refuses_a_client_clock(http: httpx.Client, store: InMemoryLightningStore, now: str) -> None:
    item = asyncio.run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    _refused(_post(http, "reap_expired", '{"now": ' + now + "}"), "now", "own clock")
    (attempt,) = asyncio.run(store.get_attempts(item.rollout_id))
    assert attempt.status == "running" and attempt.ended_at is None
    assert _post(http, "reap_expired", '{"now": null}').json() == []
    assert _post(http, "reap_expired", "{}").json() == []
    assert (asyncio.run(store.get_rollout(item.rollout_id))).status == "running"


def test_add_spans_with_a_string_status_is_a_json_422(http: httpx.Client, store: InMemoryLightningStore) -> None:
    item = asyncio.run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    span = {
        "rollout_id": item.rollout_id, "attempt_id": item.attempt_id, "sequence_id": 1, "trace_id": "1" * 32,
        "span_id": "2" * 16, "parent_id": None, "name": "op", "kind": "custom", "attributes": {},
        "start_time": 1.0, "end_time": 2.0, "status": "ok",
    }  # fmt: skip
    _refused(_post(http, "add_spans", json.dumps([span])), "status")
    span["status"] = {"code": "ok"}  # a missing message is pydantic's default
    assert _post(http, "add_spans", json.dumps([span])).json() == {"count": 1}


@pytest.mark.parametrize("value", [2**63, 2**64, 10**30])
def test_integers_beyond_64_bits_are_a_422(http: httpx.Client, store: InMemoryLightningStore, value: int) -> None:
    item = asyncio.run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    asyncio.run(store.subscribe("g"))
    for method, body in [
        ("query_rollouts", {"limit": value}),
        ("query_rollouts", {"offset": value}),
        ("query_spans", {"rollout_id": item.rollout_id, "after_sequence_id": value}),
        ("query_spans", {"rollout_id": item.rollout_id, "limit": value}),
        ("pull_completed", {"group": "g", "max_count": value}),
    ]:
        _refused(_post(http, method, json.dumps(body)), next(iter(body.keys() - {"rollout_id", "group"})))
    assert http.post("/v1/query_rollouts", json={"offset": MAX_INT}).json() == []


def test_non_finite_durations_are_a_422(http: httpx.Client, store: InMemoryLightningStore) -> None:
    for config in ('{"lease_seconds": 1e309}', '{"lease_seconds": NaN}', '{"timeout_seconds": Infinity}'):
        _refused(_post(http, "enqueue_rollouts", '{"requests": [{"config": ' + config + "}]}"), "config")
    _refused(_post(http, "enqueue_rollouts", '{"requests": [{"config": {"lease_seconds": 1e12}}]}'), "lease_seconds")
    assert asyncio.run(store.query_rollouts()) == []
    assert math.isfinite(RolloutConfig().lease_seconds)


def test_over_long_ids_are_a_422_naming_the_limit(http: httpx.Client, store: InMemoryLightningStore) -> None:
    for size in (257, 260_000, 1_000_000):
        response = http.post("/v1/enqueue_rollouts", json={"requests": [{"rollout_id": "r" * size}]})
        _refused(response, "rollout_id", "256 characters")
    _refused(http.post("/v1/claim_rollout", json={"worker_id": "w" * 300}), "worker_id", "256 characters")
    assert asyncio.run(store.query_rollouts()) == []
