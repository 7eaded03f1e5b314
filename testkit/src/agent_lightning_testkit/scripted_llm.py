"""A deterministic, scripted OpenAI-compatible LLM server for tests (a real HTTP upstream).

It speaks the token-id protocol of the Agent Lightning proxy (``prompt_token_ids``, per-choice
``token_ids``, logprobs, ``x-agl-model-version``) with a tiny byte-level BPE-ish tokenizer, and
answers from a *script* instead of a model::

    from agent_lightning_testkit.scripted_llm import Reply, ScriptedLLM, ToolCall

    def script(call):                      # call.messages, call.tools, call.choice_index, …
        if call.messages[-1]["role"] == "tool":
            return "The answer is 4."
        return Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 2})])

    with ScriptedLLM(script) as llm:       # or ScriptedLLM(["first reply", "second reply"])
        client = openai.OpenAI(base_url=llm.url, api_key="x")
        client.chat.completions.create(model="any", messages=[{"role": "user", "content": "2+2?"}])
        llm.calls[-1].choices[0].token_ids # exactly what was "sampled"

A script is a string (always that reply), a list (one entry per request, in order; an exhausted
list answers HTTP 500), or a callable taking a :class:`ScriptCall` and returning a ``str`` or a
:class:`Reply`. A :class:`Reply` can also inject failures (``status=500``, ``delay=5.0``,
``stream_error_after=2``) or give the exact ``token_ids`` sampled.

Routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses`` (the OpenAI Responses wire
format, streaming included; its input items reach the script as chat messages, and it never returns
token ids, as that API has none) and ``/v1/models``.

Token ids are returned only when the request asks (``"return_token_ids": true``, as vLLM does) and
the server was not created with ``token_ids=False``. The tokenizer (:class:`ByteBPETokenizer`) is
greedy longest-match over a small merge table, so a sampled sequence such as the single bytes of
``"the"`` decodes to text whose re-encoding is a *different* id sequence: re-tokenizing drifts.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from agent_lightning_proxy.serving import ServerThread

__all__ = [
    "DEFAULT_MERGES",
    "ByteBPETokenizer",
    "GeneratedChoice",
    "Reply",
    "Script",
    "ScriptCall",
    "ScriptedCall",
    "ScriptedLLM",
    "ToolCall",
    "create_scripted_app",
    "scripted_logprob",
]

VERSION_HEADER = "x-agl-model-version"

DEFAULT_MERGES: tuple[str, ...] = (
    "the", " the", "The", " a", " an", " is", " of", " to", " and", " in", "in", "er", "an", "re", "on",
    "ing", "he", "th", "ou", "it", "es", "at", "en", "or", "ed", " answer", "answer", "Answer", " Answer",
    "<tool_call>", "</tool_call>", '"name"', '"arguments"', ": ", ", ", "\n\n", "  ", "user", "assistant",
    "system", "tool", " you", " I", " 2", " 4", "==",
)  # fmt: skip
"""Multi-byte tokens of the default tokenizer (ids 256, 257, … in this order)."""


class ByteBPETokenizer:
    """A deterministic byte-level tokenizer with a merge table, for tests.

    Ids ``0–255`` are single bytes, then one id per entry of ``merges``, then the special tokens
    ``<|eos|>``, ``<|im_start|>``, ``<|im_end|>``. :meth:`encode` is greedy longest-match (the
    canonical tokenization); :meth:`encode_bytes` spells text one byte per token, which decodes to
    the same text but is a different id sequence — what a sampler may produce and a re-tokenizer
    would silently change.
    """

    SPECIAL_TOKENS: tuple[str, ...] = ("<|eos|>", "<|im_start|>", "<|im_end|>")

    def __init__(self, merges: Sequence[str] = DEFAULT_MERGES) -> None:
        self._pieces: list[bytes] = [bytes([b]) for b in range(256)]
        self._ids: dict[bytes, int] = {}
        for merge in merges:
            raw = merge.encode("utf-8")
            if len(raw) > 1 and raw not in self._ids:
                self._ids[raw] = len(self._pieces)
                self._pieces.append(raw)
        self._max_len = max((len(p) for p in self._ids), default=1)
        self.special_ids: dict[str, int] = {}
        for special in self.SPECIAL_TOKENS:
            self.special_ids[special] = len(self._pieces)
            self._pieces.append(special.encode("utf-8"))
        self.eos_id = self.special_ids["<|eos|>"]
        self._special_re = re.compile("|".join(re.escape(s) for s in self.SPECIAL_TOKENS))

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> list[int]:
        """The canonical ids of ``text`` (special tokens written literally become their ids)."""
        ids: list[int] = []
        position = 0
        for match in self._special_re.finditer(text):
            ids += self._encode_plain(text[position : match.start()].encode("utf-8"))
            ids.append(self.special_ids[match.group()])
            position = match.end()
        ids += self._encode_plain(text[position:].encode("utf-8"))
        return ids

    def _encode_plain(self, raw: bytes) -> list[int]:
        ids: list[int] = []
        i = 0
        while i < len(raw):
            for length in range(min(self._max_len, len(raw) - i), 1, -1):
                token = self._ids.get(raw[i : i + length])
                if token is not None:
                    ids.append(token)
                    i += length
                    break
            else:
                ids.append(raw[i])
                i += 1
        return ids

    def encode_bytes(self, text: str) -> list[int]:
        """One id per UTF-8 byte: a valid, non-canonical tokenization of ``text``."""
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._pieces):
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {len(self._pieces)})")
        return self._pieces[token_id]

    def is_special(self, token_id: int) -> bool:
        return len(self._pieces) - len(self.SPECIAL_TOKENS) <= token_id < len(self._pieces)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (invalid UTF-8 becomes U+FFFD)."""
        raw = b"".join(self.token_bytes(i) for i in ids if not (skip_special_tokens and self.is_special(i)))
        return raw.decode("utf-8", errors="replace")


