"""One model call through the OpenAI SDK, recorded as one ``llm`` span.

The span is opened before the request, and its id, parent and attributes travel with the
request. When the proxy answers the call, its record (with the token ids) is that span: the
response's ``x-agl-span-id`` confirms it and the adapter emits nothing of its own. Otherwise (an
API model, no proxy) the adapter's span is the record, closed when the response arrives — for a
stream, when the stream is exhausted or closed.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from agent_lightning import semconv
from agent_lightning.instrumentation.context import TrainingContext, current_context
from agent_lightning.instrumentation.jsonable import jsonable, omitted
from agent_lightning.instrumentation.scoping import inherited_agent_name, message_texts, scope_attributes
from agent_lightning.instrumentation.spans import ActiveSpan, current_span, start_span

from agent_lightning_openai.streams import StreamState

logger = logging.getLogger(__name__)

ADAPTER_NAME = "openai"
PARENT_SPAN_HEADER = "x-agl-parent-span-id"
"""Request header: the proxy makes its record a child of this span."""
SPAN_ID_HEADER = "x-agl-span-id"
"""Request header: the id the proxy's record takes. Response header: the proxy's record(s), comma-separated
when ``n > 1`` — the proxy stored the call, so the adapter's own span is not emitted."""
SPAN_ATTRIBUTES_HEADER = "x-agl-span-attributes"
"""Request header: the span's attributes (JSON) the proxy joins onto its record."""
MAX_SPAN_ATTRIBUTES_BYTES = 16_384
_NOT_JOINED = ("gen_ai.input.", "gen_ai.output.", "gen_ai.request.", "gen_ai.response.", "gen_ai.usage.",
               "gen_ai.tool.definitions", "agl.llm.", "server.address")  # fmt: skip
"""What the proxy reads from the call itself, so it is not sent along."""
ROLLOUT_HEADER = "x-agl-rollout-id"
ATTEMPT_HEADER = "x-agl-attempt-id"
RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"
"""The SDK's own switch (what ``with_raw_response`` sets) to get the HTTP response with its headers."""

Operation = str  # "chat" | "text_completion" | "responses"

_SAMPLING = {
    "temperature": semconv.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": semconv.GEN_AI_REQUEST_TOP_P,
    "max_tokens": semconv.GEN_AI_REQUEST_MAX_TOKENS,
    "max_completion_tokens": semconv.GEN_AI_REQUEST_MAX_TOKENS,
    "max_output_tokens": semconv.GEN_AI_REQUEST_MAX_TOKENS,
}


def _given(kwargs: Mapping[str, Any], key: str) -> Any:
    value = kwargs.get(key)
    return None if omitted(value) else value


def _base_url(resource: Any) -> str | None:
    client = getattr(resource, "_client", None)
    url = getattr(client, "base_url", None)
    return str(url) if url is not None else None


def _input_messages(operation: Operation, kwargs: Mapping[str, Any]) -> Any:
    if operation == "chat":
        return _given(kwargs, "messages")
    if operation == "text_completion":
        prompt = _given(kwargs, "prompt")
        return None if prompt is None else [{"role": "user", "content": prompt}]
    messages: list[Any] = []
    instructions = _given(kwargs, "instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": instructions})
    given = _given(kwargs, "input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif given is not None:
        messages.extend(_chat_messages_of_items(given))
    return messages


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _chat_messages_of_items(items: Any) -> list[Any]:
    """Responses input items as chat messages (function calls → ``tool_calls``, their outputs → ``tool``)."""
    messages: list[Any] = []
    for item in items:
        kind = _field(item, "type")
        if kind == "function_call":
            call = {
                "id": _field(item, "call_id"),
                "type": "function",
                "function": {"name": _field(item, "name"), "arguments": _field(item, "arguments")},
            }
            last = messages[-1] if messages else None
            if isinstance(last, dict) and last.get("role") == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": _field(item, "call_id"), "content": _field(item, "output")}
            )
        else:
            messages.append(item)
    return messages


