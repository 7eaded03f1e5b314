"""The proxy's ASGI app: forward OpenAI-compatible calls upstream and record each as ``llm`` spans.

Routes (``PREFIX`` is empty, ``/rollout/{rollout_id}`` or ``/rollout/{rollout_id}/attempt/{attempt_id}``)::

    POST PREFIX/v1/chat/completions   recorded (streaming or not)
    POST PREFIX/v1/completions        recorded
    GET  PREFIX/v1/models             forwarded
    *    PREFIX/v1/...                forwarded unchanged
    GET  /health                      {"status": "ok"} (with the proxy's key: its counters too)

Without a path prefix the call is attributed by the ``x-agl-rollout-id`` / ``x-agl-attempt-id``
headers; a call attributed to nothing is forwarded but not recorded.

A recorded call is stored before it is answered (a stream: before its last event), batched with the
calls answered at the same time, so once the agent has the answer the store has the record; a store
slower than ``store_timeout`` delays no answer longer (a warning names the call). An adapter that
sends its span's id (``x-agl-span-id``), parent and attributes gets that one span back as the record,
confirmed by the response's ``x-agl-span-id``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson
import yarl
from agent_lightning.types import Span, new_span_id, new_trace_id
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent_lightning_proxy.attribution import AttributionError, Attributor
from agent_lightning_proxy.auth import AUTHORIZED
from agent_lightning_proxy.protocol import (
    ATTEMPT_HEADER,
    MAX_SPAN_ATTRIBUTES_BYTES,
    MODEL_VERSION_HEADER,
    NO_TOKEN_IDS_WARNING,
    PARENT_SPAN_HEADER,
    PROXY_SEQUENCE_BASE,
    ROLLOUT_HEADER,
    SPAN_ATTRIBUTES_HEADER,
    SPAN_ID_HEADER,
    error_body,
)
from agent_lightning_proxy.records import (
    CallContext,
    ChoiceRecord,
    Operation,
    ResponseInfo,
    StreamAccumulator,
    build_spans,
    response_choices,
)

logger = logging.getLogger("agent_lightning_proxy")

_PATH = re.compile(r"^(?:/rollout/(?P<rollout>[^/]+)(?:/attempt/(?P<attempt>[^/]+))?)?/v1/(?P<endpoint>.+)$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}$")
_GENERATION = {"chat/completions": "chat", "completions": "text_completion"}
_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)
"""What the upstream client raises when the upstream is unreachable, too slow or breaks off."""
_OWN_PREFIXES = ("agl.llm.", "agl.reward.")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_FORWARDED_REQUEST_HEADERS = ("authorization", "openai-organization", "openai-project", "x-request-id")


@dataclass
class ProxyStats:
    """Counts since the proxy started."""

    requests: int = 0
    recorded_calls: int = 0
    recorded_spans: int = 0
    unattributed_calls: int = 0
    """Calls forwarded without a rollout to attribute them to (not recorded)."""
    calls_without_token_ids: int = 0
    failed_calls: int = 0
    """Calls the upstream failed (HTTP error, timeout, unreachable, broken stream)."""
    late_records: int = 0
    """Calls answered before their record was stored (the store took longer than ``store_timeout``)."""
    refused_calls: int = 0
    """Calls refused before forwarding (unknown rollout or attempt, malformed request)."""


@dataclass(frozen=True)
class ProxySettings:
    """How the proxy forwards (see :class:`~agent_lightning_proxy.LLMProxy` for the meaning)."""

    upstream: str
    model_map: Mapping[str, str] | None = None
    upstream_api_key: str | None = None
    timeout: float = 300.0
    request_token_ids: bool = True
    max_connections: int = 512
    store_timeout: float = 5.0


class _Failure(Exception):
    """An upstream failure, answered to the agent as an OpenAI-style error."""

    def __init__(self, status: int, message: str, error_type: str, code: str | None, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.code = status, message, error_type, code
        self.body = body if body is not None else error_body(message, "server_error", code)


def upstream_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` → ``http://host:port/v1``."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"upstream must be an http(s) URL such as http://127.0.0.1:8000/v1, got {url!r}")
    return base if base.endswith("/v1") else base + "/v1"


def _error(
    status: int, message: str, type_: str, code: str | None, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)


def _rows(operation: Operation, body: Mapping[str, Any]) -> int:
    n = body.get("n")
    n = n if isinstance(n, int) and n > 0 else 1
    if operation == "text_completion":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not all(type(p) is int for p in prompt):
            return n * len(prompt)
    return n


def _strip(payload: dict[str, Any], token_ids: bool, logprobs: bool) -> None:
    """Remove the fields the proxy asked for on the agent's behalf."""
    if token_ids:
        payload.pop("prompt_token_ids", None)
    for choice in payload.get("choices") or ():
        if token_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
        if logprobs and "logprobs" in choice:
            choice["logprobs"] = None


