"""The OpenAI SDK adapter: patches the SDK's create/parse methods while instrumented."""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable, Collection
from typing import Any

from agent_lightning.instrumentation.adapter import Adapter
from agent_lightning.instrumentation.context import current_context

from agent_lightning_openai.calls import LLMCall

logger = logging.getLogger(__name__)

# (module, class, method, operation, is_async)
TARGETS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("openai.resources.chat.completions", "Completions", "create", "chat", False),
    ("openai.resources.chat.completions", "Completions", "parse", "chat", False),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", "chat", True),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", "chat", True),
    ("openai.resources.completions", "Completions", "create", "text_completion", False),
    ("openai.resources.completions", "AsyncCompletions", "create", "text_completion", True),
    ("openai.resources.responses", "Responses", "create", "responses", False),
    ("openai.resources.responses", "Responses", "parse", "responses", False),
    ("openai.resources.responses", "AsyncResponses", "create", "responses", True),
    ("openai.resources.responses", "AsyncResponses", "parse", "responses", True),
)

_enabled = threading.Event()
"""Checked on every call, so a method bound while instrumented (``with_raw_response``) stops recording too."""


def _sync_wrapper(original: Callable[..., Any], operation: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _enabled.is_set() or current_context() is None:
            return original(self, *args, **kwargs)
        try:
            call = LLMCall(operation, self, kwargs)
            kwargs = call.prepare(kwargs)
        except Exception:
            logger.exception("agent-lightning-openai: could not start recording a %s call", operation)
            return original(self, *args, **kwargs)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return call.complete(result)

    wrapper.__agl_original__ = original  # type: ignore[attr-defined]
    return wrapper


def _async_wrapper(original: Callable[..., Any], operation: str) -> Callable[..., Any]:
    @functools.wraps(original)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _enabled.is_set() or current_context() is None:
            return await original(self, *args, **kwargs)
        try:
            call = LLMCall(operation, self, kwargs)
            kwargs = call.prepare(kwargs)
        except Exception:
            logger.exception("agent-lightning-openai: could not start recording a %s call", operation)
            return await original(self, *args, **kwargs)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return await call.acomplete(result)

    wrapper.__agl_original__ = original  # type: ignore[attr-defined]
    return wrapper


class OpenAIAdapter(Adapter):
    """Records every chat completion, text completion and Responses call of the OpenAI SDK.

    Sync and async clients, streaming included. Each call becomes an ``llm`` span; the
    request carries ``x-agl-parent-span-id`` so the proxy's token-id record becomes its child.
    """

    name = "openai"

    def __init__(self) -> None:
        super().__init__()
        self._patched: list[tuple[type, str, Any]] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        return ["openai>=1.40,<4"]

    def _instrument(self) -> None:
        for module_name, class_name, method, operation, is_async in TARGETS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
                original = cls.__dict__[method]
            except (ImportError, AttributeError, KeyError):
                logger.debug("openai SDK has no %s.%s.%s; not instrumented", module_name, class_name, method)
                continue
            make = _async_wrapper if is_async else _sync_wrapper
            setattr(cls, method, make(original, operation))
            self._patched.append((cls, method, original))
        _enabled.set()

    def _uninstrument(self) -> None:
        _enabled.clear()
        for cls, method, original in reversed(self._patched):
            setattr(cls, method, original)
        self._patched.clear()
