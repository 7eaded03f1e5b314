"""Agent Lightning: train existing agents from their traces.

``import agent_lightning as agl`` is cheap: names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # instrumentation
    "TrainingContext": "agent_lightning.instrumentation.context",
    "current_context": "agent_lightning.instrumentation.context",
    "span": "agent_lightning.instrumentation.spans",
    "start_span": "agent_lightning.instrumentation.spans",
    "current_span": "agent_lightning.instrumentation.spans",
    "emit_reward": "agent_lightning.instrumentation.spans",
    "emit_message": "agent_lightning.instrumentation.spans",
    "tool_call": "agent_lightning.instrumentation.spans",
    "atool_call": "agent_lightning.instrumentation.spans",
    "propagate": "agent_lightning.instrumentation.context",
    "configure": "agent_lightning.instrumentation.tracer",
    "get_tracer": "agent_lightning.instrumentation.tracer",
    "instrument": "agent_lightning.instrumentation.adapter",
    "uninstrument": "agent_lightning.instrumentation.adapter",
    # stores
    "LightningStore": "agent_lightning.store.base",
    "InMemoryLightningStore": "agent_lightning.store.memory",
    "SyncStore": "agent_lightning.store.sync",
    "open_store": "agent_lightning.store",
    # data model
    "Rollout": "agent_lightning.types",
    "RolloutConfig": "agent_lightning.types",
    "RolloutRequest": "agent_lightning.types",
    "Attempt": "agent_lightning.types",
    "AttemptedRollout": "agent_lightning.types",
    "AttemptCompletion": "agent_lightning.types",
    "Span": "agent_lightning.types",
    "Reward": "agent_lightning.types",
    "PromptTemplate": "agent_lightning.types",
    "LLM": "agent_lightning.types",
    "ToolConfig": "agent_lightning.types",
    "ResourcesSnapshot": "agent_lightning.types",
    "Sample": "agent_lightning.types",
    "Episode": "agent_lightning.types",
    "Trajectory": "agent_lightning.types",
    # training
    "build_episode": "agent_lightning.trajectory",
    "Runner": "agent_lightning.runner",
    "LitAgent": "agent_lightning.agent",
    "Trainer": "agent_lightning.trainer",
    "Algorithm": "agent_lightning.algorithm",
    "hookimpl": "agent_lightning.hookspecs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name[:1].isupper() and not name.startswith("__"):
        # Algorithm plugins' public names (PPOConfig, …) resolve through the registry.
        from agent_lightning.algorithms import resolve_name
        from agent_lightning.errors import PluginError

        try:
            return resolve_name(name)
        except PluginError as exc:
            raise AttributeError(str(exc)) from None
    raise AttributeError(f"module 'agent_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from agent_lightning.hookspecs import hookimpl
    from agent_lightning.instrumentation.context import TrainingContext, current_context, propagate
    from agent_lightning.instrumentation.spans import (
        atool_call,
        current_span,
        emit_message,
        emit_reward,
        span,
        start_span,
        tool_call,
    )
    from agent_lightning.instrumentation.tracer import configure, get_tracer
    from agent_lightning.store import open_store
    from agent_lightning.store.base import LightningStore
    from agent_lightning.store.memory import InMemoryLightningStore
    from agent_lightning.store.sync import SyncStore
    from agent_lightning.types import (
        LLM,
        Attempt,
        AttemptCompletion,
        AttemptedRollout,
        Episode,
        PromptTemplate,
        ResourcesSnapshot,
        Reward,
        Rollout,
        RolloutConfig,
        RolloutRequest,
        Sample,
        Span,
        ToolConfig,
        Trajectory,
    )