def _upstream_error(status: int, content: bytes) -> _Failure:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        message = str(parsed["error"].get("message") or f"upstream returned HTTP {status}")
        body: Any = parsed
    else:
        text = content.decode("utf-8", errors="replace").strip()[:500]
        message = f"upstream returned HTTP {status}" + (f": {text}" if text else "")
        body = error_body(message, "server_error" if status >= 500 else "invalid_request_error", None)
    return _Failure(status, message, str(status), None, body)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The lines of an event stream, of any length (aiohttp's own line iterator caps their size)."""
    pending = b""
    async for chunk in stream.iter_any():
        pending += chunk
        if b"\n" not in chunk:  # a long line arriving in pieces: no need to re-split what is pending
            continue
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")


class ProxyHandler:
    """The request handling behind :func:`create_app`.

    :param emit: queues a call's spans for the store without blocking; the future it returns is set
        once they are stored (``True``) or refused (``False``).
    :param attributor: resolves rollout/attempt ids (``None``: calls are never recorded).
    """

    def __init__(
        self,
        settings: ProxySettings,
        emit: Callable[[Sequence[Span]], Future[bool]],
        attributor: Attributor | None,
    ) -> None:
        self.settings = settings
        self.base = upstream_base(settings.upstream)
        self.emit = emit
        self.attributor = attributor
        self.stats = ProxyStats()
        self.client: aiohttp.ClientSession | None = None
        self._sequences: dict[str, Iterator[int]] = {}
        self._traces: dict[str, str] = {}
        self._warned: set[str] = set()
        self._auth = {"authorization": f"Bearer {settings.upstream_api_key}"} if settings.upstream_api_key else {}
        self._used_ids: OrderedDict[str, None] = OrderedDict()

    # ------------------------------------------------------------------ lifecycle
    def open_client(self) -> aiohttp.ClientSession:
        """The upstream connection pool (call with the serving event loop running).

        aiohttp rather than httpx: its C-accelerated client costs about a quarter of httpx's per call,
        which is most of what the proxy adds to an LLM call's latency.
        """
        timeout = self.settings.timeout
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.max_connections, keepalive_timeout=60),
            # ``sock_read`` bounds each wait for the upstream (a response, or the next piece of a stream).
            timeout=aiohttp.ClientTimeout(total=None, connect=min(10.0, timeout), sock_read=timeout),
            trust_env=False,
        )
        return self.client

    async def close_client(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # ------------------------------------------------------------------ helpers
    def _headers(self, request: Request) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        incoming = request.headers
        for name in _FORWARDED_REQUEST_HEADERS:
            value = incoming.get(name)
            if value is not None:
                headers[name] = value
        headers.update(self._auth)
        return headers

    def _model(self, model: Any) -> Any:
        mapping = self.settings.model_map
        if not mapping or not isinstance(model, str):
            return model
        return mapping.get(model, mapping.get("*", model))

    def _span_id(self, request: Request) -> str:
        """The id the caller asked the record to take, if valid and unused; otherwise a new one."""
        given = request.headers.get(SPAN_ID_HEADER)
        if given is None:
            return new_span_id()
        if not _HEX16.match(given):
            self._warn_once("span-id", "ignoring %s=%r: not 16 lowercase hex digits", SPAN_ID_HEADER, given)
            return new_span_id()
        if given in self._used_ids:  # a client retrying the call: the first try keeps its record
            return new_span_id()
        self._used_ids[given] = None
        if len(self._used_ids) > 100_000:
            self._used_ids.popitem(last=False)
        return given

    def _joined(self, request: Request) -> dict[str, Any]:
        """The caller's attributes for the record (``x-agl-span-attributes``); invalid ones are ignored."""
        raw = request.headers.get(SPAN_ATTRIBUTES_HEADER)
        if raw is None:
            return {}
        if len(raw) > MAX_SPAN_ATTRIBUTES_BYTES:
            self._warn_once(
                "attributes-size",
                "ignoring %s: %d bytes, over the limit of %d",
                SPAN_ATTRIBUTES_HEADER,
                len(raw),
                MAX_SPAN_ATTRIBUTES_BYTES,
            )
            return {}
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except ValueError as exc:
            self._warn_once("attributes", "ignoring %s: not JSON (%s)", SPAN_ATTRIBUTES_HEADER, exc)
            return {}
        if not isinstance(value, dict):
            self._warn_once("attributes", "ignoring %s: not a JSON object", SPAN_ATTRIBUTES_HEADER)
            return {}
        # what the proxy itself measures (token ids, rewards) is never taken from the caller
        return {k: v for k, v in value.items() if not k.startswith(_OWN_PREFIXES)}

    def _trace(self, request: Request, attempt_id: str) -> tuple[str, str | None]:
        parent = request.headers.get(PARENT_SPAN_HEADER)
        if parent is not None and not _HEX16.match(parent):
            self._warn_once("parent", "ignoring %s=%r: not 16 lowercase hex digits", PARENT_SPAN_HEADER, parent)
            parent = None
        traceparent = request.headers.get("traceparent")
        match = _TRACEPARENT.match(traceparent) if traceparent else None
        if match is not None:
            return match["trace"], parent or match["span"]
        trace = self._traces.get(attempt_id)
        if trace is None:
            trace = self._traces[attempt_id] = new_trace_id()
        return trace, parent

    def _sequence_ids(self, attempt_id: str, count: int) -> list[int]:
        counter = self._sequences.get(attempt_id)
        if counter is None:
            counter = self._sequences[attempt_id] = itertools.count(PROXY_SEQUENCE_BASE)
        return [next(counter) for _ in range(count)]

    def _extend_ids(self, call: CallContext, choices: int) -> None:
        """Give choices beyond the requested ``n`` span ids of their own."""
        if choices > len(call.span_ids):
            extra = choices - len(call.span_ids)
            call.span_ids += [new_span_id() for _ in range(extra)]
            call.sequence_ids += self._sequence_ids(call.attempt_id, extra)

    async def _record(
        self,
        call: CallContext,
        info: ResponseInfo,
        choices: list[ChoiceRecord],
        error: tuple[str, str] | None = None,
    ) -> None:
        """Store the call's spans, waiting at most ``store_timeout`` seconds for the store."""
        stored = self._queue(call, info, choices, error)
        done, _ = await asyncio.wait({asyncio.wrap_future(stored)}, timeout=self.settings.store_timeout)
        if not done:
            self.stats.late_records += 1
            logger.warning(
                "agent-lightning proxy: the store has not stored the record of call %s (rollout %s, attempt %s) "
                "after store_timeout=%gs; answering anyway, the record is stored in the background",
                call.span_ids[0],
                call.rollout_id,
                call.attempt_id,
                self.settings.store_timeout,
            )
        elif not stored.result():
            logger.warning(
                "agent-lightning proxy: the store refused the record of call %s (rollout %s, attempt %s); "
                "see the span emitter's warnings",
                call.span_ids[0],
                call.rollout_id,
                call.attempt_id,
            )

    def _queue(
        self,
        call: CallContext,
        info: ResponseInfo,
        choices: list[ChoiceRecord],
        error: tuple[str, str] | None = None,
    ) -> Future[bool]:
        """Build the call's spans and queue them for the store (never blocks)."""
        end, finished = time.time(), time.perf_counter()
        latency = (finished - call.started) * 1000
        if error is None:
            self._extend_ids(call, len(choices))
        spans = build_spans(call, info, choices, max(end, call.start_time), latency, error=error)
        stored = self.emit(spans)
        stats = self.stats
        stats.recorded_calls += 1
        stats.recorded_spans += len(spans)
        if error is not None:
            stats.failed_calls += 1
        elif any(c.token_ids is None or c.prompt_token_ids is None for c in choices) or not choices:
            stats.calls_without_token_ids += 1
            self._warn_once(
                "ids",
                "agent-lightning proxy: upstream %s returned no token ids (rollout %s); such calls are recorded "
                "with agl.llm.token_ids_available=False and cannot be trained on. %s",
                self.base,
                call.rollout_id,
                NO_TOKEN_IDS_WARNING,
            )
        return stored

    # ------------------------------------------------------------------ routes
    async def health(self, request: Request) -> Response:
        if not request.scope.get(AUTHORIZED, True):
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "ok", "stats": asdict(self.stats)})

    async def route(self, request: Request) -> Response:
        self.stats.requests += 1
        match = _PATH.match(request.url.path)
        if match is None:
            return _error(
                404,
                f"no route {request.url.path!r}: use /v1/..., /rollout/ID/v1/... or /rollout/ID/attempt/ID/v1/...",
                "not_found_error",
                "unknown_url",
            )
        endpoint = match["endpoint"]
        operation = _GENERATION.get(endpoint)
        if operation is None or request.method != "POST":
            return await self.passthrough(request, endpoint)
        rollout_id = match["rollout"] or request.headers.get(ROLLOUT_HEADER)
        attempt_id = match["attempt"] or request.headers.get(ATTEMPT_HEADER)
        return await self.generate(request, operation, rollout_id, attempt_id)  # type: ignore[arg-type]

    async def passthrough(self, request: Request, endpoint: str) -> Response:
        assert self.client is not None
        query = request.url.query
        url = yarl.URL(f"{self.base}/{endpoint}" + (f"?{query}" if query else ""), encoded=True)
        try:
            async with self.client.request(
                request.method, url, data=await request.body(), headers=self._headers(request)
            ) as response:
                content = await response.read()
        except _TRANSPORT_ERRORS as exc:
            failure = self._transport_failure(exc)
            return JSONResponse(failure.body, status_code=failure.status)
        media = response.headers.get("content-type", "application/json")
        return Response(content, status_code=response.status, media_type=media)

    def _transport_failure(self, exc: BaseException) -> _Failure:
        if isinstance(exc, asyncio.TimeoutError):
            message = f"upstream {self.base} timed out after {self.settings.timeout:g}s ({type(exc).__name__})"
            return _Failure(504, message, "timeout", "upstream_timeout")
        if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            message = f"upstream {self.base} broke off its response: {type(exc).__name__}: {exc}"
            return _Failure(502, message, type(exc).__name__, "upstream_disconnected")
        message = f"upstream {self.base} is unreachable: {type(exc).__name__}: {exc}"
        return _Failure(502, message, type(exc).__name__, "upstream_unreachable")

    async def generate(
        self, request: Request, operation: Operation, rollout_id: str | None, attempt_id: str | None
    ) -> Response:
        assert self.client is not None
        start_time, started = time.time(), time.perf_counter()
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.stats.refused_calls += 1
            return _error(400, f"request body is not valid JSON: {exc}", "invalid_request_error", None)
        if not isinstance(body, dict):
            self.stats.refused_calls += 1
            return _error(400, "request body must be a JSON object", "invalid_request_error", None)

        call: CallContext | None = None
        if rollout_id:
            if self.attributor is None:
                raise RuntimeError("the proxy has no store to attribute calls to")
            try:
                rollout_id, attempt_id = await self.attributor.resolve(rollout_id, attempt_id)
            except AttributionError as exc:
                self.stats.refused_calls += 1
                return _error(exc.status, exc.message, "not_found_error" if exc.status == 404 else "conflict", exc.code)
            assert attempt_id is not None
            trace_id, parent_id = self._trace(request, attempt_id)
            rows = _rows(operation, body)
            call = CallContext(
                operation=operation,
                rollout_id=rollout_id,
                attempt_id=attempt_id,
                trace_id=trace_id,
                parent_id=parent_id,
                span_ids=[self._span_id(request)] + [new_span_id() for _ in range(rows - 1)],
                joined=self._joined(request),
                sequence_ids=self._sequence_ids(attempt_id, rows),
                request=body,
                start_time=start_time,
                started=started,
            )
        elif attempt_id:
            self.stats.refused_calls += 1
            return _error(400, f"{ATTEMPT_HEADER} given without a rollout id", "invalid_request_error", None)
        else:
            self.stats.unattributed_calls += 1
            self._warn_once(
                "unattributed",
                "agent-lightning proxy: forwarding calls that name no rollout without recording them; use the "
                "base URL /rollout/ID/v1 or the %s header",
                ROLLOUT_HEADER,
            )

        forward = dict(body)
        strip_ids = strip_logprobs = False
        if self.settings.request_token_ids:
            if "return_token_ids" not in body:
                forward["return_token_ids"] = True
                strip_ids = True
            if not body.get("logprobs"):
                forward["logprobs"] = True if operation == "chat" else 1
                strip_logprobs = True
        if "model" in body:
            forward["model"] = self._model(body["model"])
        content = orjson.dumps(forward)
        url = f"{self.base}/{'chat/completions' if operation == 'chat' else 'completions'}"
        headers = self._headers(request)
        if body.get("stream"):
            return await self._stream(call, url, content, headers, operation, strip_ids, strip_logprobs)

        try:
            async with self.client.post(url, data=content, headers=headers) as response:
                raw_response = await response.read()
            if response.status >= 400:
                raise _upstream_error(response.status, raw_response)
            try:
                payload = orjson.loads(raw_response)
            except orjson.JSONDecodeError as exc:
                raise _Failure(502, f"upstream returned invalid JSON: {exc}", "invalid_response", None) from None
            if not isinstance(payload, dict):
                raise _Failure(502, "upstream returned a JSON value that is not an object", "invalid_response", None)
        except (*_TRANSPORT_ERRORS, _Failure) as exc:
            failure = exc if isinstance(exc, _Failure) else self._transport_failure(exc)
            return await self._fail(call, failure)

        out_headers: dict[str, str] = {}
        version = response.headers.get(MODEL_VERSION_HEADER)
        if version is not None:
            out_headers[MODEL_VERSION_HEADER] = version
        if call is not None:
            info, choices = response_choices(operation, payload)
            info.resources_id = version
            await self._record(call, info, choices)
            out_headers[SPAN_ID_HEADER] = ",".join(call.span_ids)
        if strip_ids or strip_logprobs:
            _strip(payload, strip_ids, strip_logprobs)
            raw_response = orjson.dumps(payload)
        return Response(raw_response, status_code=response.status, headers=out_headers,
                        media_type="application/json")  # fmt: skip

    async def _fail(self, call: CallContext | None, failure: _Failure) -> Response:
        headers: dict[str, str] = {}
        if call is not None:
            call.span_ids, call.sequence_ids = call.span_ids[:1], call.sequence_ids[:1]
            await self._record(call, ResponseInfo(), [], error=(failure.error_type, failure.message))
            headers[SPAN_ID_HEADER] = call.span_ids[0]
        else:
            self.stats.failed_calls += 1
        logger.warning("agent-lightning proxy: %s", failure.message)
        return JSONResponse(failure.body, status_code=failure.status, headers=headers)

    async def _stream(
        self,
        call: CallContext | None,
        url: str,
        content: bytes,
        headers: dict[str, str],
        operation: Operation,
        strip_ids: bool,
        strip_logprobs: bool,
    ) -> Response:
        assert self.client is not None
        try:
            response = await self.client.post(url, data=content, headers=headers)
        except _TRANSPORT_ERRORS as exc:
            return await self._fail(call, self._transport_failure(exc))
        if response.status >= 400:
            try:
                error_content = await response.read()
            except _TRANSPORT_ERRORS as exc:
                return await self._fail(call, self._transport_failure(exc))
            finally:
                response.release()
            return await self._fail(call, _upstream_error(response.status, error_content))

        version = response.headers.get(MODEL_VERSION_HEADER)
        out_headers = {"cache-control": "no-cache"}
        if version is not None:
            out_headers[MODEL_VERSION_HEADER] = version
        if call is not None:
            out_headers[SPAN_ID_HEADER] = ",".join(call.span_ids)
        accumulator = StreamAccumulator(operation)
        accumulator.info.resources_id = version
        strip = strip_ids or strip_logprobs

        async def events() -> AsyncIterator[bytes]:
            recorded = False

            async def record(error: tuple[str, str] | None, wait: bool = True) -> None:
                nonlocal recorded
                if call is not None and not recorded:
                    recorded = True
                    if error is None and accumulator.error is not None:
                        message = str(accumulator.error.get("message") or "the upstream stream reported an error")
                        error = (str(accumulator.error.get("type") or "upstream_error"), message)
                    if wait:
                        await self._record(call, accumulator.info, accumulator.records(), error=error)
                    else:  # the client is gone: nobody waits for the answer
                        self._queue(call, accumulator.info, accumulator.records(), error=error)
                elif call is None and error is not None:
                    self.stats.failed_calls += 1

            data: list[bytes] = []
            try:
                async for line in _lines(response.content):
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip().encode())
                        continue
                    if line or not data:
                        if line and not line.startswith(":"):
                            yield line.encode() + b"\n"
                        continue
                    payload = b"\n".join(data)
                    data.clear()
                    if payload == b"[DONE]":
                        await record(None)
                        yield b"data: [DONE]\n\n"
                        continue
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        yield b"data: " + payload + b"\n\n"
                        continue
                    if isinstance(chunk, dict):
                        accumulator.feed(chunk)
                        if accumulator.error is not None:
                            await record(None)  # before the agent sees the error and hangs up
                        if strip:
                            _strip(chunk, strip_ids, strip_logprobs)
                            payload = orjson.dumps(chunk)
                    yield b"data: " + payload + b"\n\n"
                if not accumulator.finished and accumulator.error is None:
                    await record(("incomplete_stream", "the upstream stream ended before every choice finished"))
                else:
                    await record(None)
            except _TRANSPORT_ERRORS as exc:
                failure = self._transport_failure(exc)
                await record((failure.error_type, failure.message))
                logger.warning("agent-lightning proxy: %s", failure.message)
                yield b"data: " + orjson.dumps(failure.body) + b"\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                await record(("cancelled", "the client closed the stream before it ended"), wait=False)
                raise
            finally:
                response.release()

        return StreamingResponse(events(), status_code=response.status, headers=out_headers,
                                 media_type="text/event-stream")  # fmt: skip


def create_app(handler: ProxyHandler) -> Starlette:
    """The Starlette app serving ``handler`` (it opens and closes the upstream client with the app)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        handler.open_client()
        try:
            yield
        finally:
            await handler.close_client()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(
        routes=[
            Route("/health", handler.health, methods=["GET"]),
            Route("/{path:path}", handler.route, methods=methods),
        ],
        lifespan=lifespan,
    )
