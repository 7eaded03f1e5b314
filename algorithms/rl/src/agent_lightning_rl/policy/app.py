"""The OpenAI-compatible HTTP API of the policy server (FastAPI), with token ids per the Agent Lightning protocol.

Every generation response carries ``prompt_token_ids``, per-choice ``token_ids`` (exactly the sampled ids, EOS
included when sampled) and per-token logprobs (see :data:`~agent_lightning_rl.policy.sampling.LogprobsMode`), plus
the ``x-agl-model-version`` header and ``system_fingerprint`` naming the weights version that generated it.

Streaming with ``tools``: ids and logprobs stream as they are sampled, but the text is held until the choice ends,
then sent as one ``content`` delta or as ``tool_calls`` deltas (the parse needs the whole output).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .chat import ChatFormatError, parse_tool_calls, render_chat
from .engine import ChoiceDelta, EngineEvent, GenerationEngine, GenerationRequest, RequestFailed, RequestStarted
from .sampling import SamplingParams
from .schemas import ChatCompletionRequest, CompletionRequest, WeightsUpdate

VERSION_HEADER = "x-agl-model-version"


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {"message", "type", "code"}}`` body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes→unicode table used by byte-level BPE vocabularies."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes = visible[:]
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(visible, codes, strict=True)}


class TokenStrings:
    """Token id → (display string, raw bytes), as OpenAI's logprobs entries want them."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._bytes_of = _byte_decoder() if self._byte_level else {}
        self.lookup = lru_cache(maxsize=65536)(self._lookup)

    def _lookup(self, token_id: int) -> tuple[str, list[int]]:
        if self._byte_level and token_id not in self._tokenizer.all_special_ids:
            piece = self._tokenizer.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and all(ch in self._bytes_of for ch in piece):
                raw = bytes(self._bytes_of[ch] for ch in piece)
                return raw.decode("utf-8", errors="replace"), list(raw)
        text = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text, list(text.encode("utf-8"))


@dataclass
class _Choice:
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None

    def add(self, delta: ChoiceDelta) -> None:
        self.ids += delta.token_ids
        self.logprobs += delta.logprobs
        self.tops += delta.top_logprobs
        self.text += delta.text
        self.finish_reason = delta.finish_reason or self.finish_reason


