"""ASGI middleware inside vLLM's OpenAI server (``--middleware agent_lightning_vllm.middleware.AglMiddleware``).

It gives vLLM what the trainer's proxy expects of an inference engine:

- every generation response carries ``x-agl-model-version``, the weights version that generated it;
- ``POST /agl/weights`` (loopback only) swaps weights under a new version: new generation requests wait, the ones
  already running finish on the old weights, then the new weights are loaded (``{"path": ...}``: safetensors read
  by :class:`~agent_lightning_vllm.worker.WeightSync` in every worker, through ``collective_rpc``; ``{"adapter":
  ...}``: a LoRA adapter loaded at run time, which generation requests are then routed to), the prefix cache is
  reset (its KV was computed with the old weights), and the waiting requests go on;
- ``GET /agl/stats``: version, requests, weight updates and the last update's duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

VERSION_HEADER = b"x-agl-model-version"
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class AglMiddleware:
    """See the module docstring."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self.version = os.environ.get("AGL_VLLM_VERSION", "v0")
        self.in_flight = 0
        self.requests = 0
        self.updates = 0
        self.last_update_s: float | None = None
        self.adapter: str | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path in GENERATION_PATHS and method == "POST":
            await self._generate(scope, receive, send)
        elif path == "/agl/weights" and method == "POST":
            await self._update(scope, receive, send)
        elif path == "/agl/stats":
            await _json(send, 200, self._stats())
        else:
            await self.app(scope, receive, send)

    def _stats(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "requests": self.requests,
            "in_flight": self.in_flight,
            "weight_updates": self.updates,
            "last_update_s": self.last_update_s,
            "adapter": self.adapter,
        }

    async def _generate(self, scope: Scope, receive: Receive, send: Send) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self.in_flight += 1  # no await since the gate was seen open: an update cannot slip in between
        self._idle.clear()
        version = self.version.encode()
        scope, receive = await _rewritten(scope, receive, self.adapter)

        async def send_versioned(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != VERSION_HEADER]
                message = {**message, "headers": [*headers, (VERSION_HEADER, version)]}
            await send(message)

        try:
            await self.app(scope, receive, send_versioned)
        finally:
            self.requests += 1
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _update(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client is None or client[0] not in LOOPBACK:
            await _json(send, 403, {"error": "weights may only be posted from loopback"})
            return
        try:
            body = json.loads(await _body(receive))
            version = str(body["version"])
        except (ValueError, KeyError, TypeError):
            await _json(send, 400, {"error": 'expected {"version": V, "path": P} or {"version": V, "adapter": P}'})
            return
        app = scope["app"]
        async with self._lock:
            self._open.clear()
            try:
                await self._idle.wait()  # requests already generating finish on the old weights
                started = time.perf_counter()
                engine = app.state.engine_client
                if body.get("adapter"):
                    await self._load_adapter(app, str(body["adapter"]), version)
                else:
                    await engine.collective_rpc("agl_load_weights", args=(str(body["path"]),))
                await engine.reset_prefix_cache()
                self.version = version
                self.updates += 1
                self.last_update_s = time.perf_counter() - started
            except Exception as exc:  # reported to the trainer, which stops with it
                await _json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
                return
            finally:
                self._open.set()
        await _json(send, 200, self._stats())

    async def _load_adapter(self, app: Any, path: str, version: str) -> None:
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        models = app.state.openai_serving_models
        name = f"agl-lora-{self.updates + 1}"
        result = await models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=path))
        if not isinstance(result, str):
            raise RuntimeError(f"vLLM refused LoRA adapter {path} for version {version}: {result}")
        previous, self.adapter = self.adapter, name
        if previous is not None and previous in models.lora_requests:
            old = models.lora_requests.pop(previous)
            await app.state.engine_client.remove_lora(old.lora_int_id)


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _rewritten(scope: Scope, receive: Receive, adapter: str | None) -> tuple[Scope, Receive]:
    """The request with its JSON body's ``model`` set to the loaded LoRA adapter (if any), and its tool calls and
    results written the way the built-in engine writes them for a chat template that takes no tools (see
    :func:`_hermes`)."""
    raw = await _body(receive)
    try:
        payload = json.loads(raw)
        if isinstance(payload, dict):
            if adapter is not None:
                payload["model"] = adapter
            if isinstance(payload.get("messages"), list) and payload.get("tools"):
                payload["messages"] = _hermes(payload["messages"], payload["tools"])
            raw = json.dumps(payload).encode()
    except ValueError:
        pass  # vLLM answers the malformed body itself
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    scope = {**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()  # disconnects

    return scope, replay


_TEMPLATE_TAKES_TOOLS: list[bool] = []


def _hermes(messages: list[Any], tools: list[Any]) -> list[Any]:
    """For a chat template that ignores ``tools`` (SmolLM2's), the built-in engine's rendering
    (``agent_lightning_rl.policy.chat``): tool signatures in the system message, tool calls as ``<tool_call>``
    blocks, results as ``<tool_response>`` user turns; vLLM's ``hermes`` parser reads the model's calls back."""
    try:
        from agent_lightning_rl.policy.chat import _hermes_messages, template_takes_tools
    except ImportError:
        return messages
    if not _TEMPLATE_TAKES_TOOLS:
        from transformers import AutoTokenizer

        template = AutoTokenizer.from_pretrained(os.environ["AGL_VLLM_MODEL"]).chat_template
        _TEMPLATE_TAKES_TOOLS.append(bool(template) and template_takes_tools(template))
    return messages if _TEMPLATE_TAKES_TOOLS[0] else _hermes_messages(messages, tools)


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
