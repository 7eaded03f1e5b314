"""The LLM proxy: an OpenAI-compatible endpoint that records every model call with its exact token ids.

Importing this package is light; :class:`LLMProxy` and :func:`create_app` load the web stack on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning_proxy.app import ProxyHandler, ProxySettings, ProxyStats, create_app
    from agent_lightning_proxy.server import LLMProxy

__all__ = ["LLMProxy", "ProxyHandler", "ProxySettings", "ProxyStats", "create_app"]

_WHERE = {
    "LLMProxy": "agent_lightning_proxy.server",
    "ProxyHandler": "agent_lightning_proxy.app",
    "ProxySettings": "agent_lightning_proxy.app",
    "ProxyStats": "agent_lightning_proxy.app",
    "create_app": "agent_lightning_proxy.app",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_lightning_proxy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
