"""OTLP/HTTP trace ingestion: ``POST /v1/traces`` (protobuf or JSON, gzip or not) into this project's spans.

Decoding turns either encoding into :class:`OtelSpan` records; :func:`to_spans` maps them onto
:class:`~agent_lightning.types.Span`, normalizing the GenAI conventions (OpenTelemetry ``gen_ai.*``,
current and older, and OpenInference ``llm.*``) into the attribute names of
:mod:`agent_lightning.semconv`; :func:`ingest` attributes them to rollouts and attempts and stores
them in one ``add_spans`` call. See the package README, "OTLP ingestion".
"""

from __future__ import annotations

import base64
import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent_lightning import semconv
from agent_lightning.errors import AgentLightningError, NotFound
from agent_lightning.store.base import LightningStore
from agent_lightning.types import Span, SpanKind, SpanStatus
from fastapi import Request
from fastapi.responses import Response

from agent_lightning_http.protocol import ERROR_STATUS, error_type

TRACES_PATH = "/v1/traces"
ROLLOUT_HEADER = "x-agl-rollout-id"
ATTEMPT_HEADER = "x-agl-attempt-id"
OTLP_SEQUENCE_BASE = 3_000_000
"""Every span ingested over OTLP has this ``sequence_id``: stores order them among themselves by start time,
after the agent's own spans (from 1), the proxy's (from 1,000,000) and joined scripts' (from 2,000,000)."""
ADAPTER_NAME = "otlp"
PROTOBUF = "application/x-protobuf"
JSON_TYPE = "application/json"

# gRPC status codes carried in the google.rpc.Status error body
_GRPC_CODES = {400: 3, 401: 16, 404: 5, 409: 9, 413: 8, 415: 3, 503: 14, 500: 13}
_STATUS_CODES = {0: "unset", 1: "ok", 2: "error"}
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_INDEXED = re.compile(r"^(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)\.(\d+)\.(.+)$")


class OtlpError(Exception):
    """A request answered with an OTLP error status (``google.rpc.Status`` body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Events = Sequence[tuple[str, dict[str, Any]]]
"""A span's events: ``(name, attributes)``."""


@dataclass
class OtelSpan:
    """One OTLP span, decoded from either encoding."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status_code: int = 0
    status_message: str | None = None


# ---------------------------------------------------------------------- request and response bodies
def media_type(content_type: str | None) -> str:
    """``application/x-protobuf`` or ``application/json``; :class:`OtlpError` 415 for anything else."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in (PROTOBUF, JSON_TYPE):
        return kind
    raise OtlpError(415, f"unsupported content type {content_type!r}: send {PROTOBUF} or {JSON_TYPE}")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The request body without its ``Content-Encoding`` (gzip, deflate or none), at most ``limit`` bytes."""
    kind = (encoding or "identity").strip().lower()
    if kind == "identity":
        return body
    if kind not in ("gzip", "deflate"):
        raise OtlpError(415, f"unsupported content encoding {encoding!r}: send gzip or none")
    inflater = zlib.decompressobj(wbits=31 if kind == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise OtlpError(400, f"request body is not valid {kind} data: {exc}") from None
    if len(out) > limit:
        raise OtlpError(413, f"request body is over the server's limit of {limit} bytes once decompressed")
    if not inflater.eof:
        raise OtlpError(400, f"request body is truncated {kind} data")
    return out


def error_body(kind: str, status: int, message: str) -> bytes:
    """A ``google.rpc.Status`` in the request's encoding, as the OTLP/HTTP spec asks of failures."""
    code = _GRPC_CODES.get(status, 2)
    if kind == PROTOBUF:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    return json.dumps({"code": code, "message": message}).encode()


def success_body(kind: str, rejected: int, message: str | None) -> bytes:
    """An ``ExportTraceServiceResponse``, with ``partial_success`` when spans were rejected."""
    if kind == PROTOBUF:
        if not rejected:
            return b""
        inner = b"\x08" + _varint(rejected)
        if message:
            text = message.encode()
            inner += b"\x12" + _varint(len(text)) + text
        return b"\x0a" + _varint(len(inner)) + inner
    if not rejected:
        return b"{}"
    return json.dumps({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message or ""}}).encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# ---------------------------------------------------------------------- decoding: protobuf
