"""OTLP/HTTP ingestion: real OpenTelemetry SDKs and instrumentations exporting to a real store server."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from agent_lightning import semconv
from agent_lightning.store import InMemoryLightningStore
from agent_lightning.trajectory import build_episode
from agent_lightning.types import AttemptedRollout, RolloutConfig, RolloutRequest, Span
from agent_lightning_http import StoreServer
from agent_lightning_http.otlp import OTLP_SEQUENCE_BASE
from agent_lightning_proxy import LLMProxy
from agent_lightning_testkit.adapters import calculator_script
from agent_lightning_testkit.scripted_llm import ScriptedLLM
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

KEY = "otlp-key"
AUTH = {"authorization": f"Bearer {KEY}"}
PB = {"content-type": "application/x-protobuf", **AUTH}
JS = {"content-type": "application/json", **AUTH}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def server(store: InMemoryLightningStore) -> Iterator[StoreServer]:
    with StoreServer(store, api_key=KEY, max_body_bytes=200_000) as running:
        yield running


def started(store: InMemoryLightningStore, question: str = "What is 25 * 17?") -> AttemptedRollout:
    request = RolloutRequest(input={"question": question}, config=RolloutConfig(lease_seconds=3600))
    return asyncio.run(store.start_rollout(request))


def spans_of(store: InMemoryLightningStore, rollout_id: str) -> list[Span]:
    return asyncio.run(store.query_spans(rollout_id))


# ---------------------------------------------------------------------- instrumented agents through the proxy
def calculator_agent(client: openai.OpenAI, question: str) -> str:
    """An ordinary OpenAI-SDK tool loop: ask, run the calculator it asks for, ask again."""
    messages: list[Any] = [{"role": "system", "content": "Use the calculator."}, {"role": "user", "content": question}]
    reply = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
    message = reply.choices[0].message
    assert message.tool_calls, "the scripted model asks for the calculator first"
    call = message.tool_calls[0]
    left, right = json.loads(call.function.arguments)["expression"].split("*")
    result = str(int(left) * int(right))
    messages += [message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": result}]
    final = client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)
    return final.choices[0].message.content or ""


def run_agent(
    store: InMemoryLightningStore,
    server: StoreServer,
    instrumentor: Any,
    attempted: AttemptedRollout,
    *,
    resource: dict[str, str],
    headers: dict[str, str],
) -> ScriptedLLM:
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-agent", **resource}))
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", headers={**AUTH, **headers})
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor.instrument(tracer_provider=provider)
    try:
        with ScriptedLLM(calculator_script) as upstream, LLMProxy(store, upstream.url) as proxy:
            rid, aid = attempted.rollout_id, attempted.attempt.attempt_id
            client = openai.OpenAI(base_url=f"{str(proxy.url).removesuffix('/v1')}/rollout/{rid}/attempt/{aid}/v1",
                                   api_key="unused")  # fmt: skip
            with provider.get_tracer("agent").start_as_current_span("agent") as root:
                answer = calculator_agent(client, "What is 25 * 17?")
                with provider.get_tracer("agent").start_as_current_span("reward") as reward:
                    reward.set_attribute(semconv.REWARD_VALUE, 1.0 if "425" in answer else 0.0)
                    reward.set_attribute(semconv.REWARD_TARGET_SPAN_ID, f"{root.get_span_context().span_id:016x}")
            assert proxy.flush()
            assert provider.force_flush()
            return upstream
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def check_episode(store: InMemoryLightningStore, attempted: AttemptedRollout, upstream: ScriptedLLM) -> list[Span]:
    """Token ids from the proxy, messages and tool calls from the OTel spans, one sample per call."""
    spans = spans_of(store, attempted.rollout_id)
    otel_llm = sorted((s for s in spans if s.kind == "llm" and s.attributes.get(semconv.ADAPTER) == "otlp"),
                      key=lambda s: s.start_time)  # fmt: skip
    records = sorted((s for s in spans if s.kind == "llm" and semconv.COMPLETION_TOKEN_IDS in s.attributes),
                     key=lambda s: s.start_time)  # fmt: skip
    assert len(otel_llm) == 2 and len(records) == 2, [(s.name, s.kind) for s in spans]
    assert all(s.sequence_id == OTLP_SEQUENCE_BASE and s.attempt_id == attempted.attempt.attempt_id for s in otel_llm)
    for otel, record in zip(otel_llm, records, strict=True):
        assert otel.attributes[semconv.GEN_AI_RESPONSE_ID] == record.attributes[semconv.GEN_AI_RESPONSE_ID]
        assert semconv.COMPLETION_TOKEN_IDS not in otel.attributes
    first_in, first_out = (
        otel_llm[0].attributes[semconv.GEN_AI_INPUT_MESSAGES],
        otel_llm[0].attributes[semconv.GEN_AI_OUTPUT_MESSAGES],
    )
    assert first_in == [
        {"role": "system", "content": "Use the calculator."},
        {"role": "user", "content": "What is 25 * 17?"},
    ]
    call = first_out[0]["tool_calls"][0]
    assert first_out[0]["role"] == "assistant"
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "25 * 17"}
    second_in = otel_llm[1].attributes[semconv.GEN_AI_INPUT_MESSAGES]
    assert second_in[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "425"}
    assert otel_llm[1].attributes[semconv.GEN_AI_OUTPUT_MESSAGES][0]["content"] == "The answer is 425."
    assert otel_llm[0].attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == len(upstream.calls[0].prompt_token_ids[0])

    rollout = asyncio.run(store.get_rollout(attempted.rollout_id))
    episode = build_episode(rollout, spans)
    assert episode.warnings == []
    assert episode.reward == 1.0
    assert [s.span_ids for s in episode.samples] == [[r.span_id] for r in records]
    for sample, scripted in zip(episode.samples, upstream.calls, strict=True):
        assert sample.prompt_token_ids == scripted.prompt_token_ids[0]
        assert sample.completion_token_ids == scripted.choices[0].token_ids
        assert sample.reward == 1.0
    return spans


def test_openai_v2_instrumented_agent_trains_through_the_proxy(
    store: InMemoryLightningStore, server: StoreServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")
    attempted = started(store)
    resource = {semconv.ROLLOUT_ID: attempted.rollout_id, semconv.ATTEMPT_ID: attempted.attempt.attempt_id}
    upstream = run_agent(store, server, OpenAIInstrumentor(), attempted, resource=resource, headers={})
    spans = check_episode(store, attempted, upstream)
    by_name = {s.name: s for s in spans}
    assert by_name["agent"].parent_id is None and by_name["agent"].kind == "custom"
    assert by_name["reward"].kind == "reward" and by_name["reward"].parent_id == by_name["agent"].span_id
    llm = [s for s in spans if s.attributes.get(semconv.ADAPTER) == "otlp" and s.kind == "llm"]
    assert all(s.parent_id == by_name["agent"].span_id and s.trace_id == by_name["agent"].trace_id for s in llm)
    assert llm[0].attributes[semconv.GEN_AI_OPERATION_NAME] == "chat"


def test_openinference_instrumented_agent_trains_with_the_rollout_in_headers(
    store: InMemoryLightningStore, server: StoreServer
) -> None:
    from openinference.instrumentation.openai import OpenAIInstrumentor

    attempted = started(store)
    headers = {"x-agl-rollout-id": attempted.rollout_id}  # the attempt: the rollout's latest
    upstream = run_agent(store, server, OpenAIInstrumentor(), attempted, resource={}, headers=headers)
    spans = check_episode(store, attempted, upstream)
    llm = [s for s in spans if s.attributes.get(semconv.ADAPTER) == "otlp" and s.kind == "llm"]
    assert llm[0].attributes[semconv.GEN_AI_REQUEST_MODEL] == "policy"
    assert llm[0].attributes[semconv.GEN_AI_TOOL_DEFINITIONS] == TOOLS
    assert not any(key.startswith("llm.input_messages.") for key in llm[0].attributes)


# ---------------------------------------------------------------------- OTLP/JSON, older conventions
def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [_attr("", v)["value"] for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def _span(span_id: str, name: str, attributes: dict[str, Any], parent: str = "", **extra: Any) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(now),
        "endTimeUnixNano": now + 2_000_000,
        "attributes": [_attr(k, v) for k, v in attributes.items()],
        **extra,
    }


def _request(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr(k, v) for k, v in (resource or {}).items()]},
                "scopeSpans": [{"scope": {"name": "test"}, "spans": list(spans)}],
            }
        ]
    }


def test_json_encoding_gzip_and_the_older_genai_conventions(store: InMemoryLightningStore, server: StoreServer) -> None:
    attempted = started(store)
    root = _span("EEE19B7EC3C1B174", "invoke_agent calc", {
        semconv.GEN_AI_OPERATION_NAME: "invoke_agent", semconv.ROLLOUT_ID: attempted.rollout_id,
    })  # fmt: skip
    indexed = _span("EEE19B7EC3C1B175", "chat old", {
        "gen_ai.system": "openai", "gen_ai.request.model": "m",
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "2+2?",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.finish_reason": "tool_calls",
        "gen_ai.completion.0.tool_calls.0.id": "c1", "gen_ai.completion.0.tool_calls.0.name": "add",
        "gen_ai.completion.0.tool_calls.0.arguments": '{"a": 2}',
        "gen_ai.usage.prompt_tokens": 7, "gen_ai.usage.completion_tokens": 3,
    }, parent="EEE19B7EC3C1B174")  # fmt: skip
    events = _span("EEE19B7EC3C1B176", "chat events", {semconv.GEN_AI_OPERATION_NAME: "chat"},
                   parent="EEE19B7EC3C1B174", status={"code": 2, "message": "boom"}, events=[
        {"name": "gen_ai.system.message", "attributes": [_attr("content", "be brief")]},
        {"name": "gen_ai.user.message", "attributes": [_attr("content", "hi")]},
        {"name": "gen_ai.choice", "attributes": [
            _attr("index", 0), _attr("finish_reason", "stop"),
            {"key": "message", "value": {"kvlistValue": {"values": [_attr("role", "assistant"),
                                                                    _attr("content", "hello")]}}},
        ]},
    ])  # fmt: skip
    details = _span("EEE19B7EC3C1B177", "chat details", {semconv.GEN_AI_OPERATION_NAME: "chat"},
                    parent="EEE19B7EC3C1B174", events=[{"name": "gen_ai.client.inference.operation.details",
                    "attributes": [_attr(semconv.GEN_AI_INPUT_MESSAGES, json.dumps(
                        [{"role": "user", "parts": [{"type": "text", "content": "x?"}]}])),
                        _attr(semconv.GEN_AI_OUTPUT_MESSAGES, json.dumps(
                        [{"role": "assistant", "parts": [{"type": "text", "content": "y"}],
                          "finish_reason": "stop"}]))]}])  # fmt: skip
    tool = _span("EEE19B7EC3C1B178", "execute_tool add", {
        semconv.GEN_AI_OPERATION_NAME: "execute_tool", semconv.GEN_AI_TOOL_NAME: "add", "score": 0.5, "ok": True,
    }, parent="EEE19B7EC3C1B175")  # fmt: skip
    body = gzip.compress(json.dumps(_request(root, indexed, events, details, tool)).encode())
    response = httpx.post(f"{server.url}/v1/traces", content=body, headers={**JS, "content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}

    spans = {s.span_id: s for s in spans_of(store, attempted.rollout_id)}
    assert set(spans) == {"eee19b7ec3c1b174", "eee19b7ec3c1b175", "eee19b7ec3c1b176", "eee19b7ec3c1b177",
                          "eee19b7ec3c1b178"}  # fmt: skip
    agent, old, evented, detailed, tool_span = (spans[k] for k in sorted(spans))
    assert agent.kind == "agent" and agent.trace_id == "5b8efff798038103d269b633813fc60c" and agent.parent_id is None
    assert all(s.attempt_id == attempted.attempt.attempt_id for s in spans.values())  # inherited from the root
    assert old.kind == "llm" and old.parent_id == agent.span_id
    assert old.attributes[semconv.GEN_AI_INPUT_MESSAGES] == [{"role": "user", "content": "2+2?"}]
    assert old.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}]}]  # fmt: skip
    assert old.attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["tool_calls"]
    assert old.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 7
    assert old.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 3
    assert old.attributes[semconv.GEN_AI_PROVIDER_NAME] == "openai"
    assert not any(k.startswith("gen_ai.prompt.") for k in old.attributes)
    assert evented.attributes[semconv.GEN_AI_INPUT_MESSAGES] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    assert evented.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [{"role": "assistant", "content": "hello"}]
    assert evented.status.code == "error" and evented.status.message == "boom"
    assert detailed.attributes[semconv.GEN_AI_INPUT_MESSAGES] == [{"role": "user", "content": "x?"}]
    assert detailed.attributes[semconv.GEN_AI_OUTPUT_MESSAGES] == [{"role": "assistant", "content": "y"}]
    assert tool_span.kind == "tool" and tool_span.parent_id == old.span_id
    assert tool_span.attributes["score"] == 0.5 and tool_span.attributes["ok"] is True
    assert abs(tool_span.duration - 0.002) < 1e-6  # type: ignore[operator]


# ---------------------------------------------------------------------- bad input: OTLP error statuses
def _status(response: httpx.Response) -> status_pb2.Status:
    assert response.headers["content-type"].startswith("application/x-protobuf")
    status = status_pb2.Status()
    status.ParseFromString(response.content)
    return status


def _pb_request(rollout_id: str | None, *span_ids: str, attempt_id: str | None = None) -> bytes:
    payload = _request(*(_span(s, f"s{i}", {}) for i, s in enumerate(span_ids)))
    request = ExportTraceServiceRequest()
    for resource_spans in payload["resourceSpans"]:
        target = request.resource_spans.add()
        if rollout_id is not None:
            attr = target.resource.attributes.add()
            attr.key, attr.value.string_value = semconv.ROLLOUT_ID, rollout_id
        if attempt_id is not None:
            attr = target.resource.attributes.add()
            attr.key, attr.value.string_value = semconv.ATTEMPT_ID, attempt_id
        scope = target.scope_spans.add()
        for span in resource_spans["scopeSpans"][0]["spans"]:
            out = scope.spans.add()
            out.trace_id = bytes.fromhex(span["traceId"])
            out.span_id = bytes.fromhex(span["spanId"])
            out.name = span["name"]
            out.start_time_unix_nano = int(span["startTimeUnixNano"])
            out.end_time_unix_nano = int(span["endTimeUnixNano"])
    return request.SerializeToString()


def test_malformed_bodies_get_400_with_a_status_in_their_encoding(
    store: InMemoryLightningStore, server: StoreServer
) -> None:
    url = f"{server.url}/v1/traces"
    bad_pb = httpx.post(url, content=b"\x0a\xff\xff\xff\x0f garbage", headers=PB)
    assert bad_pb.status_code == 400
    assert _status(bad_pb).code == 3 and "protobuf" in _status(bad_pb).message

    bad_json = httpx.post(url, content=b'{"resourceSpans": [', headers=JS)
    assert bad_json.status_code == 400 and bad_json.json()["code"] == 3
    assert "not valid JSON" in bad_json.json()["message"]

    bad_ids = httpx.post(url, content=json.dumps(_request(_span("xyz", "s", {}))).encode(), headers=JS)
    assert bad_ids.status_code == 400 and "spanId" in bad_ids.json()["message"]

    bad_gzip = httpx.post(url, content=b"not gzip", headers={**PB, "content-encoding": "gzip"})
    assert bad_gzip.status_code == 400 and "gzip" in _status(bad_gzip).message

    text = httpx.post(url, content=b"hello", headers={**AUTH, "content-type": "text/plain"})
    assert text.status_code == 415


def test_spans_naming_no_rollout_or_an_unknown_one_store_nothing(
    store: InMemoryLightningStore, server: StoreServer
) -> None:
    attempted = started(store)
    url = f"{server.url}/v1/traces"
    nobody = httpx.post(url, content=_pb_request(None, "00000000000000a1"), headers=PB)
    assert nobody.status_code == 400 and "names a rollout" in _status(nobody).message

    unknown = httpx.post(url, content=_pb_request("no-such-rollout", "00000000000000a2"), headers=PB)
    assert unknown.status_code == 404 and _status(unknown).code == 5

    wrong_attempt = _pb_request(attempted.rollout_id, "00000000000000a3", attempt_id="no-such-attempt")
    refused = httpx.post(url, content=wrong_attempt, headers=PB)
    assert refused.status_code == 404 and "no-such-attempt" in _status(refused).message

    # all or nothing: a span of a known rollout next to one of an unknown rollout is not stored either
    mixed = _request(
        _span("00000000000000a4", "known", {semconv.ROLLOUT_ID: attempted.rollout_id}),
        _span("00000000000000a5", "unknown", {semconv.ROLLOUT_ID: "no-such-rollout"}),
    )
    assert httpx.post(url, content=json.dumps(mixed).encode(), headers=JS).status_code == 404
    assert spans_of(store, attempted.rollout_id) == []

    # spans that name no rollout beside ones that do: the others are stored, the spec's partial success
    partial = _pb_request(None, "00000000000000a6")
    request = ExportTraceServiceRequest()
    request.ParseFromString(partial)
    request.MergeFromString(_pb_request(attempted.rollout_id, "00000000000000a7"))
    accepted = httpx.post(url, content=request.SerializeToString(), headers=PB)
    assert accepted.status_code == 200
    answer = ExportTraceServiceResponse()
    answer.ParseFromString(accepted.content)
    assert answer.partial_success.rejected_spans == 1
    assert "no rollout" in answer.partial_success.error_message
    assert [s.span_id for s in spans_of(store, attempted.rollout_id)] == ["00000000000000a7"]


def test_oversized_batches_and_missing_keys_get_otlp_statuses(
    store: InMemoryLightningStore, server: StoreServer
) -> None:
    attempted = started(store)
    url = f"{server.url}/v1/traces"
    big = _request(_span("00000000000000b1", "big", {semconv.ROLLOUT_ID: attempted.rollout_id, "blob": "x" * 300_000}))
    raw = json.dumps(big).encode()
    too_big = httpx.post(url, content=raw, headers=JS)
    assert too_big.status_code == 413 and too_big.json()["code"] == 8

    bomb = httpx.post(url, content=gzip.compress(raw), headers={**JS, "content-encoding": "gzip"})
    assert len(gzip.compress(raw)) < 200_000
    assert bomb.status_code == 413 and "decompressed" in bomb.json()["message"]

    body = _pb_request(attempted.rollout_id, "00000000000000b2")
    missing = httpx.post(url, content=body, headers={"content-type": "application/x-protobuf"})
    assert missing.status_code == 401 and _status(missing).code == 16
    assert spans_of(store, attempted.rollout_id) == []

    assert httpx.post(url, content=body, headers=PB).status_code == 200
    assert [s.span_id for s in spans_of(store, attempted.rollout_id)] == ["00000000000000b2"]
