"""Entry-point plugin: registers the OpenAI adapter (imports no part of the SDK)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_lightning.hookspecs import hookimpl


@hookimpl
def agl_register_adapters(register: Callable[[Any], None]) -> None:
    from agent_lightning_openai.adapter import OpenAIAdapter

    register(OpenAIAdapter())
