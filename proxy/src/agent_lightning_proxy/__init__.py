"""The LLM proxy: an OpenAI-compatible endpoint that records every model call with its exact token ids.

Needs the ``server`` extra (``pip install agent-lightning[server]``). Importing this package is
light; :class:`LLMProxy` and :func:`create_app` load the web stack on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_lightning.proxy.app import ProxyHandler, ProxySettings, ProxyStats, create_app
    from agent_lightning.proxy.server import LLMProxy

__all__ = ["LLMProxy", "ProxyHandler", "ProxySettings", "ProxyStats", "create_app"]

_WHERE = {
    "LLMProxy": "agent_lightning.proxy.server",
    "ProxyHandler": "agent_lightning.proxy.app",
    "ProxySettings": "agent_lightning.proxy.app",
    "ProxyStats": "agent_lightning.proxy.app",
    "create_app": "agent_lightning.proxy.app",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_lightning.proxy' has no attribute {name!r}")
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name in {"aiohttp", "yarl", "httpx", "starlette", "uvicorn", "orjson", "fastapi"}:
            raise ModuleNotFoundError(
                f"the Agent Lightning proxy needs {exc.name}: pip install 'agent-lightning[server]'", name=exc.name
            ) from exc
        raise