def responses_output(response: Any) -> tuple[dict[str, Any], str]:
    """A Responses ``output`` as one chat-format assistant message (text, tool calls), and its finish reason.

    The finish reason is mapped to the chat completions' vocabulary: ``stop``, ``tool_calls``, ``length``
    (``incomplete`` for ``max_output_tokens``), otherwise the response's status.
    """
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in getattr(response, "output", None) or []:
        kind = _field(item, "type")
        if kind == "message":
            for part in _field(item, "content") or []:
                text = _field(part, "text") if _field(part, "type") == "output_text" else None
                if isinstance(text, str):
                    texts.append(text)
        elif kind == "function_call":
            calls.append(
                {
                    "id": _field(item, "call_id"),
                    "type": "function",
                    "function": {"name": _field(item, "name"), "arguments": _field(item, "arguments")},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    status = str(getattr(response, "status", None) or "completed")
    reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
    if status == "completed":
        finish = "tool_calls" if calls else "stop"
    elif status == "incomplete" and reason == "max_output_tokens":
        finish = "length"
    else:
        finish = status
    return message, finish


def request_attributes(operation: Operation, kwargs: Mapping[str, Any], base_url: str | None) -> dict[str, Any]:
    """OTel GenAI request attributes from the SDK call's keyword arguments."""
    model = _given(kwargs, "model")
    attributes: dict[str, Any] = {
        semconv.ADAPTER: ADAPTER_NAME,
        semconv.GEN_AI_OPERATION_NAME: "chat" if operation == "responses" else operation,
        semconv.GEN_AI_SYSTEM: "openai",
        semconv.GEN_AI_PROVIDER_NAME: "openai",
    }
    if model is not None:
        attributes[semconv.GEN_AI_REQUEST_MODEL] = str(model)
    for key, name in _SAMPLING.items():
        value = _given(kwargs, key)
        if value is not None:
            attributes[name] = jsonable(value)
    stop = _given(kwargs, "stop")
    if stop is not None:
        attributes[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else jsonable(stop)
    messages = _input_messages(operation, kwargs)
    if messages is not None:
        attributes[semconv.GEN_AI_INPUT_MESSAGES] = jsonable(messages)
    tools = _given(kwargs, "tools")
    if tools is not None:
        attributes[semconv.GEN_AI_TOOL_DEFINITIONS] = jsonable(tools)
    if base_url:
        attributes["server.address"] = base_url
    return attributes


def _extra(obj: Any, key: str) -> Any:
    value = getattr(obj, key, None)
    if value is None:
        extra = getattr(obj, "model_extra", None) or {}
        value = extra.get(key)
    return value


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def response_attributes(operation: Operation, response: Any, *, with_token_ids: bool) -> dict[str, Any]:
    """OTel GenAI response attributes (and token ids when ``with_token_ids``) of a parsed response."""
    attributes: dict[str, Any] = {}
    for key, name in (("id", semconv.GEN_AI_RESPONSE_ID), ("model", semconv.GEN_AI_RESPONSE_MODEL)):
        value = getattr(response, key, None)
        if isinstance(value, str):
            attributes[name] = value
    usage = getattr(response, "usage", None)
    if usage is not None:
        prompt = getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", None)
        completion = getattr(usage, "completion_tokens", None) or getattr(usage, "output_tokens", None)
        if isinstance(prompt, int):
            attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = prompt
        if isinstance(completion, int):
            attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = completion
    if operation == "responses":  # no token ids: neither the API nor the proxy (it only forwards) has them
        message, finish = responses_output(response)
        attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [finish]
        attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = [jsonable(message)]
        if with_token_ids:
            attributes[semconv.TOKEN_IDS_AVAILABLE] = False
        return attributes
    choices = list(getattr(response, "choices", None) or [])
    attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [str(getattr(c, "finish_reason", None)) for c in choices]
    if operation == "chat":
        attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = [jsonable(getattr(c, "message", None)) for c in choices]
    else:
        attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = [
            {"role": "assistant", "content": getattr(c, "text", None)} for c in choices
        ]
    if with_token_ids and choices:
        first = choices[0]
        prompt_ids = _int_list(_extra(response, "prompt_token_ids")) or _int_list(_extra(first, "prompt_token_ids"))
        completion_ids = _int_list(_extra(first, "token_ids"))
        if prompt_ids is not None and completion_ids is not None:
            attributes[semconv.PROMPT_TOKEN_IDS] = prompt_ids
            attributes[semconv.COMPLETION_TOKEN_IDS] = completion_ids
            attributes[semconv.TOKEN_IDS_AVAILABLE] = True
            logprobs = _logprobs(first)
            if logprobs is not None and len(logprobs) == len(completion_ids):
                attributes[semconv.COMPLETION_LOGPROBS] = logprobs
        else:
            attributes[semconv.TOKEN_IDS_AVAILABLE] = False
    return attributes


def _logprobs(choice: Any) -> list[float] | None:
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        return None
    content = getattr(logprobs, "content", None)
    if content:
        values = [getattr(item, "logprob", None) for item in content]
    else:
        values = getattr(logprobs, "token_logprobs", None) or []
    if values and all(isinstance(v, (int, float)) for v in values):
        return [float(v) for v in values]
    return None


def join_attributes(attributes: Mapping[str, Any], limit: int = MAX_SPAN_ATTRIBUTES_BYTES) -> str | None:
    """The ``x-agl-span-attributes`` value for a span: what only the adapter knows, as ASCII JSON within ``limit``.

    Attributes the proxy reads from the call itself are left out; when the rest is too long, the
    longest values are left out first.
    """
    joined = {k: v for k, v in attributes.items() if not k.startswith(_NOT_JOINED)}
    encoded = {k: json.dumps(v, ensure_ascii=True) for k, v in joined.items()}
    while encoded:
        text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in encoded.items()) + "}"
        if len(text) <= limit:
            return text
        del encoded[max(encoded, key=lambda k: len(encoded[k]))]
    return None


def _is_raw_response(result: Any) -> bool:
    return hasattr(result, "http_response") and callable(getattr(result, "parse", None))


def _is_stream(result: Any) -> bool:
    cls = type(result)
    return any(c.__name__ in {"Stream", "AsyncStream"} for c in cls.__mro__)


class LLMCall:
    """The recording of one SDK call: its own ``llm`` span, or another adapter's ``llm`` span it enriches.

    When a framework adapter (LangChain, AutoGen) already opened an ``llm`` span for this
    model call, the call is linked to that span instead of nesting a duplicate.
    """

    def __init__(self, operation: Operation, resource: Any, kwargs: Mapping[str, Any]) -> None:
        self.operation = operation
        self.context: TrainingContext | None = current_context()
        self.stream = bool(_given(kwargs, "stream"))
        self.started = time.time()
        self._caller_raw: str | None = None
        self._added_raw = False
        self.proxied = False
        base_url = _base_url(resource)
        outer = current_span()
        if outer is not None and outer.kind == "llm" and outer.attributes.get(semconv.ADAPTER) != ADAPTER_NAME:
            self.span: ActiveSpan = outer
            self.owned = False
            if base_url:
                outer.set_attribute("server.address", base_url)
            return
        attributes = request_attributes(operation, kwargs, base_url)
        model = attributes.get(semconv.GEN_AI_REQUEST_MODEL)
        attributes.update(
            scope_attributes(
                self.context,
                agent=inherited_agent_name(outer),
                model=model,
                base_url=base_url,
                texts=message_texts(_input_messages(operation, kwargs)),
            )
        )
        prefix = "text_completion" if operation == "text_completion" else "chat"
        self.span = start_span(f"{prefix} {model or 'unknown'}", "llm", attributes)
        self.owned = True

    # ------------------------------------------------------------------ request
    def prepare(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's keyword arguments with the linking headers (and the raw-response switch) added."""
        given = kwargs.get("extra_headers")
        headers: dict[str, Any] = dict(given) if isinstance(given, Mapping) else {}
        lowered = {str(k).lower(): k for k in headers}
        raw_key = lowered.get(RAW_RESPONSE_HEADER.lower())
        if raw_key is not None:
            self._caller_raw = str(headers[raw_key])
        else:
            headers[RAW_RESPONSE_HEADER] = "true"
            self._added_raw = True
        span = self.span
        ours = {SPAN_ID_HEADER: span.id}
        if span.parent_id is not None:
            ours[PARENT_SPAN_HEADER] = span.parent_id
        attributes = join_attributes(span.attributes)
        if attributes is not None:
            ours[SPAN_ATTRIBUTES_HEADER] = attributes
        if self.context is not None:
            ours[ROLLOUT_HEADER] = self.context.rollout_id
            ours[ATTEMPT_HEADER] = self.context.attempt_id
        for key, value in ours.items():
            if key not in lowered:
                headers[key] = value
        return {**kwargs, "extra_headers": headers}

    # ------------------------------------------------------------------ response
    def read_headers(self, headers: Any) -> None:
        """Whether the proxy confirmed that it stored the call: then the span is handed over to its record."""
        try:
            value = headers.get(SPAN_ID_HEADER) if headers is not None else None
        except Exception:
            value = None
        if not value or not any(v.strip() for v in str(value).split(",")):
            return
        self.proxied = True
        self.span.hand_over()

    def record(self, response: Any) -> None:
        """Set the response attributes, with the token ids, on a span the proxy did not record."""
        if self.proxied:
            return
        try:
            attributes = response_attributes(self.operation, response, with_token_ids=not self.proxied)
        except Exception:
            logger.exception("agent-lightning-openai: could not read the %s response", self.operation)
            return
        attributes[semconv.LATENCY_MS] = round((time.time() - self.started) * 1000, 3)
        if not self.owned:
            attributes = {k: v for k, v in attributes.items() if k not in self.span.attributes}
        self.span.set_attributes(attributes)

    def fail(self, exc: BaseException) -> None:
        self.read_headers(getattr(getattr(exc, "response", None), "headers", None))  # the proxy recorded the error
        if self.owned:
            self.span.record_exception(exc)
            self.span.end()

    def finish(self, response: Any = None) -> None:
        if response is not None:
            self.record(response)
        if self.owned:
            self.span.end()

    def complete(self, result: Any) -> Any:
        """Record a synchronous result and return what the caller expects."""
        try:
            if self._added_raw and _is_raw_response(result):
                self.read_headers(result.headers)
                return self._parsed(result.parse())
            if _is_raw_response(result) and self._caller_raw == "true":
                self.read_headers(result.headers)
                if self.stream:
                    self._wrap_parse(result)
                else:
                    self.finish(result.parse())
                return result
            self.read_headers(getattr(result, "headers", None))
            return self._parsed(result)
        except Exception:
            return self._recording_failed(result)

    async def acomplete(self, result: Any) -> Any:
        """Record an asynchronous client's result and return what the caller expects."""
        try:
            if self._added_raw and _is_raw_response(result):
                self.read_headers(result.headers)
                parsed = result.parse()
                if inspect.isawaitable(parsed):
                    parsed = await parsed
                return self._parsed(parsed)
            if _is_raw_response(result) and self._caller_raw == "true":
                self.read_headers(result.headers)
                if self.stream:
                    self._wrap_parse(result)
                else:
                    parsed = result.parse()
                    if inspect.isawaitable(parsed):
                        parsed = await parsed
                    self.finish(parsed)
                return result
            self.read_headers(getattr(result, "headers", None))
            return self._parsed(result)
        except Exception:
            return self._recording_failed(result)

    def _recording_failed(self, result: Any) -> Any:
        """In the ``except`` block of a failed recording: log it, end the span, hand the caller its result."""
        logger.exception("agent-lightning-openai: recording the %s call failed", self.operation)
        self.finish()
        return result

    def _parsed(self, parsed: Any) -> Any:
        if _is_stream(parsed):
            self.read_headers(getattr(getattr(parsed, "response", None), "headers", None))
            from agent_lightning_openai.streams import wrap_stream

            return wrap_stream(parsed, self)
        if self.stream and not self.owned:
            return parsed
        self.finish(parsed)
        return parsed

    def _wrap_parse(self, raw: Any) -> None:
        """The caller asked for the raw response of a stream: wrap the stream its ``parse()`` returns."""
        original = raw.parse
        call = self

        def parse(*args: Any, **kwargs: Any) -> Any:
            parsed = original(*args, **kwargs)
            if inspect.isawaitable(parsed):

                async def later() -> Any:
                    return call._parsed(await parsed)

                return later()
            return call._parsed(parsed)

        try:
            raw.parse = parse
        except Exception:
            self.finish()

    def on_stream_end(self, state: StreamState, exc: BaseException | None = None) -> None:
        """Called once by the stream wrapper when the stream ends, is closed, or fails."""
        if not self.owned:  # another adapter's span: add what it lacks, let that adapter end it
            if exc is None and self.span.end_time is None:
                try:
                    attributes = state.attributes(with_token_ids=not self.proxied)
                    self.span.set_attributes({k: v for k, v in attributes.items() if k not in self.span.attributes})
                except Exception:
                    logger.exception("agent-lightning-openai: could not read the streamed %s response", self.operation)
            return
        if exc is not None:
            self.span.record_exception(exc)
        else:
            try:
                self.span.set_attributes(state.attributes(with_token_ids=not self.proxied))
            except Exception:
                logger.exception("agent-lightning-openai: could not read the streamed %s response", self.operation)
        self.span.set_attribute(semconv.LATENCY_MS, round((time.time() - self.started) * 1000, 3))
        self.span.end()
