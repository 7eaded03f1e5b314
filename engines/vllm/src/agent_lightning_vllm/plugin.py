"""Registers the ``vllm`` inference engine (imports neither vLLM nor torch)."""

from __future__ import annotations

from collections.abc import Callable

from agent_lightning.engines import EngineEntry
from agent_lightning.hookspecs import hookimpl


@hookimpl
def agl_register_engines(register: Callable[[EngineEntry], None]) -> None:
    register(
        EngineEntry(
            name="vllm",
            factory="agent_lightning_vllm.engine:create",
            package="agent-lightning-vllm",
            features=frozenset({"full", "lora", "colocate"}),
            description="vLLM's OpenAI server in a child process; weights synced in place, LoRA loaded at run time",
        )
    )