def scripted_logprob(token_id: int, position: int) -> float:
    """The deterministic log-probability the scripted server reports for a sampled token."""
    return -round(0.01 + ((token_id * 31 + position * 17) % 97) / 100, 4)


# --------------------------------------------------------------------------- the script
@dataclass(frozen=True)
class ToolCall:
    """A function call the scripted model makes."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(dict(self.arguments))


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    :param text: the assistant's text (``None`` with only tool calls).
    :param tool_calls: function calls to make (rendered as ``<tool_call>{…}</tool_call>`` tokens).
    :param token_ids: the exact completion ids to "sample" (overrides ``text``/``tool_calls``).
    :param finish_reason: force a finish reason (default: ``stop``, ``tool_calls`` or ``length``).
    :param status: answer with this HTTP error status instead (e.g. ``500``).
    :param delay: seconds to wait before answering (to make a caller time out).
    :param stream_error_after: when streaming, send an SSE error event after this many chunks.
    """

    text: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    token_ids: Sequence[int] | None = None
    finish_reason: str | None = None
    status: int | None = None
    delay: float = 0.0
    stream_error_after: int | None = None
    error_message: str = "scripted upstream failure"


@dataclass(frozen=True)
class ScriptCall:
    """What a callable script is asked: one choice of one request."""

    endpoint: str
    """``chat``, ``completions`` or ``responses``."""
    messages: list[dict[str, Any]]
    """The chat messages (for ``completions``: one user message holding the prompt text)."""
    tools: list[dict[str, Any]] | None
    """The tool definitions, in the chat completions format (``responses`` tools are converted)."""
    model: str
    choice_index: int
    call_index: int
    """0 for the server's first request, 1 for the second, …"""
    body: dict[str, Any]

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


Script = Union[str, Reply, Sequence[Union[str, Reply]], Callable[[ScriptCall], Union[str, Reply]]]