def decode_protobuf(body: bytes) -> list[OtelSpan]:
    """The spans of a protobuf ``ExportTraceServiceRequest``."""
    try:
        from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:  # pragma: no cover - the otlp extra is missing
        raise OtlpError(415, f"{PROTOBUF} needs `pip install agent-lightning-http[otlp]`; send {JSON_TYPE}") from None
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise OtlpError(400, f"request body is not a valid protobuf ExportTraceServiceRequest: {exc}") from None
    spans: list[OtelSpan] = []
    for resource_spans in request.resource_spans:
        resource = _pb_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    OtelSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_pb_attributes(span.attributes),
                        resource=resource,
                        events=[(e.name, _pb_attributes(e.attributes)) for e in span.events],
                        status_code=span.status.code,
                        status_message=span.status.message or None,
                    )
                )
    return spans


def _pb_attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _pb_value(pair.value) for pair in pairs}


def _pb_value(value: Any) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return _finite(getattr(value, which))


# ---------------------------------------------------------------------- decoding: JSON
def decode_json(body: bytes) -> list[OtelSpan]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest`` (hex ids, integer enums, lowerCamelCase keys)."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OtlpError(400, f"request body is not valid JSON: {exc}") from None
    try:
        return _json_request(request)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise OtlpError(400, f"request body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None


def _json_request(request: Any) -> list[OtelSpan]:
    if not isinstance(request, dict):
        raise TypeError("the body must be a JSON object")
    spans: list[OtelSpan] = []
    for resource_spans in _list(request, "resourceSpans"):
        resource = _json_attributes(_dict(resource_spans, "resource").get("attributes"))
        for scope_spans in _list(resource_spans, "scopeSpans"):
            for span in _list(scope_spans, "spans"):
                status = _dict(span, "status")
                spans.append(
                    OtelSpan(
                        trace_id=_json_id(span.get("traceId"), 16, "traceId"),
                        span_id=_json_id(span.get("spanId"), 8, "spanId"),
                        parent_id=_json_id(span.get("parentSpanId"), 8, "parentSpanId") or None,
                        name=str(span.get("name") or ""),
                        start_ns=_json_int(span.get("startTimeUnixNano", 0)),
                        end_ns=_json_int(span.get("endTimeUnixNano", 0)),
                        attributes=_json_attributes(span.get("attributes")),
                        resource=resource,
                        events=[
                            (str(e.get("name") or ""), _json_attributes(e.get("attributes")))
                            for e in _list(span, "events")
                        ],
                        status_code=_json_int(status.get("code", 0)),
                        status_message=status.get("message") or None,
                    )
                )
    return spans


def _list(obj: Any, key: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError(f"{key} must be an array of objects")
    return value


def _dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be an object")
    return value


def _json_id(value: Any, size: int, name: str) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX.match(value):
        raise ValueError(f"{name} must be {2 * size} hex digits, got {value!r}")
    return value.lower()


def _json_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def _json_attributes(pairs: Any) -> dict[str, Any]:
    if pairs is None:
        return {}
    if not isinstance(pairs, list):
        raise TypeError("attributes must be an array of {key, value} objects")
    return {str(pair["key"]): _json_value(pair.get("value")) for pair in pairs}


def _json_value(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return None
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return _json_int(value["intValue"])
    if "doubleValue" in value:
        raw = value["doubleValue"]
        return _finite(float(raw))
    if "arrayValue" in value:
        return [_json_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return _json_attributes((value["kvlistValue"] or {}).get("values"))
    if "bytesValue" in value:
        return str(value["bytesValue"])
    return None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ---------------------------------------------------------------------- mapping onto this project's spans
def _parsed(value: Any) -> Any:
    """A JSON-encoded attribute (OTel stores structured values as JSON strings) as its value."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _arguments(value: Any) -> str:
    parsed = _parsed(value)
    return parsed if isinstance(parsed, str) else json.dumps(parsed)


def _text(content: Any) -> Any:
    """Message content as OpenAI's chat format has it: a string, or the list of parts when not all text."""
    if isinstance(content, list):
        texts = [p.get("text", p.get("content")) for p in content if isinstance(p, dict)]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    return content


def _from_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """An OTel GenAI message (``role`` + ``parts``) as OpenAI chat messages (tool results become ``tool`` messages)."""
    role = message.get("role") or "user"
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for part in message.get("parts") or []:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "tool_call":
            calls.append(
                {
                    "id": part.get("id"),
                    "type": "function",
                    "function": {"name": part.get("name"), "arguments": _arguments(part.get("arguments"))},
                }
            )
        elif kind == "tool_call_response":
            response = part.get("response", part.get("result"))
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": part.get("id"),
                    "content": response if isinstance(response, str) else json.dumps(response),
                }
            )
        elif isinstance(part.get("content"), str):
            texts.append(part["content"])
    out: list[dict[str, Any]] = []
    if texts or calls or not results:
        converted: dict[str, Any] = {"role": role, "content": "".join(texts) if texts else None}
        if calls:
            converted["tool_calls"] = calls
        out.append(converted)
    return out + results


def _openai_messages(value: Any) -> list[dict[str, Any]] | None:
    """Messages in either OTel's parts form or OpenAI's chat form, as OpenAI chat messages."""
    value = _parsed(value)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return None
    out: list[dict[str, Any]] = []
    for message in value:
        if "parts" in message:
            out += _from_parts(message)
        else:
            converted = dict(message)
            if "content" in converted:
                converted["content"] = _text(_parsed(converted["content"]))
            if "tool_calls" in converted:
                converted["tool_calls"] = _tool_calls(converted["tool_calls"])
            out.append(converted)
    return out


def _tool_calls(value: Any) -> list[dict[str, Any]]:
    calls = []
    for call in _parsed(value) or []:
        if not isinstance(call, dict):
            continue
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
        calls.append(
            {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function.get("name"), "arguments": _arguments(function.get("arguments"))},
            }
        )
    return calls


def _indexed(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Messages from flattened attributes ``PREFIX.N.…`` (OpenInference's and the older GenAI convention's)."""
    rows: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        match = _INDEXED.match(key)
        if match is None or match[1] != prefix:
            continue
        rows.setdefault(int(match[2]), {})[match[3].removeprefix("message.")] = value
    messages = []
    for _, fields in sorted(rows.items()):
        message: dict[str, Any] = {"role": fields.get("role") or "user"}
        content = fields.get("content")
        if content is None:  # OpenInference's multi-part contents
            parts = sorted((k, v) for k, v in fields.items() if k.startswith("contents.") and k.endswith(".text"))
            content = "".join(str(v) for _, v in parts) if parts else None
        message["content"] = content
        if fields.get("tool_call_id") is not None:
            message["tool_call_id"] = fields["tool_call_id"]
        calls: dict[int, dict[str, Any]] = {}
        for key, value in fields.items():
            match = re.match(r"^tool_calls\.(\d+)\.(?:tool_call\.)?(.+)$", key)
            if match is not None:
                calls.setdefault(int(match[1]), {})[match[2]] = value
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.get("id"),
                    "type": "function",
                    "function": {
                        "name": call.get("function.name", call.get("name")),
                        "arguments": _arguments(call.get("function.arguments", call.get("arguments", "{}"))),
                    },
                }
                for _, call in sorted(calls.items())
            ]
        elif "tool_calls" in fields:
            message["tool_calls"] = _tool_calls(fields["tool_calls"])
        if fields.get("finish_reason") is not None:
            message["finish_reason"] = fields["finish_reason"]
        messages.append(message)
    return messages


_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _event_messages(events: Events) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input and output messages from the older per-message span events (``gen_ai.user.message``, ``gen_ai.choice``)."""
    inputs: list[dict[str, Any]] = []
    outputs: list[tuple[int, dict[str, Any]]] = []
    for name, attrs in events:
        if name in _EVENT_ROLES:
            message: dict[str, Any] = {"role": attrs.get("role") or _EVENT_ROLES[name]}
            message["content"] = _text(_parsed(attrs.get("content")))
            if attrs.get("tool_calls") is not None:
                message["tool_calls"] = _tool_calls(attrs["tool_calls"])
            if name == "gen_ai.tool.message" and attrs.get("id") is not None:
                message["tool_call_id"] = attrs["id"]
            inputs.append(message)
        elif name == "gen_ai.choice":
            body = _parsed(attrs.get("message"))
            body = body if isinstance(body, dict) else {"content": body}
            choice: dict[str, Any] = {"role": body.get("role") or "assistant", "content": _text(body.get("content"))}
            if body.get("tool_calls") is not None:
                choice["tool_calls"] = _tool_calls(body["tool_calls"])
            index = attrs.get("index", len(outputs))
            outputs.append((index if isinstance(index, int) else len(outputs), choice))
    return inputs, [m for _, m in sorted(outputs, key=lambda item: item[0])]


_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
_OPENINFERENCE_KINDS: dict[str, SpanKind] = {"LLM": "llm", "TOOL": "tool", "AGENT": "agent"}
_DROPPED = re.compile(r"^(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)\.\d+\.")


def span_kind(attributes: Mapping[str, Any]) -> SpanKind:
    """This project's span kind for an OTel span's attributes."""
    if semconv.REWARD_VALUE in attributes:
        return "reward"
    openinference = attributes.get("openinference.span.kind")
    if isinstance(openinference, str):
        return _OPENINFERENCE_KINDS.get(openinference.upper(), "custom")
    operation = attributes.get(semconv.GEN_AI_OPERATION_NAME)
    if operation in _LLM_OPERATIONS:
        return "llm"
    if operation == "execute_tool":
        return "tool"
    if operation in ("invoke_agent", "create_agent"):
        return "agent"
    if any(key.startswith(("gen_ai.prompt.", "gen_ai.completion.")) for key in attributes):
        return "llm"
    return "custom"


def normalize_attributes(
    attributes: Mapping[str, Any], events: Sequence[tuple[str, dict[str, Any]]] = ()
) -> tuple[SpanKind, dict[str, Any]]:
    """The span kind and attributes under this project's names (``gen_ai.input.messages`` as OpenAI chat
    messages, usage, model, response id, tool calls); keys not mapped are kept as they are."""
    kind = span_kind(attributes)
    out = {k: v for k, v in attributes.items() if not _DROPPED.match(k)}
    if kind == "llm":
        _normalize_llm(attributes, events, out)
    elif kind == "tool":
        _normalize_tool(attributes, out)
    out[semconv.ADAPTER] = ADAPTER_NAME
    return kind, out


def _normalize_llm(attributes: Mapping[str, Any], events: Events, out: dict[str, Any]) -> None:
    details = next((a for n, a in events if n == "gen_ai.client.inference.operation.details"), {})
    event_inputs, event_outputs = _event_messages(events)
    inputs = (
        _openai_messages(attributes.get(semconv.GEN_AI_INPUT_MESSAGES))
        or _openai_messages(details.get(semconv.GEN_AI_INPUT_MESSAGES))
        or _indexed(attributes, "gen_ai.prompt")
        or event_inputs
        or _indexed(attributes, "llm.input_messages")
    )
    outputs = (
        _openai_messages(attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES))
        or _openai_messages(details.get(semconv.GEN_AI_OUTPUT_MESSAGES))
        or _indexed(attributes, "gen_ai.completion")
        or event_outputs
        or _indexed(attributes, "llm.output_messages")
    )
    for message in outputs:
        message.setdefault("role", "assistant")
    if inputs:
        out[semconv.GEN_AI_INPUT_MESSAGES] = inputs
    if outputs:
        finish = [m.pop("finish_reason", None) for m in outputs]
        out[semconv.GEN_AI_OUTPUT_MESSAGES] = outputs
        if semconv.GEN_AI_RESPONSE_FINISH_REASONS not in out and any(finish):
            out[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = finish
    out.setdefault(semconv.GEN_AI_OPERATION_NAME, "chat")
    for source, target in (
        ("llm.model_name", semconv.GEN_AI_REQUEST_MODEL),
        ("llm.token_count.prompt", semconv.GEN_AI_USAGE_INPUT_TOKENS),
        ("llm.token_count.completion", semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
        ("gen_ai.usage.prompt_tokens", semconv.GEN_AI_USAGE_INPUT_TOKENS),
        ("gen_ai.usage.completion_tokens", semconv.GEN_AI_USAGE_OUTPUT_TOKENS),
        ("gen_ai.system", semconv.GEN_AI_PROVIDER_NAME),
        ("llm.system", semconv.GEN_AI_PROVIDER_NAME),
    ):
        if attributes.get(source) is not None and target not in out:
            out[target] = attributes[source]
    if isinstance(attributes.get("llm.finish_reason"), str):
        out.setdefault(semconv.GEN_AI_RESPONSE_FINISH_REASONS, [attributes["llm.finish_reason"]])
    if semconv.GEN_AI_TOOL_DEFINITIONS not in out:
        tools = [
            _parsed(v) for k, v in sorted(attributes.items()) if re.match(r"^llm\.tools\.\d+\.tool\.json_schema$", k)
        ]
        if tools:
            out[semconv.GEN_AI_TOOL_DEFINITIONS] = tools
    else:
        out[semconv.GEN_AI_TOOL_DEFINITIONS] = _parsed(out[semconv.GEN_AI_TOOL_DEFINITIONS])
    if semconv.GEN_AI_RESPONSE_ID not in out:  # OpenInference keeps the raw response only
        response = _parsed(attributes.get("output.value"))
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            out[semconv.GEN_AI_RESPONSE_ID] = response["id"]
    finish_reasons = out.get(semconv.GEN_AI_RESPONSE_FINISH_REASONS)
    if isinstance(finish_reasons, str):
        out[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [finish_reasons]


def _normalize_tool(attributes: Mapping[str, Any], out: dict[str, Any]) -> None:
    for source, target in (
        ("tool.name", semconv.GEN_AI_TOOL_NAME),
        ("tool.parameters", semconv.GEN_AI_TOOL_CALL_ARGUMENTS),
        ("input.value", semconv.GEN_AI_TOOL_CALL_ARGUMENTS),
        ("output.value", semconv.GEN_AI_TOOL_CALL_RESULT),
    ):
        if attributes.get(source) is not None and target not in out:
            out[target] = attributes[source]


# ---------------------------------------------------------------------- attribution and storing
Attribution = tuple[str, str | None]


def _named(attributes: Mapping[str, Any]) -> Attribution | None:
    rollout = attributes.get(semconv.ROLLOUT_ID)
    if isinstance(rollout, str) and rollout:
        attempt = attributes.get(semconv.ATTEMPT_ID)
        return rollout, attempt if isinstance(attempt, str) and attempt else None
    return None


def attribute(spans: Sequence[OtelSpan], header: Attribution | None) -> list[Attribution | None]:
    """Each span's ``(rollout_id, attempt_id or None)``, or ``None`` when nothing names its rollout.

    The most specific source wins: the span's own ``agl.rollout.id`` / ``agl.attempt.id``, then the
    nearest ancestor's in the same request, then the resource's, then the request's headers. The
    attempt comes from the same source as the rollout (none: the rollout's latest attempt).
    """
    by_id = {s.span_id: s for s in spans}
    out: list[Attribution | None] = []
    for span in spans:
        found: Attribution | None = None
        current: OtelSpan | None = span
        seen: set[str] = set()
        while current is not None and current.span_id not in seen and found is None:
            seen.add(current.span_id)
            found = _named(current.attributes)
            current = by_id.get(current.parent_id) if current.parent_id else None
        out.append(found or _named(span.resource) or header)
    return out


async def _resolve(store: LightningStore, rollout_id: str, attempt_id: str | None) -> str:
    attempts = await store.get_attempts(rollout_id)  # NotFound for an unknown rollout
    if attempt_id is None:
        if not attempts:
            raise NotFound(f"rollout {rollout_id!r} has no attempt yet: name {semconv.ATTEMPT_ID} or start it first")
        return attempts[-1].attempt_id
    if all(a.attempt_id != attempt_id for a in attempts):
        raise NotFound(f"rollout {rollout_id!r} has no attempt {attempt_id!r}")
    return attempt_id


def to_span(span: OtelSpan, rollout_id: str, attempt_id: str) -> Span:
    """One OTel span as this project's span (ids kept: OTel's hex ids are this project's format)."""
    if len(span.trace_id) != 32 or span.trace_id == "0" * 32:
        raise OtlpError(400, f"span {span.name!r}: trace id {span.trace_id!r} is not 16 non-zero bytes")
    if len(span.span_id) != 16 or span.span_id == "0" * 16:
        raise OtlpError(400, f"span {span.name!r}: span id {span.span_id!r} is not 8 non-zero bytes")
    if span.parent_id is not None and (len(span.parent_id) != 16 or span.parent_id == span.span_id):
        raise OtlpError(400, f"span {span.name!r}: parent span id {span.parent_id!r} is not 8 bytes")
    kind, attributes = normalize_attributes(span.attributes, span.events)
    start = span.start_ns / 1e9
    end = max(span.end_ns / 1e9, start) if span.end_ns else None
    code = _STATUS_CODES.get(span.status_code, "unset")
    try:
        return Span(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=OTLP_SEQUENCE_BASE,
            trace_id=span.trace_id,
            span_id=span.span_id,
            parent_id=None if span.parent_id == "0" * 16 else span.parent_id,
            name=span.name or kind,
            kind=kind,
            attributes=attributes,
            start_time=start,
            end_time=end,
            status=SpanStatus(code=code, message=span.status_message),  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise OtlpError(400, f"span {span.span_id}: {exc}") from None


async def ingest(store: LightningStore, spans: Sequence[OtelSpan], header: Attribution | None) -> tuple[int, int]:
    """Store the spans that name a rollout, all in one ``add_spans`` call (all or none).

    Returns ``(stored, rejected)``: rejected spans name no rollout anywhere. Raises
    :class:`OtlpError` 400 when no span of a non-empty request names one, and lets the store's
    ``NotFound`` (an unknown rollout or attempt) through.
    """
    attributions = attribute(spans, header)
    named = [(span, a) for span, a in zip(spans, attributions, strict=True) if a is not None]
    rejected = len(spans) - len(named)
    if spans and not named:
        raise OtlpError(
            400,
            f"none of the {len(spans)} span(s) names a rollout: set the resource or span attribute "
            f"{semconv.ROLLOUT_ID} (and {semconv.ATTEMPT_ID}), or send the {ROLLOUT_HEADER} header",
        )
    attempts: dict[Attribution, str] = {}
    for _, (rollout_id, attempt_id) in named:
        if (rollout_id, attempt_id) not in attempts:
            attempts[(rollout_id, attempt_id)] = await _resolve(store, rollout_id, attempt_id)
    converted = [to_span(span, a[0], attempts[a]) for span, a in named]
    stored = await store.add_spans(converted) if converted else 0
    return stored, rejected


def decode(
    body: bytes, content_type: str | None, content_encoding: str | None, limit: int
) -> tuple[str, list[OtelSpan]]:
    """The request's media type and its spans."""
    kind = media_type(content_type)
    raw = decompress(body, content_encoding, limit)
    return kind, (decode_protobuf(raw) if kind == PROTOBUF else decode_json(raw))


# ---------------------------------------------------------------------- the route
def add_route(app: Any, store: LightningStore, max_body_bytes: int) -> None:
    """Serve ``POST /v1/traces`` on the store server's FastAPI ``app``."""

    @app.post(  # type: ignore[untyped-decorator,unused-ignore]
        TRACES_PATH,
        tags=["otlp"],
        response_class=Response,
        responses={200: {"description": "ExportTraceServiceResponse (partial_success names spans with no rollout)"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {PROTOBUF: {}, JSON_TYPE: {}},
                "description": "an OTLP ExportTraceServiceRequest (gzip allowed)",
            }
        },
    )
    async def export_traces(request: Request) -> Response:
        """OTLP/HTTP trace export: GenAI and OpenInference spans become this project's spans (see the README)."""
        headers = request.headers
        kind = JSON_TYPE if (headers.get("content-type") or "").lower().startswith(JSON_TYPE) else PROTOBUF
        try:
            kind, spans = decode(
                await request.body(), headers.get("content-type"), headers.get("content-encoding"), max_body_bytes
            )
            rollout = headers.get(ROLLOUT_HEADER)
            header = (rollout, headers.get(ATTEMPT_HEADER) or None) if rollout else None
            try:
                _, rejected = await ingest(store, spans, header)
            except (AgentLightningError, ValueError, TypeError) as exc:
                name = error_type(exc)
                status = ERROR_STATUS.get(name, 400)
                raise OtlpError(status if status in (404, 503) else 400, f"{name}: {exc}") from exc
        except OtlpError as exc:
            return Response(error_body(kind, exc.status, exc.message), exc.status, media_type=kind)
        message = f"{rejected} span(s) name no rollout and were dropped" if rejected else None
        return Response(success_body(kind, rejected, message), 200, media_type=kind)


def guard_error(scope: Mapping[str, Any], status: int, message: str) -> tuple[bytes, str] | None:
    """The body and content type the store server's guard answers ``/v1/traces`` with (401, 413)."""
    if scope.get("path") != TRACES_PATH:
        return None
    content_type = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"content-type"), "")
    kind = JSON_TYPE if content_type.lower().startswith(JSON_TYPE) else PROTOBUF
    return error_body(kind, status, message), kind