class _EventStream:
    """Carries engine events (pushed from the worker thread) into the request's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def push(self, event: EngineEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the client and server are gone
            pass

    async def get(self) -> EngineEvent:
        return await self._queue.get()

    async def deltas(self, rows: int) -> AsyncIterator[ChoiceDelta | RequestFailed]:
        """The request's choice deltas until each of its ``rows`` choices has finished; a failure is the last event."""
        open_choices = rows
        while open_choices:
            event = await self._queue.get()
            if isinstance(event, RequestFailed):
                yield event
                return
            if isinstance(event, ChoiceDelta):
                open_choices -= event.finish_reason is not None
                yield event


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def create_app(engine: GenerationEngine, model_name: str, *, default_max_tokens: int = 1024) -> FastAPI:
    """The FastAPI app serving ``engine`` as ``model_name``."""
    app = FastAPI(title="Agent Lightning policy server")
    tokenizer = engine.tokenizer
    strings = TokenStrings(tokenizer)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}" for e in exc.errors()
        )
        return APIError(400, f"invalid request: {problems}").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind).response()

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404,
                f"model {name!r} is not served here; this server serves {model_name!r}",
                "not_found_error",
                "model_not_found",
            )

    def sampling(body: Any, max_tokens: int | None, prompts: list[list[int]], top_logprobs: int) -> SamplingParams:
        longest = max(len(p) for p in prompts)
        room = engine.context_length - longest if engine.context_length else None
        wanted = max_tokens if max_tokens is not None else default_max_tokens
        if room is not None and room < 1:
            raise APIError(400, f"prompt has {longest} tokens; the model's context is {engine.context_length}")
        try:
            return SamplingParams(
                max_tokens=min(wanted, room) if room is not None else wanted,
                temperature=1.0 if body.temperature is None else body.temperature,
                top_p=1.0 if body.top_p is None else body.top_p,
                top_k=max(0, body.top_k or 0),
                stop=_stops(body.stop),
                stop_token_ids=tuple(body.stop_token_ids or ()),
                ignore_eos=body.ignore_eos,
                seed=body.seed,
                top_logprobs=top_logprobs,
            )
        except ValueError as exc:
            raise APIError(400, str(exc)) from exc

    async def start(
        prompts: list[list[int]], params: SamplingParams, n: int
    ) -> tuple[_EventStream, GenerationRequest, str]:
        events = _EventStream()
        request = GenerationRequest(prompts, params, events.push, n=n)
        try:
            engine.submit(request)
        except ValueError as exc:
            raise APIError(400, str(exc)) from exc
        except RuntimeError as exc:
            raise APIError(503, str(exc), "server_error") from exc
        first = await events.get()
        if isinstance(first, RequestFailed):
            raise APIError(500, first.message, "server_error")
        assert isinstance(first, RequestStarted)
        return events, request, first.version

    async def collect(events: _EventStream, request: GenerationRequest) -> list[_Choice]:
        choices = [_Choice() for _ in range(request.rows)]
        try:
            async for event in events.deltas(request.rows):
                if isinstance(event, RequestFailed):
                    raise APIError(500, event.message, "server_error")
                choices[event.choice].add(event)
        finally:
            request.cancel()  # no-op when finished; stops generation when this handler is cancelled
        return choices

    def chat_logprobs(ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
        content = []
        for token_id, logprob, top in zip(ids, logprobs, tops, strict=True):
            text, raw = strings.lookup(token_id)
            alternatives = []
            for alt_id, alt_lp in top:
                alt_text, alt_raw = strings.lookup(alt_id)
                alternatives.append({"token": alt_text, "logprob": alt_lp, "bytes": alt_raw})
            content.append({"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives})
        return {"content": content}

    def completion_logprobs(
        ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]], want_top: bool, offset: int
    ) -> dict[str, Any]:
        tokens = [strings.lookup(i)[0] for i in ids]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        top_dicts = [{strings.lookup(a)[0]: lp for a, lp in top} for top in tops] if want_top else None
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top_dicts, "text_offset": offsets}

    def headers(version: str) -> dict[str, str]:
        return {VERSION_HEADER: version}

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        check_model(body.model)
        use_tools = bool(body.tools) and body.tool_choice != "none"
        tool_names = {
            str(t["function"].get("name"))
            for t in body.tools or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        }
        try:
            prompt_text = render_chat(tokenizer, body.messages, body.tools if use_tools else None)
        except ChatFormatError as exc:
            raise APIError(400, str(exc)) from exc
        prompt_ids: list[int] = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        top = body.top_logprobs or 0
        params = sampling(body, max_tokens, [prompt_ids], top)
        events, request, version = await start([prompt_ids], params, body.n)
        response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": response_id, "created": created, "model": model_name, "system_fingerprint": version}

        def message(text: str) -> tuple[dict[str, Any], bool]:
            content, calls = parse_tool_calls(text, tool_names) if use_tools else (text, [])
            result: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                result["tool_calls"] = calls
            return result, bool(calls)

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            async def stream() -> AsyncIterator[str]:
                buffers = [""] * request.rows
                completion_tokens = 0
                try:
                    yield _sse(
                        {
                            **base,
                            "object": "chat.completion.chunk",
                            "prompt_token_ids": prompt_ids,
                            "choices": [
                                {
                                    "index": i,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                    "token_ids": [],
                                }
                                for i in range(request.rows)
                            ],
                        }
                    )
                    async for event in events.deltas(request.rows):
                        if isinstance(event, RequestFailed):
                            yield _sse({"error": {"message": event.message, "type": "server_error", "code": None}})
                            return
                        completion_tokens += len(event.token_ids)
                        delta: dict[str, Any] = {}
                        finish = event.finish_reason
                        if use_tools:
                            buffers[event.choice] += event.text
                        elif event.text:
                            delta["content"] = event.text
                        if finish is not None and use_tools:
                            msg, called = message(buffers[event.choice])
                            if called:
                                finish = "tool_calls"
                                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(msg["tool_calls"])]
                            if msg["content"]:
                                delta["content"] = msg["content"]
                        yield _sse(
                            {
                                **base,
                                "object": "chat.completion.chunk",
                                "choices": [
                                    {
                                        "index": event.choice,
                                        "delta": delta,
                                        "finish_reason": finish,
                                        "token_ids": event.token_ids,
                                        "logprobs": chat_logprobs(event.token_ids, event.logprobs, event.top_logprobs),
                                    }
                                ],
                            }
                        )
                    if include_usage:
                        usage = {
                            "prompt_tokens": len(prompt_ids),
                            "completion_tokens": completion_tokens,
                            "total_tokens": len(prompt_ids) + completion_tokens,
                        }
                        yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                    yield "data: [DONE]\n\n"
                finally:
                    request.cancel()

            return StreamingResponse(stream(), media_type="text/event-stream", headers=headers(version))

        choices = await collect(events, request)
        out = []
        for i, choice in enumerate(choices):
            msg, called = message(choice.text)
            out.append(
                {
                    "index": i,
                    "message": msg,
                    "finish_reason": "tool_calls" if called else choice.finish_reason,
                    "token_ids": choice.ids,
                    "logprobs": chat_logprobs(choice.ids, choice.logprobs, choice.tops),
                }
            )
        completion_tokens = sum(len(c.ids) for c in choices)
        payload = {
            **base,
            "object": "chat.completion",
            "prompt_token_ids": prompt_ids,
            "choices": out,
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt_ids) + completion_tokens,
            },
        }
        return JSONResponse(payload, headers=headers(version))

    # ------------------------------------------------------------------ completions
    def prompt_ids_of(prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt is empty")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]
        result = []
        for p in prompt:
            if isinstance(p, str):
                result.append(tokenizer(p)["input_ids"])
            elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                result.append(list(p))
            else:
                raise APIError(400, "prompt must be a string, a list of token ids, or a list of either")
        return result

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        check_model(body.model)
        if body.echo:
            raise APIError(400, "echo is not supported by the policy server")
        prompts = prompt_ids_of(body.prompt)
        want_top = body.logprobs is not None and body.logprobs > 0
        params = sampling(body, body.max_tokens, prompts, body.logprobs or 0)
        events, request, version = await start(prompts, params, body.n)
        response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "system_fingerprint": version,
        }

        def prompt_of(choice: int) -> list[int]:
            return prompts[choice // body.n]

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            async def stream() -> AsyncIterator[str]:
                offsets = [0] * request.rows
                completion_tokens = 0
                try:
                    yield _sse(
                        {
                            **base,
                            "prompt_token_ids": prompts[0] if len(prompts) == 1 else None,
                            "choices": [
                                {
                                    "index": i,
                                    "text": "",
                                    "logprobs": None,
                                    "finish_reason": None,
                                    "prompt_token_ids": prompt_of(i),
                                    "token_ids": [],
                                }
                                for i in range(request.rows)
                            ],
                        }
                    )
                    async for event in events.deltas(request.rows):
                        if isinstance(event, RequestFailed):
                            yield _sse({"error": {"message": event.message, "type": "server_error", "code": None}})
                            return
                        completion_tokens += len(event.token_ids)
                        logprobs = completion_logprobs(
                            event.token_ids, event.logprobs, event.top_logprobs, want_top, offsets[event.choice]
                        )
                        offsets[event.choice] += len(event.text)
                        yield _sse(
                            {
                                **base,
                                "choices": [
                                    {
                                        "index": event.choice,
                                        "text": event.text,
                                        "finish_reason": event.finish_reason,
                                        "token_ids": event.token_ids,
                                        "logprobs": logprobs,
                                    }
                                ],
                            }
                        )
                    if include_usage:
                        prompt_tokens = sum(len(p) for p in prompts)
                        usage = {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens,
                        }
                        yield _sse({**base, "choices": [], "usage": usage})
                    yield "data: [DONE]\n\n"
                finally:
                    request.cancel()

            return StreamingResponse(stream(), media_type="text/event-stream", headers=headers(version))

        choices = await collect(events, request)
        prompt_tokens = sum(len(p) for p in prompts)
        completion_tokens = sum(len(c.ids) for c in choices)
        payload = {
            **base,
            "prompt_token_ids": prompts[0] if len(prompts) == 1 else None,
            "choices": [
                {
                    "index": i,
                    "text": c.text,
                    "finish_reason": c.finish_reason,
                    "prompt_token_ids": prompt_of(i),
                    "token_ids": c.ids,
                    "logprobs": completion_logprobs(c.ids, c.logprobs, c.tops, want_top, 0),
                }
                for i, c in enumerate(choices)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return JSONResponse(payload, headers=headers(version))

    # ------------------------------------------------------------------ models, status, weights
    @app.get("/v1/models")
    async def models() -> Response:
        card = {
            "id": model_name,
            "object": "model",
            "created": 0,
            "owned_by": "agent-lightning",
            "root": model_name,
            "max_model_len": engine.context_length,
            "agl_version": engine.version,
        }
        return JSONResponse({"object": "list", "data": [card]}, headers=headers(engine.version))

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok", "version": engine.version}, headers=headers(engine.version))

    @app.get("/agl/status")
    async def status() -> Response:
        body = {
            "model": model_name,
            "version": engine.version,
            "logprobs_mode": engine.logprobs_mode,
            "max_batch_size": engine.max_batch_size,
            "stats": engine.stats(),
        }
        return JSONResponse(body, headers=headers(engine.version))

    @app.post("/agl/weights")
    async def update_weights(body: WeightsUpdate, request: Request) -> Response:
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            raise APIError(
                403,
                f"weight updates are only accepted from loopback; this request came from {client}",
                "permission_error",
            )
        started = time.perf_counter()
        try:
            await run_in_threadpool(engine.update_weights, body.path, body.version)
        except (FileNotFoundError, ValueError) as exc:
            raise APIError(400, f"cannot load weights from {body.path!r}: {exc}") from exc
        seconds = round(time.perf_counter() - started, 3)
        return JSONResponse({"version": engine.version, "seconds": seconds}, headers=headers(engine.version))

    return app
