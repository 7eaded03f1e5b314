"""Entry-point plugin: registers the LangChain adapter (imports no part of LangChain)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_lightning.hookspecs import hookimpl


@hookimpl
def agl_register_adapters(register: Callable[[Any], None]) -> None:
    from agent_lightning_langchain.adapter import LangChainAdapter

    register(LangChainAdapter())
