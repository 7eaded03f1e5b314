"""What the proxy records: choices read from responses and stream chunks, turned into ``llm`` spans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent_lightning import semconv
from agent_lightning.types import Span, SpanStatus

from agent_lightning_proxy.protocol import LLM_WARNING, NO_TOKEN_IDS_WARNING

Operation = Literal["chat", "text_completion"]

_SAMPLING: tuple[tuple[str, str], ...] = (
    ("temperature", semconv.GEN_AI_REQUEST_TEMPERATURE),
    ("top_p", semconv.GEN_AI_REQUEST_TOP_P),
    ("max_tokens", semconv.GEN_AI_REQUEST_MAX_TOKENS),
    ("max_completion_tokens", semconv.GEN_AI_REQUEST_MAX_TOKENS),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)


def _ints(value: Any) -> list[int] | None:
    if type(value) is list and all(type(v) is int for v in value):
        return value
    return None


def _floats(values: list[Any]) -> list[float] | None:
    out: list[float] = []
    for v in values:
        if type(v) is float or type(v) is int:
            out.append(float(v))
        else:
            return None
    return out


def _chat_logprobs(logprobs: Any) -> list[Any]:
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
        if isinstance(content, list):
            return [item.get("logprob") if isinstance(item, dict) else None for item in content]
    return []


def _completion_logprobs(logprobs: Any) -> list[Any]:
    if isinstance(logprobs, dict):
        values = logprobs.get("token_logprobs")
        if isinstance(values, list):
            return values
    return []


@dataclass
class ChoiceRecord:
    """One choice of a response, as far as it arrived."""

    index: int
    message: dict[str, Any] = field(default_factory=lambda: {"role": "assistant", "content": None})
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


@dataclass
class ResponseInfo:
    """Response-level facts shared by every choice."""

    response_id: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    resources_id: str | None = None


def response_choices(operation: Operation, payload: dict[str, Any]) -> tuple[ResponseInfo, list[ChoiceRecord]]:
    """Read a non-streaming chat/completions response."""
    info = ResponseInfo(
        response_id=payload.get("id") if isinstance(payload.get("id"), str) else None,
        model=payload.get("model") if isinstance(payload.get("model"), str) else None,
        usage=payload.get("usage") if isinstance(payload.get("usage"), dict) else None,
    )
    prompt = _ints(payload.get("prompt_token_ids"))
    records: list[ChoiceRecord] = []
    for position, choice in enumerate(payload.get("choices") or []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index")
        index = index if type(index) is int else position
        if operation == "chat":
            message = choice.get("message")
            message = dict(message) if isinstance(message, dict) else {"role": "assistant", "content": None}
            raw_logprobs = _chat_logprobs(choice.get("logprobs"))
        else:
            message = {"role": "assistant", "content": choice.get("text")}
            raw_logprobs = _completion_logprobs(choice.get("logprobs"))
        for key in ("token_ids", "prompt_token_ids"):
            message.pop(key, None)
        records.append(
            ChoiceRecord(
                index=index,
                message=message,
                finish_reason=choice.get("finish_reason"),
                prompt_token_ids=_ints(choice.get("prompt_token_ids")) or prompt,
                token_ids=_ints(choice.get("token_ids")),
                logprobs=_floats(raw_logprobs) if raw_logprobs else None,
            )
        )
    return info, records


@dataclass
class _Partial:
    content: list[str] = field(default_factory=list)
    role: str = "assistant"
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    refusal: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] = field(default_factory=list)
    saw_token_ids: bool = False
    logprobs: list[Any] = field(default_factory=list)


class StreamAccumulator:
    """Merges SSE chunks into whole choices: text, tool calls, token ids and logprobs."""

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.info = ResponseInfo()
        self.prompt_token_ids: list[int] | None = None
        self.error: dict[str, Any] | None = None
        self._choices: dict[int, _Partial] = {}

    def feed(self, chunk: dict[str, Any]) -> None:
        """Take one parsed ``data:`` payload."""
        error = chunk.get("error")
        if error is not None and not chunk.get("choices"):
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return
        info = self.info
        if info.response_id is None and isinstance(chunk.get("id"), str):
            info.response_id = chunk["id"]
        if info.model is None and isinstance(chunk.get("model"), str):
            info.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            info.usage = chunk["usage"]
        prompt = chunk.get("prompt_token_ids")
        if prompt is not None and self.prompt_token_ids is None:
            self.prompt_token_ids = _ints(prompt)
        chat = self.operation == "chat"
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            partial = self._choices.get(index)
            if partial is None:
                partial = self._choices[index] = _Partial()
            ids = choice.get("token_ids")
            if ids is not None:
                partial.saw_token_ids = True
                partial.token_ids.extend(ids)
            if choice.get("prompt_token_ids") is not None and partial.prompt_token_ids is None:
                partial.prompt_token_ids = _ints(choice["prompt_token_ids"])
            if choice.get("finish_reason") is not None:
                partial.finish_reason = choice["finish_reason"]
            if chat:
                partial.logprobs.extend(_chat_logprobs(choice.get("logprobs")))
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    partial.content.append(delta["content"])
                if delta.get("refusal"):
                    partial.refusal.append(delta["refusal"])
                if delta.get("role"):
                    partial.role = delta["role"]
                for call in delta.get("tool_calls") or ():
                    self._merge_tool_call(partial, call)
            else:
                partial.logprobs.extend(_completion_logprobs(choice.get("logprobs")))
                if choice.get("text"):
                    partial.content.append(choice["text"])

    @staticmethod
    def _merge_tool_call(partial: _Partial, call: dict[str, Any]) -> None:
        key = call.get("index", len(partial.tool_calls))
        slot = partial.tool_calls.get(key)
        if slot is None:
            slot = partial.tool_calls[key] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]

    @property
    def finished(self) -> bool:
        """Whether every choice seen so far has a finish reason."""
        return bool(self._choices) and all(p.finish_reason is not None for p in self._choices.values())

    def records(self) -> list[ChoiceRecord]:
        out = []
        for index in sorted(self._choices):
            partial = self._choices[index]
            text = "".join(partial.content)
            if self.operation == "chat":
                message: dict[str, Any] = {"role": partial.role, "content": text or None}
                if partial.refusal:
                    message["refusal"] = "".join(partial.refusal)
                if partial.tool_calls:
                    message["tool_calls"] = [partial.tool_calls[k] for k in sorted(partial.tool_calls)]
            else:
                message = {"role": "assistant", "content": text}
            ids = partial.token_ids if partial.saw_token_ids else None
            logprobs = _floats(partial.logprobs) if partial.logprobs else None
            out.append(
                ChoiceRecord(
                    index=index,
                    message=message,
                    finish_reason=partial.finish_reason,
                    prompt_token_ids=partial.prompt_token_ids or self.prompt_token_ids,
                    token_ids=ids,
                    logprobs=logprobs,
                )
            )
        return out


@dataclass
class CallContext:
    """One attributed model call, from the request until its spans are built."""

    operation: Operation
    rollout_id: str
    attempt_id: str
    trace_id: str
    parent_id: str | None
    span_ids: list[str]
    sequence_ids: list[int]
    request: dict[str, Any]
    start_time: float
    started: float
    """``time.perf_counter()`` at the start, for the latency."""
    joined: dict[str, Any] = field(default_factory=dict)
    """The caller's attributes for the record (``x-agl-span-attributes``); the proxy's own take precedence."""

    def request_attributes(self) -> dict[str, Any]:
        body = self.request
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: self.operation,
            semconv.GEN_AI_REQUEST_MODEL: str(body.get("model")),
        }
        for key, name in _SAMPLING:
            value = body.get(key)
            if value is not None:
                attributes[name] = value
        if body.get("stream") is True:
            attributes["gen_ai.request.stream"] = True
        stop = body.get("stop")
        if stop is not None:
            attributes[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else stop
        if self.operation == "chat":
            attributes[semconv.GEN_AI_INPUT_MESSAGES] = body.get("messages")
        tools = body.get("tools")
        if tools is not None:
            attributes[semconv.GEN_AI_TOOL_DEFINITIONS] = tools
        return attributes

    def prompt_messages(self, choice_index: int) -> list[dict[str, Any]] | None:
        """For completions: the prompt (of this choice's row) as a user message."""
        prompt = self.request.get("prompt")
        if isinstance(prompt, list) and prompt and not all(type(p) is int for p in prompt):
            n = self.request.get("n") or 1
            row = choice_index // n if isinstance(n, int) and n > 0 else 0
            prompt = prompt[row] if row < len(prompt) else None
        return None if prompt is None else [{"role": "user", "content": prompt}]


def build_spans(
    call: CallContext,
    info: ResponseInfo,
    choices: list[ChoiceRecord],
    end_time: float,
    latency_ms: float,
    *,
    error: tuple[str, str] | None = None,
) -> list[Span]:
    """One ``llm`` span per span id of ``call`` (choice ``i`` → ``call.span_ids[i]``), named ``{operation} {model}``.

    ``error`` is ``(error.type, message)`` when the call failed; the spans then keep what arrived.
    """
    base = {**call.joined, **call.request_attributes()}
    base[semconv.RECORDED_BY] = "proxy"
    base[semconv.LATENCY_MS] = round(latency_ms, 3)
    if info.response_id is not None:
        base[semconv.GEN_AI_RESPONSE_ID] = info.response_id
    if info.model is not None:
        base[semconv.GEN_AI_RESPONSE_MODEL] = info.model
    if info.resources_id is not None:
        base[semconv.RESOURCES_ID] = info.resources_id
    if error is not None:
        base[semconv.ERROR_TYPE] = error[0]
    by_index = {c.index: c for c in choices}
    usage = info.usage or {}
    single = len(call.span_ids) == 1
    model = call.request.get("model")
    name = f"{call.operation} {model}" if model else call.operation
    status = SpanStatus(code="error", message=error[1]) if error is not None else SpanStatus(code="ok")
    spans = []
    for index, (span_id, sequence_id) in enumerate(zip(call.span_ids, call.sequence_ids, strict=True)):
        choice = by_index.get(index) or ChoiceRecord(index=index)
        attributes = dict(base)
        attributes[semconv.CHOICE_INDEX] = index
        if call.operation == "text_completion":
            messages = call.prompt_messages(index)
            if messages is not None:
                attributes[semconv.GEN_AI_INPUT_MESSAGES] = messages
        if choices or error is None:
            attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = [choice.message]
            attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [choice.finish_reason]
        prompt_ids, completion_ids = choice.prompt_token_ids, choice.token_ids
        if prompt_ids is not None and completion_ids is not None:
            attributes[semconv.PROMPT_TOKEN_IDS] = prompt_ids
            attributes[semconv.COMPLETION_TOKEN_IDS] = completion_ids
            attributes[semconv.TOKEN_IDS_AVAILABLE] = True
            attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = len(prompt_ids)
            attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = len(completion_ids)
            if choice.logprobs is not None and len(choice.logprobs) == len(completion_ids):
                attributes[semconv.COMPLETION_LOGPROBS] = choice.logprobs
        else:
            attributes[semconv.TOKEN_IDS_AVAILABLE] = False
            if error is None:
                attributes[LLM_WARNING] = NO_TOKEN_IDS_WARNING
            if isinstance(usage.get("prompt_tokens"), int):
                attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage["prompt_tokens"]
            if single and isinstance(usage.get("completion_tokens"), int):
                attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage["completion_tokens"]
        spans.append(
            Span.model_construct(
                rollout_id=call.rollout_id,
                attempt_id=call.attempt_id,
                sequence_id=sequence_id,
                trace_id=call.trace_id,
                span_id=span_id,
                parent_id=call.parent_id,
                name=name,
                kind="llm",
                attributes=attributes,
                start_time=call.start_time,
                end_time=end_time,
                status=status,
            )
        )
    return spans
