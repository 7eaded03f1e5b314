"""Built-in plugin: the ``memory://`` store."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from agent_lightning.hookspecs import hookimpl
from agent_lightning.store.base import LightningStore

_lock = threading.Lock()
_named: dict[str, LightningStore] = {}


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
    name = url.split(":", 1)[1].lstrip("/")
    if not name:
        return InMemoryLightningStore(url)
    # memory://NAME is one store per process and name, so several components (and `agl` run
    # in-process) can share it.
    with _lock:
        store = _named.get(name)
        if store is None:
            store = _named[name] = InMemoryLightningStore(url)
        return store
