"""The store server's HTTP surface: API key, body limits, malformed input, status codes, OpenAPI, replay, plugin."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agent_lightning import plugins
from agent_lightning.errors import DuplicateId, StoreError
from agent_lightning.store import InMemoryLightningStore, open_store, store_schemes
from agent_lightning.store.base import LightningStore
from agent_lightning.types import RolloutConfig, RolloutRequest, Span, new_span_id, new_trace_id
from agent_lightning_http import HttpLightningStore, StoreAuthError, StoreServer
from agent_lightning_http import plugin as server_plugin
from agent_lightning_http.protocol import API_KEY_ENV
from agent_lightning_testkit import snapshot

KEY = "s3cret-key"
LONG = RolloutConfig(lease_seconds=3600)


@pytest.fixture
def server(store: InMemoryLightningStore) -> Iterator[StoreServer]:
    with StoreServer(store, max_body_bytes=64_000, max_wait=0.5) as running:
        yield running


@pytest.fixture
def keyed(store: InMemoryLightningStore) -> Iterator[StoreServer]:
    with StoreServer(store, api_key=KEY) as running:
        yield running


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def span(rollout_id: str, attempt_id: str, sequence_id: int, **fields: Any) -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        name=f"step-{sequence_id}",
        attributes={"text": "x" * 500},
        **fields,
    )


async def _state(url: str, **options: Any) -> dict[str, Any]:
    client = HttpLightningStore(url, **options)
    try:
        return await snapshot(client)
    finally:
        await client.close()


# ---------------------------------------------------------------------- API key
def test_requests_without_the_api_key_get_401_and_store_nothing(keyed: StoreServer, store: LightningStore) -> None:
    body = {"requests": [{"input": "sneaky"}]}
    with httpx.Client(base_url=keyed.url) as http:
        missing = http.post("/v1/enqueue_rollouts", json=body)
        wrong = http.post("/v1/enqueue_rollouts", json=body, headers={"authorization": "Bearer nope"})
        wrong_header = http.post("/v1/enqueue_rollouts", json=body, headers={"x-api-key": "nope"})
        docs = http.get("/openapi.json")
        assert http.get("/health").status_code == 200, "the liveness check needs no key"
        for response in (missing, wrong, wrong_header, docs):
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "Unauthorized"
        assert "missing API key" in missing.json()["error"]["message"]
        assert "wrong API key" in wrong.json()["error"]["message"]
        assert run(store.query_rollouts()) == [], "a refused request stored something"
        bearer = http.post("/v1/enqueue_rollouts", json=body, headers={"authorization": f"Bearer {KEY}"})
        header = http.post("/v1/query_rollouts", json={}, headers={"x-api-key": KEY})
    assert bearer.status_code == 200 and header.status_code == 200
    assert [r["input"] for r in header.json()] == ["sneaky"]


def test_client_sends_the_api_key_from_its_option_or_the_environment(
    keyed: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        monkeypatch.delenv(API_KEY_ENV, raising=False)
        without = HttpLightningStore(keyed.url)
        with pytest.raises(StoreAuthError, match=API_KEY_ENV):
            await without.enqueue_rollout("x")
        wrong = HttpLightningStore(keyed.url, api_key="nope")
        with pytest.raises(StoreAuthError, match="wrong API key"):
            await wrong.get_latest_resources()
        given = HttpLightningStore(keyed.url, api_key=KEY)
        await given.enqueue_rollout("with option")
        monkeypatch.setenv(API_KEY_ENV, KEY)
        from_env = HttpLightningStore(keyed.url)
        assert [r.input for r in await from_env.query_rollouts()] == ["with option"]
        for client in (without, wrong, given, from_env):
            await client.close()

    run(main())


# ---------------------------------------------------------------------- limits and malformed input
def test_oversized_bodies_get_413_and_store_nothing(server: StoreServer, store: LightningStore) -> None:
    item = run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    spans = [span(item.rollout_id, item.attempt_id, n) for n in range(200)]  # ~150 kB > 64 kB

    async def through_client() -> None:
        client = HttpLightningStore(server.url)
        with pytest.raises(ValueError, match="too large"):
            await client.add_spans(spans)
        assert await client.add_spans(spans[:10]) == 10, "a batch under the limit still goes through"
        await client.close()

    run(through_client())
    assert len(run(store.query_spans(item.rollout_id))) == 10
    before = run(_state(server.url))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced on the bytes read
        yield b"["
        for index, one in enumerate(spans[10:]):
            yield (b"," if index else b"") + one.model_dump_json().encode()
        yield b"]"

    with httpx.Client(base_url=server.url) as http:
        streamed = http.post("/v1/add_spans", content=chunks())
        declared = http.post("/v1/enqueue_rollouts", content=b" " * 100_000)  # refused by its Content-Length
    assert streamed.status_code == 413 and streamed.json()["error"]["type"] == "PayloadTooLarge"
    assert declared.status_code == 413
    assert run(_state(server.url)) == before


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/add_spans", b"{not json"),
        ("/v1/add_spans", b'{"spans": []}'),
        ("/v1/add_spans", b'[{"name": "no ids"}]'),
        ("/v1/enqueue_rollouts", b'{"requests": [1, 2'),
        ("/v1/enqueue_rollouts", b'{"requests": [{"config": {"max_attempts": 0}}]}'),
        ("/v1/enqueue_rollouts", b'{"requests": [{"input": 1}], "unexpected": true}'),
        ("/v1/complete_attempt", b'{"rollout_id": "r", "attempt_id": "a", "status": "lost"}'),
        ("/v1/add_resources", b'{"resources": {"p": {"resource_type": "spaceship"}}}'),
        ("/v1/query_rollouts", b'{"limit": -1}'),
        ("/v1/claim_rollout", b'{"worker_id": ""}'),
    ],
)
def test_malformed_payloads_get_422_and_store_nothing(
    server: StoreServer, store: LightningStore, path: str, body: bytes
) -> None:
    item = run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    run(store.add_spans([span(item.rollout_id, item.attempt_id, 1)]))
    run(store.enqueue_rollout("queued", config=LONG))
    before = run(_state(server.url))
    with httpx.Client(base_url=server.url) as http:
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "ValueError" and error["message"]
    assert run(_state(server.url)) == before


def test_a_span_with_a_bad_field_rejects_the_whole_batch(server: StoreServer, store: LightningStore) -> None:
    item = run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    good = json.loads(span(item.rollout_id, item.attempt_id, 1).model_dump_json())
    bad = {**json.loads(span(item.rollout_id, item.attempt_id, 2).model_dump_json()), "trace_id": "xyz"}
    with httpx.Client(base_url=server.url) as http:
        response = http.post("/v1/add_spans", json=[good, bad])
        nan = http.post(
            "/v1/add_spans",
            content=json.dumps([good, {**good, "span_id": new_span_id(), "start_time": float("nan")}]).encode(),
        )
    assert response.status_code == 422 and "trace_id" in response.json()["error"]["message"]
    assert nan.status_code == 422
    assert run(store.query_spans(item.rollout_id)) == []


# ---------------------------------------------------------------------- status codes
def test_store_errors_map_to_status_codes_and_back(server: StoreServer, store: LightningStore) -> None:
    done = run(store.start_rollout(RolloutRequest(rollout_id="dup", config=LONG), "w"))
    run(store.complete_attempt(done.rollout_id, done.attempt_id, "succeeded"))
    with httpx.Client(base_url=server.url) as http:
        cases = {
            "NotFound": http.post("/v1/get_rollout", json={"rollout_id": "nope"}),
            "DuplicateId": http.post("/v1/enqueue_rollouts", json={"requests": [{"rollout_id": "dup"}]}),
            "LeaseLost": http.post(
                "/v1/complete_attempt", json={"rollout_id": "dup", "attempt_id": done.attempt_id, "status": "failed"}
            ),
            "InvalidTransition": http.post("/v1/cancel_rollout", json={"rollout_id": "dup"}),
        }
    expected = {"NotFound": 404, "DuplicateId": 409, "LeaseLost": 409, "InvalidTransition": 409}
    for kind, response in cases.items():
        assert response.status_code == expected[kind], (kind, response.text)
        assert response.json()["error"]["type"] == kind

    async def via_client() -> None:
        client = HttpLightningStore(server.url)
        with pytest.raises(DuplicateId, match="dup"):
            await client.enqueue_rollout("again", rollout_id="dup")
        await client.close()

    run(via_client())


# ---------------------------------------------------------------------- documentation
def test_openapi_documents_every_store_method(server: StoreServer) -> None:
    methods = sorted(
        name.lstrip("_")  # a checked public method's work is the abstract _-prefixed one
        for name in (*LightningStore.__abstractmethods__, "wait_for_rollouts", "claim_rollouts", "complete_attempts")
        if name not in ("close",)  # lifecycle, not an endpoint
    )
    with httpx.Client(base_url=server.url) as http:
        spec = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    assert spec["info"]["title"] == "Agent Lightning store server"
    for name in methods:
        operation = spec["paths"][f"/v1/{name}"]["post"]
        assert operation["summary"] and "200" in operation["responses"], name
    add_spans = spec["paths"]["/v1/add_spans"]["post"]
    assert add_spans["requestBody"]["content"]["application/json"]["schema"]["items"]["$ref"].endswith("/Span")
    schemas = spec["components"]["schemas"]
    assert {"Span", "Rollout", "RolloutRequest", "AttemptedRollout", "ErrorResponse"} <= set(schemas)
    for changing in ("claim_rollout", "claim_rollouts", "complete_attempts"):
        assert "idempotency-key" in {p["name"] for p in spec["paths"][f"/v1/{changing}"]["post"]["parameters"]}


# ---------------------------------------------------------------------- idempotency and long polls
def test_a_retried_claim_with_the_same_key_gets_the_same_answer(server: StoreServer, store: LightningStore) -> None:
    run(store.enqueue_rollouts([RolloutRequest(input=i, config=LONG) for i in range(2)]))
    with httpx.Client(base_url=server.url) as http:
        first = http.post("/v1/claim_rollout", json={"worker_id": "w"}, headers={"idempotency-key": "k1"})
        again = http.post("/v1/claim_rollout", json={"worker_id": "w"}, headers={"idempotency-key": "k1"})
        other = http.post("/v1/claim_rollout", json={"worker_id": "w"}, headers={"idempotency-key": "k2"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json(), "a retry must not claim a second rollout"
    assert other.json()["rollout"]["rollout_id"] != first.json()["rollout"]["rollout_id"]
    attempts = run(store.get_attempts(first.json()["rollout"]["rollout_id"]))
    assert len(attempts) == 1


def test_long_polls_are_capped_server_side_and_continued_by_the_client(
    server: StoreServer, store: LightningStore
) -> None:
    pending = run(store.enqueue_rollout("never finishes", config=LONG))
    run(store.subscribe("g"))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        began = time.monotonic()
        held = http.post("/v1/wait_for_rollouts", json={"rollout_ids": [pending.rollout_id], "timeout": 20})
        assert held.status_code == 200 and held.json() == []
        assert time.monotonic() - began < 5, "the server held a long poll past its max_wait"

    async def via_client() -> None:
        client = HttpLightningStore(server.url, long_poll=0.3)
        began = time.monotonic()
        assert await client.wait_for_rollouts([pending.rollout_id], timeout=1.2) == []
        assert await client.pull_completed("g", timeout=1.0) == []
        assert time.monotonic() - began >= 2.0, "the client must keep polling until its own timeout"
        await client.close()

    run(via_client())


# ---------------------------------------------------------------------- plugin and CLI
def test_plugin_opens_http_urls_and_registers_the_serve_command(server: StoreServer) -> None:
    registered = plugins.get_plugin_manager().is_registered(server_plugin)
    if not registered:
        plugins.register(server_plugin, name="test-store-server")
    try:
        assert {"http", "https"} <= set(store_schemes())
        client = open_store(server.url, retry_timeout=1.0)
        assert isinstance(client, HttpLightningStore) and client.url == server.url
        assert run(client.get_latest_resources()) is None
        with pytest.raises(ValueError, match="retry_timeout"):
            open_store(server.url, retries=3)
    finally:
        if not registered:
            plugins.unregister("test-store-server")
    parser = argparse.ArgumentParser(prog="agl")
    server_plugin.agl_register_commands(subparsers=parser.add_subparsers(dest="command"))
    args = parser.parse_args(["store", "serve", "--store", "memory://", "--port", "0"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 0, None), "binds loopback by default"
    assert args.func is server_plugin._serve


def test_serve_command_runs_until_terminated(tmp_path: Any) -> None:
    env = {**os.environ, API_KEY_ENV: KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_lightning_http", "--store", "memory://", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "agl store serve: serving memory://" in line, line + (process.stderr.read() if process.stderr else "")
        url = line.split(" at ")[1].split()[0]
        with httpx.Client(base_url=url) as http:
            assert http.post("/v1/query_rollouts", json={}).status_code == 401, "the key comes from the environment"
            assert http.post("/v1/query_rollouts", json={}, headers={"x-api-key": KEY}).json() == []
        process.terminate()
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_the_plugin_module_imports_no_web_stack() -> None:
    code = (
        "import sys, agent_lightning, agent_lightning_http, agent_lightning_http.plugin; "
        "print(sorted(m for m in ('fastapi', 'httpx', 'uvicorn', 'starlette', 'orjson') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_store_error_of_an_unexpected_server_answer_names_the_server() -> None:
    async def main() -> None:
        with StoreServer(InMemoryLightningStore()) as running:
            client = HttpLightningStore(running.url + "/not-the-api")
            with pytest.raises(StoreError, match=r"answered HTTP 404"):
                await client.get_rollout("x")
            await client.close()

    run(main())


# ---------------------------------------------------------------------- add_spans requests
class CountingApp:
    """An ASGI wrapper that counts the span requests the server receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.span_requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/add_spans":
            self.span_requests += 1
        await self.app(scope, receive, send)


