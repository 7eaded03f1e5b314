"""Streaming responses: accumulate the chunks, end the span when the stream is consumed or closed."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import wrapt
from agent_lightning import semconv
from agent_lightning.instrumentation.jsonable import jsonable

if TYPE_CHECKING:
    from agent_lightning_openai.calls import LLMCall


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def _extra(obj: Any, key: str) -> Any:
    value = getattr(obj, key, None)
    if value is None:
        value = (getattr(obj, "model_extra", None) or {}).get(key)
    return value


class StreamState:
    """What the chunks of one streamed response add up to."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.response_id: str | None = None
        self.model: str | None = None
        self.content: dict[int, list[str]] = {}
        self.tool_calls: dict[int, dict[int, dict[str, Any]]] = {}
        self.finish_reasons: dict[int, str] = {}
        self.usage: tuple[int | None, int | None] | None = None
        self.prompt_token_ids: list[int] | None = None
        self.completion_token_ids: dict[int, list[int]] = {}
        self.logprobs: dict[int, list[float]] = {}
        self.final_response: Any = None
        self.chunks = 0

    def add(self, chunk: Any) -> None:
        self.chunks += 1
        if self.operation == "responses":
            if getattr(chunk, "type", None) in {"response.completed", "response.failed", "response.incomplete"}:
                self.final_response = getattr(chunk, "response", None)
            return
        self.response_id = self.response_id or getattr(chunk, "id", None)
        self.model = self.model or getattr(chunk, "model", None)
        prompt_ids = _int_list(_extra(chunk, "prompt_token_ids"))
        if prompt_ids is not None and self.prompt_token_ids is None:
            self.prompt_token_ids = prompt_ids
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        for choice in getattr(chunk, "choices", None) or []:
            index = getattr(choice, "index", 0) or 0
            if self.operation == "chat":
                self._add_delta(index, getattr(choice, "delta", None))
            else:
                text = getattr(choice, "text", None)
                if text:
                    self.content.setdefault(index, []).append(text)
                choice_prompt = _int_list(_extra(choice, "prompt_token_ids"))
                if choice_prompt is not None and self.prompt_token_ids is None:
                    self.prompt_token_ids = choice_prompt
            ids = _int_list(_extra(choice, "token_ids"))
            if ids:
                self.completion_token_ids.setdefault(index, []).extend(ids)
            logprobs = getattr(choice, "logprobs", None)
            content = getattr(logprobs, "content", None) if logprobs is not None else None
            if content:
                self.logprobs.setdefault(index, []).extend(
                    float(item.logprob) for item in content if isinstance(getattr(item, "logprob", None), (int, float))
                )
            reason = getattr(choice, "finish_reason", None)
            if reason:
                self.finish_reasons[index] = str(reason)

    def _add_delta(self, index: int, delta: Any) -> None:
        if delta is None:
            return
        text = getattr(delta, "content", None)
        if text:
            self.content.setdefault(index, []).append(text)
        for call in getattr(delta, "tool_calls", None) or []:
            slot = self.tool_calls.setdefault(index, {}).setdefault(
                getattr(call, "index", 0) or 0,
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
            )
            if getattr(call, "id", None):
                slot["id"] = call.id
            function = getattr(call, "function", None)
            if function is not None:
                if getattr(function, "name", None):
                    slot["function"]["name"] += function.name
                if getattr(function, "arguments", None):
                    slot["function"]["arguments"] += function.arguments

    def attributes(self, *, with_token_ids: bool) -> dict[str, Any]:
        """The span attributes of the whole streamed response."""
        from agent_lightning_openai.calls import response_attributes

        if self.operation == "responses":
            if self.final_response is None:
                return {}
            return response_attributes("responses", self.final_response, with_token_ids=with_token_ids)
        attributes: dict[str, Any] = {}
        if self.response_id:
            attributes[semconv.GEN_AI_RESPONSE_ID] = self.response_id
        if self.model:
            attributes[semconv.GEN_AI_RESPONSE_MODEL] = self.model
        indexes = sorted(set(self.content) | set(self.tool_calls) | set(self.finish_reasons)) or [0]
        attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [self.finish_reasons.get(i, "unknown") for i in indexes]
        messages = []
        for i in indexes:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content.get(i, [])) or None}
            calls = self.tool_calls.get(i)
            if calls:
                message["tool_calls"] = [calls[k] for k in sorted(calls)]
            messages.append(message)
        attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = jsonable(messages)
        if self.usage is not None:
            if isinstance(self.usage[0], int):
                attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = self.usage[0]
            if isinstance(self.usage[1], int):
                attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = self.usage[1]
        if with_token_ids:
            completion = self.completion_token_ids.get(indexes[0])
            if self.prompt_token_ids is not None and completion is not None:
                attributes[semconv.PROMPT_TOKEN_IDS] = self.prompt_token_ids
                attributes[semconv.COMPLETION_TOKEN_IDS] = completion
                attributes[semconv.TOKEN_IDS_AVAILABLE] = True
                logprobs = self.logprobs.get(indexes[0])
                if logprobs is not None and len(logprobs) == len(completion):
                    attributes[semconv.COMPLETION_LOGPROBS] = logprobs
            else:
                attributes[semconv.TOKEN_IDS_AVAILABLE] = False
        return attributes


class _Finisher:
    """Ends the call's span exactly once, whichever way the stream ends."""

    def __init__(self, call: LLMCall) -> None:
        self.call = call
        self.state = StreamState(call.operation)
        self._done = False
        self._lock = threading.Lock()

    def add(self, chunk: Any) -> None:
        try:
            self.state.add(chunk)
        except Exception:  # a chunk we do not understand must not break the agent
            pass

    def done(self, exc: BaseException | None = None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self.call.on_stream_end(self.state, exc)


class _Traced(wrapt.ObjectProxy):  # type: ignore[misc]
    """A proxy of an SDK stream whose finisher ends the call's span, at the latest when the stream is collected."""

    def __init__(self, wrapped: Any, finisher: _Finisher) -> None:
        super().__init__(wrapped)
        self._self_finisher = finisher

    def __del__(self) -> None:
        try:
            self._self_finisher.done()
        except Exception:
            pass


class TracedStream(_Traced):
    """A ``Stream`` that records its chunks; ``isinstance(s, openai.Stream)`` still holds."""

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self.__wrapped__)
        except StopIteration:
            self._self_finisher.done()
            raise
        except BaseException as exc:
            self._self_finisher.done(exc)
            raise
        self._self_finisher.add(chunk)
        return chunk

    def __enter__(self) -> Any:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_finisher.done(exc)

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_finisher.done()


class TracedAsyncStream(_Traced):
    """An ``AsyncStream`` that records its chunks; ``isinstance(s, openai.AsyncStream)`` still holds."""

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            self._self_finisher.done()
            raise
        except BaseException as exc:
            self._self_finisher.done(exc)
            raise
        self._self_finisher.add(chunk)
        return chunk

    async def __aenter__(self) -> Any:
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            self._self_finisher.done(exc)

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_finisher.done()

    async def aclose(self) -> None:
        await self.close()


def wrap_stream(stream: Any, call: LLMCall) -> Any:
    """Wrap an SDK ``Stream`` / ``AsyncStream`` so that ``call``'s span ends with it."""
    finisher = _Finisher(call)
    if hasattr(stream, "__anext__"):
        return TracedAsyncStream(stream, finisher)
    return TracedStream(stream, finisher)
