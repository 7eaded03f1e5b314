"""Built-in plugin: the ``memory://`` store."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from agent_lightning.errors import NotFound
from agent_lightning.hookspecs import hookimpl
from agent_lightning.store import RegisterStore
from agent_lightning.store.base import LightningStore

_lock = threading.Lock()
_named: dict[str, LightningStore] = {}


def open_memory_store(url: str, options: Mapping[str, Any], *, create: bool) -> LightningStore:
    """``memory://`` is a new store; ``memory://NAME`` is one store per process and name, so several
    components (and ``agl`` run in-process) share it. ``create=False`` only opens an existing name."""
    from agent_lightning.store.memory import InMemoryLightningStore

    if options:
        raise ValueError(f"memory:// takes no options, got {sorted(options)}")
    name = url.split(":", 1)[1].lstrip("/")
    with _lock:
        store = _named.get(name) if name else None
        if store is None and not create:
            what = f"no memory://{name} store in this process" if name else "memory:// is always a new, empty store"
            raise NotFound(what)
        if store is None:
            store = InMemoryLightningStore(url)
            if name:
                _named[name] = store
        return store


@hookimpl
def agl_register_stores(register: RegisterStore) -> None:
    register(schemes=["memory"], opener=open_memory_store)