def test_add_spans_sends_one_request_per_call_and_a_refused_call_fails_alone(store: LightningStore) -> None:
    from agent_lightning.errors import NotFound
    from agent_lightning_http import create_app
    from agent_lightning_proxy.serving import ServerThread

    counting = CountingApp(create_app(store))
    thread = ServerThread(counting, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{thread.port}"
    item = run(store.start_rollout(RolloutRequest(config=LONG), "w"))
    spans = [span(item.rollout_id, item.attempt_id, n) for n in range(201)]
    bad = span("no-such-rollout", item.attempt_id, 999)

    async def main() -> tuple[int, int, list[Any]]:
        client = HttpLightningStore(url)
        try:
            whole = await client.add_spans(spans[:100])
            requests = counting.span_requests
            calls = [client.add_spans(spans[100 + 10 * n : 110 + 10 * n]) for n in range(10)]
            calls.insert(5, client.add_spans([spans[200], bad]))  # refused: must fail alone, storing nothing
            return whole, requests, await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.close()

    try:
        whole, requests, results = run(main())
    finally:
        thread.stop()
    assert whole == 100 and requests == 1, "one call's spans travel in one request"
    assert counting.span_requests == 12, "each concurrent call is a request of its own"
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], NotFound), refused
    assert results[:5] == [10] * 5 and results[6:] == [10] * 5
    stored = {s.span_id for s in run(store.query_spans(item.rollout_id))}
    assert stored == {s.span_id for s in spans[:200]}, "only the refused call's spans are missing"