@dataclass
class GeneratedChoice:
    """One choice as the scripted server produced it."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str


@dataclass
class ScriptedCall:
    """One request the server answered (or failed), kept for assertions."""

    endpoint: str
    body: dict[str, Any]
    headers: dict[str, str]
    prompt_token_ids: list[list[int]]
    choices: list[GeneratedChoice] = field(default_factory=list)
    status: int = 200


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def render_chat(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> str:
    """The scripted model's chat template (ChatML-like)."""
    parts: list[str] = []
    if tools:
        parts.append(f"<|im_start|>system\n# Tools\n{json.dumps(list(tools), sort_keys=True)}<|im_end|>\n")
    for message in messages:
        text = _content_text(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function", {}) if isinstance(call, dict) else {}
            text += f'<tool_call>{{"name": {json.dumps(function.get("name"))}, "arguments": '
            text += f"{function.get('arguments', '{}')}}}</tool_call>"
        parts.append(f"<|im_start|>{message.get('role', 'user')}\n{text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# --------------------------------------------------------------------------- the app
class _Failure(Exception):
    def __init__(self, status: int, message: str, delay: float = 0.0) -> None:
        super().__init__(message)
        self.status, self.message, self.delay = status, message, delay


def create_scripted_app(server: ScriptedLLM) -> Any:
    """The Starlette app of a :class:`ScriptedLLM` (usually started through the server class)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    tok = server.tokenizer

    def error(status: int, message: str, type_: str = "server_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": type_, "code": None}}, status_code=status)

    def headers() -> dict[str, str]:
        return {VERSION_HEADER: server.model_version} if server.model_version else {}

    def generate(reply: Reply, max_tokens: int | None, stop: Sequence[str], call_no: int, idx: int) -> GeneratedChoice:
        calls: list[dict[str, Any]] = [
            {
                "id": c.id or f"call_{call_no}_{idx}_{k}",
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for k, c in enumerate(reply.tool_calls)
        ]
        if reply.token_ids is not None:
            ids = list(reply.token_ids)
            finish = "stop"
        else:
            text = reply.text or ""
            finish = "stop"
            if not calls:
                cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
            markup = "".join(
                f'<tool_call>{{"name": {json.dumps(c["function"]["name"])}, '
                f'"arguments": {c["function"]["arguments"]}}}</tool_call>'
                for c in calls
            )
            ids = [*tok.encode(text + markup), tok.eos_id]
            if calls:
                finish = "tool_calls"
        if max_tokens is not None and len(ids) > max_tokens:
            ids, finish, calls = ids[:max_tokens], "length", []
        finish = reply.finish_reason or finish
        full = tok.decode(ids)
        content: str | None = full
        if calls:
            content = reply.text or None
        logprobs = [scripted_logprob(t, j) for j, t in enumerate(ids)]
        return GeneratedChoice(ids, logprobs, full, content, calls, finish)

    def replies(
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        rows: int,
        endpoint: str = "chat",
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[int, list[Reply]]:
        with server._lock:
            call_no = next(server._counter)
        out = []
        for i in range(rows):
            given = body.get("tools") if tools is None else tools
            call = ScriptCall(endpoint, messages, given, str(body.get("model", "")), i, call_no, body)
            out.append(server._next_reply(call, first_choice=i == 0))
        return call_no, out

    async def fail_or_wait(batch: Sequence[Reply]) -> None:
        delay = max((r.delay for r in batch), default=0.0)
        if delay:
            await asyncio.sleep(delay)
        for r in batch:
            if r.status is not None:
                raise _Failure(r.status, r.error_message)

    def chat_logprobs(ids: Sequence[int], lps: Sequence[float], top: int, offset: int = 0) -> dict[str, Any]:
        content = []
        for token_id, lp in zip(ids, lps, strict=True):
            raw = tok.token_bytes(token_id)
            alternatives = [
                {
                    "token": tok.token_bytes(a).decode("utf-8", "replace"),
                    "logprob": lp - k,
                    "bytes": list(tok.token_bytes(a)),
                }
                for k, a in enumerate([token_id, *[(token_id + j) % tok.vocab_size for j in range(1, top)]][:top])
            ]
            content.append(
                {
                    "token": raw.decode("utf-8", "replace"),
                    "logprob": lp,
                    "bytes": list(raw),
                    "top_logprobs": alternatives,
                }
            )
        return {"content": content}

    def completion_logprobs(ids: Sequence[int], lps: Sequence[float], offset: int) -> dict[str, Any]:
        tokens = [tok.token_bytes(i).decode("utf-8", "replace") for i in ids]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": None, "text_offset": offsets}

    def sse(payload: Mapping[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def chunks_of(ids: Sequence[int]) -> list[tuple[int, int]]:
        step = max(1, server.tokens_per_chunk)
        return [(i, min(i + step, len(ids))) for i in range(0, len(ids), step)]

    async def parse(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            raise _Failure(400, f"request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise _Failure(400, "request body must be a JSON object")
        return body

    # ------------------------------------------------------------------ chat
    async def chat(request: Request) -> Response:
        try:
            body = await parse(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _Failure(400, "messages must be a non-empty list")
            n = int(body.get("n") or 1)
            prompt_ids = tok.encode(render_chat(messages, body.get("tools")))
            record = ScriptedCall("chat", body, dict(request.headers), [prompt_ids])
            server.calls.append(record)
            call_no, batch = replies(body, messages, n)
            await fail_or_wait(batch)
        except _Failure as exc:
            if "record" in locals():
                record.status = exc.status
            return error(exc.status, exc.message, "invalid_request_error" if exc.status < 500 else "server_error")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        gens = [generate(r, max_tokens, stop, call_no, i) for i, r in enumerate(batch)]
        record.choices = gens
        ids_on = bool(body.get("return_token_ids")) and server.token_ids
        want_lp = bool(body.get("logprobs"))
        top = int(body.get("top_logprobs") or 0)
        with server._lock:
            response_id = f"chatcmpl-scripted-{next(server._ids)}"
        base: dict[str, Any] = {
            "id": response_id,
            "created": 1700000000,
            "model": body.get("model", ""),
            "system_fingerprint": server.model_version,
        }
        completion_tokens = sum(len(g.token_ids) for g in gens)
        usage = {
            "prompt_tokens": len(prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt_ids) + completion_tokens,
        }
        if not body.get("stream"):
            choices = []
            for i, g in enumerate(gens):
                message: dict[str, Any] = {"role": "assistant", "content": g.content}
                if g.tool_calls:
                    message["tool_calls"] = g.tool_calls
                choice: dict[str, Any] = {
                    "index": i,
                    "message": message,
                    "finish_reason": g.finish_reason,
                    "logprobs": chat_logprobs(g.token_ids, g.logprobs, top) if want_lp else None,
                }
                if ids_on:
                    choice["token_ids"] = g.token_ids
                choices.append(choice)
            payload = {**base, "object": "chat.completion", "choices": choices, "usage": usage}
            if ids_on:
                payload["prompt_token_ids"] = prompt_ids
            return JSONResponse(payload, headers=headers())

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        error_after = min((r.stream_error_after for r in batch if r.stream_error_after is not None), default=None)
        error_message = next((r.error_message for r in batch if r.stream_error_after is not None), "")

        async def stream() -> AsyncIterator[bytes]:
            chunk = {**base, "object": "chat.completion.chunk"}
            first: dict[str, Any] = {
                **chunk,
                "choices": [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                    | ({"token_ids": []} if ids_on else {})
                    for i in range(n)
                ],
            }
            if ids_on:
                first["prompt_token_ids"] = prompt_ids
            yield sse(first)
            sent = 1
            events: list[list[dict[str, Any]]] = []
            for i, g in enumerate(gens):
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                own: list[dict[str, Any]] = []
                spans = chunks_of(g.token_ids)
                for k, (a, b) in enumerate(spans):
                    piece = b"".join(t for t in (tok.token_bytes(x) for x in g.token_ids[a:b] if not tok.is_special(x)))
                    text = decoder.decode(piece, final=k == len(spans) - 1)
                    delta: dict[str, Any] = {} if g.tool_calls else ({"content": text} if text else {})
                    c: dict[str, Any] = {
                        "index": i,
                        "delta": delta,
                        "finish_reason": None,
                        "logprobs": chat_logprobs(g.token_ids[a:b], g.logprobs[a:b], top) if want_lp else None,
                    }
                    if ids_on:
                        c["token_ids"] = g.token_ids[a:b]
                    own.append(c)
                for k, call in enumerate(g.tool_calls):
                    head = {
                        "index": k,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                    own.append({"index": i, "delta": {"tool_calls": [head]}, "finish_reason": None})
                    args = call["function"]["arguments"]
                    half = len(args) // 2
                    for part in (args[:half], args[half:]):
                        own.append(
                            {
                                "index": i,
                                "delta": {"tool_calls": [{"index": k, "function": {"arguments": part}}]},
                                "finish_reason": None,
                            }
                        )
                last: dict[str, Any] = {"index": i, "delta": {}, "finish_reason": g.finish_reason}
                if g.tool_calls and g.content:
                    last["delta"] = {"content": g.content}
                own.append(last)
                events.append(own)
            # interleave the choices round-robin, as a batched engine would
            for group in itertools.zip_longest(*events):
                for c in group:
                    if c is None:
                        continue
                    if error_after is not None and sent >= error_after:
                        yield sse({"error": {"message": error_message, "type": "server_error", "code": None}})
                        return
                    yield sse({**chunk, "choices": [c]})
                    sent += 1
                    await asyncio.sleep(0)
            if include_usage:
                yield sse({**chunk, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers())

    # ------------------------------------------------------------------ completions
    def prompts_of(prompt: Any) -> list[tuple[str, list[int]]]:
        if isinstance(prompt, str):
            return [(prompt, tok.encode(prompt))]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [(tok.decode(prompt), list(prompt))]
        if isinstance(prompt, list) and prompt:
            out = []
            for p in prompt:
                if isinstance(p, str):
                    out.append((p, tok.encode(p)))
                elif isinstance(p, list) and all(isinstance(t, int) for t in p):
                    out.append((tok.decode(p), list(p)))
                else:
                    raise _Failure(400, "prompt must be a string, a list of token ids, or a list of either")
            return out
        raise _Failure(400, "prompt must be a non-empty string or list")

    async def completions(request: Request) -> Response:
        try:
            body = await parse(request)
            prompts = prompts_of(body.get("prompt"))
            n = int(body.get("n") or 1)
            record = ScriptedCall("completions", body, dict(request.headers), [p for _, p in prompts])
            server.calls.append(record)
            with server._lock:
                call_no = next(server._counter)
            batch = []
            for row in range(len(prompts) * n):
                text = prompts[row // n][0]
                call = ScriptCall(
                    "completions",
                    [{"role": "user", "content": text}],
                    None,
                    str(body.get("model", "")),
                    row,
                    call_no,
                    body,
                )
                batch.append(server._next_reply(call, first_choice=row == 0))
            await fail_or_wait(batch)
        except _Failure as exc:
            if "record" in locals():
                record.status = exc.status
            return error(exc.status, exc.message, "invalid_request_error" if exc.status < 500 else "server_error")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        gens = [generate(r, body.get("max_tokens", 16), stop, call_no, i) for i, r in enumerate(batch)]
        record.choices = gens
        ids_on = bool(body.get("return_token_ids")) and server.token_ids
        want_lp = body.get("logprobs") is not None
        with server._lock:
            response_id = f"cmpl-scripted-{next(server._ids)}"
        base = {
            "id": response_id,
            "object": "text_completion",
            "created": 1700000000,
            "model": body.get("model", ""),
            "system_fingerprint": server.model_version,
        }
        prompt_tokens = sum(len(p) for _, p in prompts)
        completion_tokens = sum(len(g.token_ids) for g in gens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if not body.get("stream"):
            choices = []
            for i, g in enumerate(gens):
                choice: dict[str, Any] = {
                    "index": i,
                    "text": g.text,
                    "finish_reason": g.finish_reason,
                    "logprobs": completion_logprobs(g.token_ids, g.logprobs, 0) if want_lp else None,
                }
                if ids_on:
                    choice["prompt_token_ids"] = prompts[i // n][1]
                    choice["token_ids"] = g.token_ids
                choices.append(choice)
            return JSONResponse({**base, "choices": choices, "usage": usage}, headers=headers())

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def stream() -> AsyncIterator[bytes]:
            first = []
            for i in range(len(gens)):
                c: dict[str, Any] = {"index": i, "text": "", "logprobs": None, "finish_reason": None}
                if ids_on:
                    c |= {"prompt_token_ids": prompts[i // n][1], "token_ids": []}
                first.append(c)
            yield sse({**base, "choices": first})
            for i, g in enumerate(gens):
                decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
                offset = 0
                spans = chunks_of(g.token_ids)
                for k, (a, b) in enumerate(spans):
                    piece = b"".join(tok.token_bytes(x) for x in g.token_ids[a:b] if not tok.is_special(x))
                    text = decoder.decode(piece, final=k == len(spans) - 1)
                    c = {
                        "index": i,
                        "text": text,
                        "finish_reason": g.finish_reason if k == len(spans) - 1 else None,
                        "logprobs": completion_logprobs(g.token_ids[a:b], g.logprobs[a:b], offset) if want_lp else None,
                    }
                    offset += len(text)
                    if ids_on:
                        c["token_ids"] = g.token_ids[a:b]
                    yield sse({**base, "choices": [c]})
                if not spans:
                    yield sse(
                        {
                            **base,
                            "choices": [{"index": i, "text": "", "finish_reason": g.finish_reason, "logprobs": None}],
                        }
                    )
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers())

    # ------------------------------------------------------------------ responses
    def response_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
        """A Responses ``input`` (and ``instructions``) as chat messages, for the script and the template."""
        messages: list[dict[str, Any]] = []
        instructions = body.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.append({"role": "system", "content": instructions})
        given = body.get("input")
        if isinstance(given, str) and given:
            return [*messages, {"role": "user", "content": given}]
        if not isinstance(given, list) or not given:
            raise _Failure(400, "input must be a non-empty string or a non-empty list of input items")
        for item in given:
            if not isinstance(item, dict):
                raise _Failure(400, "input items must be objects")
            kind = item.get("type", "message")
            if kind == "message":
                messages.append({"role": item.get("role", "user"), "content": _content_text(item.get("content"))})
            elif kind == "function_call":
                call = {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _content_text(output)})
            else:
                raise _Failure(400, f"input item type {kind!r} is not supported by the scripted server")
        return messages

    def response_tools(tools: Any) -> list[dict[str, Any]] | None:
        """Responses function tools (``{"type": "function", "name": …}``) in the chat completions format."""
        if not tools:
            return None
        out = []
        for t in tools:
            if not isinstance(t, dict) or t.get("type") != "function":
                raise _Failure(400, "the scripted server supports only function tools in /v1/responses")
            function = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
            out.append({"type": "function", "function": function})
        return out

    def output_text_part(text: str, logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}

    async def responses(request: Request) -> Response:
        try:
            body = await parse(request)
            messages = response_messages(body)
            tools = response_tools(body.get("tools"))
            prompt_ids = tok.encode(render_chat(messages, tools))
            record = ScriptedCall("responses", body, dict(request.headers), [prompt_ids])
            server.calls.append(record)
            call_no, batch = replies(body, messages, 1, endpoint="responses", tools=tools)
            await fail_or_wait(batch)
        except _Failure as exc:
            if "record" in locals():
                record.status = exc.status
            return error(exc.status, exc.message, "invalid_request_error" if exc.status < 500 else "server_error")
        g = generate(batch[0], body.get("max_output_tokens"), [], call_no, 0)
        record.choices = [g]
        include = body.get("include") or []
        want_lp = "message.output_text.logprobs" in include or body.get("top_logprobs") is not None
        top = int(body.get("top_logprobs") or 0)
        with server._lock:
            number = next(server._ids)
        response_id = f"resp_scripted_{number}"
        message_id = f"msg_scripted_{number}"
        text = g.content or ""
        logprobs = chat_logprobs(g.token_ids, g.logprobs, top)["content"] if want_lp and not g.tool_calls else None
        output: list[dict[str, Any]] = []
        if text or not g.tool_calls:
            output.append(
                {
                    "type": "message",
                    "id": message_id,
                    "role": "assistant",
                    "status": "completed",
                    "content": [output_text_part(text, logprobs)],
                }
            )
        for k, call in enumerate(g.tool_calls):
            output.append(
                {
                    "type": "function_call",
                    "id": f"fc_scripted_{number}_{k}",
                    "call_id": call["id"],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                    "status": "completed",
                }
            )
        incomplete = g.finish_reason == "length"
        usage = {
            "input_tokens": len(prompt_ids),
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": len(g.token_ids),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": len(prompt_ids) + len(g.token_ids),
        }
        final: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": 1700000000,
            "completed_at": 1700000001,
            "status": "incomplete" if incomplete else "completed",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model", ""),
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature", 1.0),
            "top_p": body.get("top_p", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "truncation": body.get("truncation", "disabled"),
            "metadata": body.get("metadata") or {},
            "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(final, headers=headers())

        reply = batch[0]
        pieces: list[tuple[str, list[dict[str, Any]]]] = []  # the text deltas and their logprobs
        if g.tool_calls:  # text alongside tool calls: one delta
            pieces = [(text, [])] if text else []
        else:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            spans = chunks_of(g.token_ids)
            for k, (a, b) in enumerate(spans):
                raw = b"".join(tok.token_bytes(x) for x in g.token_ids[a:b] if not tok.is_special(x))
                lps = chat_logprobs(g.token_ids[a:b], g.logprobs[a:b], top)["content"] if want_lp else []
                pieces.append((decoder.decode(raw, final=k == len(spans) - 1), lps))

        async def stream() -> AsyncIterator[bytes]:
            sequence = itertools.count()
            started = {**final, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
            started["completed_at"] = None

            def event(type_: str, **fields: Any) -> bytes:
                payload = {"type": type_, **fields, "sequence_number": next(sequence)}
                return f"event: {type_}\n".encode() + sse(payload)

            def events() -> Iterator[bytes]:
                yield event("response.created", response=started)
                yield event("response.in_progress", response=started)
                for index, item in enumerate(output):
                    if item["type"] == "message":
                        yield event(
                            "response.output_item.added",
                            output_index=index,
                            item={**item, "status": "in_progress", "content": []},
                        )
                        where = {"item_id": message_id, "output_index": index, "content_index": 0}
                        yield event("response.content_part.added", **where, part=output_text_part("", None))
                        for delta, lps in pieces:
                            if delta or lps:
                                yield event("response.output_text.delta", **where, delta=delta, logprobs=lps)
                        yield event("response.output_text.done", **where, text=text, logprobs=logprobs or [])
                        yield event("response.content_part.done", **where, part=output_text_part(text, logprobs))
                    else:
                        yield event(
                            "response.output_item.added",
                            output_index=index,
                            item={**item, "status": "in_progress", "arguments": ""},
                        )
                        args = item["arguments"]
                        half = len(args) // 2
                        for part in (args[:half], args[half:]):
                            yield event(
                                "response.function_call_arguments.delta",
                                item_id=item["id"],
                                output_index=index,
                                delta=part,
                            )
                        yield event(
                            "response.function_call_arguments.done",
                            item_id=item["id"],
                            output_index=index,
                            name=item["name"],
                            arguments=args,
                        )
                    yield event("response.output_item.done", output_index=index, item=item)
                yield event("response.incomplete" if incomplete else "response.completed", response=final)

            for sent, chunk in enumerate(events()):
                if reply.stream_error_after is not None and sent >= reply.stream_error_after:
                    fields = {"code": "server_error", "message": reply.error_message, "param": None}
                    yield event("error", **fields)
                    return
                yield chunk
                await asyncio.sleep(0)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers())

    async def models(request: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "agent-lightning"} for m in server.models]
        return JSONResponse({"object": "list", "data": data}, headers=headers())

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


class ScriptedLLM:
    """A scripted OpenAI-compatible server on a real port (see the module docstring for an example).

    :param script: a string, a :class:`Reply`, a list of them (one per request), or a callable
        ``(ScriptCall) -> str | Reply`` called once per choice.
    :param token_ids: ``False`` to never return token ids (an upstream like the OpenAI API).
    :param model_version: sent as ``x-agl-model-version`` and ``system_fingerprint`` (``None``: neither).
    :param tokens_per_chunk: token ids per SSE chunk when streaming.
    :param models: the names ``/v1/models`` lists (any name is accepted by the generation routes).
    """

    def __init__(
        self,
        script: Script = "OK",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ids: bool = True,
        model_version: str | None = "scripted-v1",
        tokens_per_chunk: int = 2,
        tokenizer: ByteBPETokenizer | None = None,
        models: Sequence[str] = ("scripted",),
    ) -> None:
        self.script = script
        self.token_ids = token_ids
        self.model_version = model_version
        self.tokens_per_chunk = tokens_per_chunk
        self.tokenizer = tokenizer or ByteBPETokenizer()
        self.models = list(models)
        self.calls: list[ScriptedCall] = []
        """Every request received, in order, with what was generated for it."""
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._ids = itertools.count(1)
        self._position = 0
        self.app = create_scripted_app(self)
        self._server = ServerThread(self.app, host, port, name="agl-scripted-llm")

    def _next_reply(self, call: ScriptCall, *, first_choice: bool) -> Reply:
        script = self.script
        if callable(script):
            answer = script(call)
        elif isinstance(script, (str, Reply)):
            answer = script
        else:
            with self._lock:
                if first_choice:
                    self._position += 1
                position = self._position - 1
            if position >= len(script):
                raise _Failure(
                    500, f"ScriptedLLM script exhausted: it has {len(script)} replies, this is request {position + 1}"
                )
            answer = script[position]
        if isinstance(answer, str):
            return Reply(text=answer)
        if isinstance(answer, Reply):
            return answer
        raise _Failure(500, f"the script returned {type(answer).__name__}; return a str or a Reply")

    @property
    def url(self) -> str:
        """The OpenAI ``base_url``: ``http://HOST:PORT/v1``."""
        return f"http://{self._server.host}:{self._server.port}/v1"

    def start(self) -> ScriptedLLM:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
