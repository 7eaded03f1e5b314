"""Stores: the contract, the in-memory backend, and opening any backend by URL."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from agent_lightning.errors import PluginError
from agent_lightning.store.base import LATEST, LightningStore
from agent_lightning.store.memory import InMemoryLightningStore
from agent_lightning.store.sync import SyncStore

__all__ = ["LATEST", "InMemoryLightningStore", "LightningStore", "SyncStore", "open_store", "store_schemes"]


def store_schemes() -> list[str]:
    """Every URL scheme an installed backend accepts."""
    from agent_lightning import plugins

    return sorted({scheme for schemes in plugins.hook().agl_store_schemes() for scheme in schemes})


def open_store(url: str, **options: Any) -> LightningStore:
    """Open the store a URL names (``memory://``, ``sqlite:///runs.db``, ``postgresql://…``).

    The backend is found through the ``agl_open_store`` hook; a scheme that
    no installed plugin handles raises :class:`PluginError` saying what to install.
    """
    from agent_lightning import plugins
    from agent_lightning.registry import install_hint

    if not isinstance(url, str) or ("://" not in url and not url.startswith("memory:")):
        raise ValueError(f"store URL must look like 'scheme://…', got {url!r}")
    scheme = urlsplit(url).scheme.split("+", 1)[0].lower()
    opts: Mapping[str, Any] = options
    store = plugins.hook().agl_open_store(url=url, options=opts)
    if store is None:
        raise PluginError(
            f"no installed store backend handles {scheme}:// URLs ({url!r}); "
            f"{install_hint(scheme)}. Installed schemes: {', '.join(store_schemes()) or 'none'}"
        )
    if not isinstance(store, LightningStore):
        raise PluginError(f"the backend for {scheme}:// returned {type(store).__name__}, not a LightningStore")
    return store
