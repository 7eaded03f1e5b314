"""Built-in plugin: the ``memory://`` store."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store.base import LightningStore


@hookimpl
def agl_store_schemes() -> list[str]:
    return ["memory"]


@hookimpl
def agl_open_store(url: str, options: Mapping[str, Any]) -> LightningStore | None:
    if not url.startswith("memory:"):
        return None
    from agent_lightning.store.memory import InMemoryLightningStore

    if options:
        raise ValueError(f"memory:// takes no options, got {sorted(options)}")
    return InMemoryLightningStore(url)
