"""Stores: the contract, the in-memory backend, and opening any backend by URL.

Backends are registered by plugins through ``agl_register_stores``; :func:`open_store`
dispatches a URL to the backend registered for its scheme.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent_lightning.errors import PluginError
from agent_lightning.store.base import LATEST, LightningStore
from agent_lightning.store.memory import InMemoryLightningStore
from agent_lightning.store.sync import SyncStore

__all__ = [
    "LATEST",
    "InMemoryLightningStore",
    "LightningStore",
    "RegisterStore",
    "StoreOpener",
    "SyncStore",
    "open_store",
    "store_schemes",
]


class StoreOpener(Protocol):
    """Opens a store for a URL of a registered scheme."""

    def __call__(self, url: str, options: Mapping[str, Any], *, create: bool) -> LightningStore:
        """Open ``url``; ``create=False`` must not create a store that does not exist yet."""
        ...


class RegisterStore(Protocol):
    """The ``register`` callback that ``agl_register_stores`` implementations receive."""

    def __call__(self, schemes: Sequence[str], opener: StoreOpener) -> None: ...


@dataclass(frozen=True)
class _Backend:
    opener: StoreOpener
    plugin: str


def clear_cache() -> None:
    """Forget registered backends (after plugins change)."""
    _registered.cache_clear()


def _describe(info: Any) -> str:
    return f"{info.name!r} ({info.package})" if info.package else repr(info.name)


@functools.cache
def _registered() -> dict[str, _Backend]:
    from agent_lightning import plugins

    found: dict[str, _Backend] = {}

    def for_plugin(info: plugins.PluginInfo) -> dict[str, Any]:
        def register(schemes: Sequence[str], opener: StoreOpener) -> None:
            if isinstance(schemes, str) or not callable(opener):
                raise PluginError(f"plugin {_describe(info)}: register() takes a list of schemes and a callable opener")
            for scheme in schemes:
                key = scheme.lower().removesuffix("://")
                other = found.get(key)
                if other is not None and other.plugin != info.name:
                    raise PluginError(
                        f"store scheme {key}:// is registered by two plugins: "
                        f"{_describe(plugins.plugin_info(other.plugin))} and {_describe(info)}; "
                        "uninstall one, or leave one out with AGL_PLUGINS"
                    )
                found[key] = _Backend(opener, info.name)

        return {"register": register}

    plugins.call_each("agl_register_stores", for_plugin)
    return found


def store_schemes() -> list[str]:
    """Every URL scheme an installed backend accepts."""
    return sorted(_registered())


def open_store(url: str, *, create: bool = True, **options: Any) -> LightningStore:
    """Open the store a URL names (``memory://``, ``sqlite:///runs.db``, ``postgresql://…``).

    :param url: ``scheme://…``; the backend registered for the scheme opens it.
    :param create: ``False`` for read-only uses: a store that does not exist yet is not created;
        the backend raises :class:`~agent_lightning.errors.NotFound` or ``FileNotFoundError``.
    :param options: backend-specific keyword options (pool sizes, timeouts, …).
    :raises PluginError: no installed plugin handles the scheme (the message says what to install).
    """
    from agent_lightning import plugins

    if not isinstance(url, str) or ("://" not in url and not url.startswith("memory:")):
        raise ValueError(f"store URL must look like 'scheme://…', got {url!r}")
    scheme = url.split(":", 1)[0].lower()
    backends = _registered()
    backend = backends.get(scheme)
    if backend is None:
        raise PluginError(
            f"no installed plugin opens {scheme}:// URLs ({url!r}; installed schemes: "
            f"{', '.join(sorted(backends)) or 'none'}); {plugins.install_hint('store backend', scheme)}"
        )
    store = backend.opener(url, options, create=create)
    if not isinstance(store, LightningStore):
        raise PluginError(
            f"plugin {backend.plugin!r} opened {scheme}:// as {type(store).__name__}, not a LightningStore"
        )
    return store
