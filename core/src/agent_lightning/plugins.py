"""The plugin manager: loads built-ins and the ``agent_lightning`` entry-point group, lazily.

Set ``AGL_PLUGINS`` to a comma-separated list of entry-point names to load
only those (an empty string loads none), which keeps tests and debugging
deterministic. Built-in plugins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import pluggy

from agent_lightning import hookspecs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agent_lightning"
DEFAULT_PLUGINS: tuple[str, ...] = ("agent_lightning.store.memory_plugin",)


@dataclass(frozen=True)
class PluginInfo:
    """One loaded (or failed) plugin, for ``agl plugins``."""

    name: str
    module: str
    package: str | None
    version: str | None
    builtin: bool
    error: str | None = None


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_infos: list[PluginInfo] = []


def _load() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    core_version = importlib.metadata.version("agent-lightning") if _installed("agent-lightning") else None
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        infos.append(PluginInfo(module_name, module_name, "agent-lightning", core_version, builtin=True))

    allowed_env = os.environ.get("AGL_PLUGINS")
    allowed = None if allowed_env is None else {n.strip() for n in allowed_env.split(",") if n.strip()}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and entry_point.name not in allowed:
            continue
        if manager.has_plugin(entry_point.name):
            continue  # the same entry point seen twice (e.g. editable + regular install)
        dist = entry_point.dist
        package = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except Exception as exc:  # a broken plugin must not take the whole system down
            logger.warning("agent-lightning plugin %r (%s) failed to load: %s", entry_point.name, package, exc)
            infos.append(PluginInfo(entry_point.name, entry_point.value, package, version, False, repr(exc)))
            continue
        infos.append(PluginInfo(entry_point.name, entry_point.value, package, version, builtin=False))
    _infos[:] = infos
    return manager


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first call."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _load()
        return _manager


def hook() -> Any:
    """The hook relay (``hook().agl_open_store(url=…, options=…)``)."""
    return get_plugin_manager().hook


def list_plugins() -> list[PluginInfo]:
    """Every plugin that was loaded or failed to load."""
    get_plugin_manager()
    with _lock:
        return list(_infos)


def register(plugin: object, name: str | None = None) -> None:
    """Register a plugin object in this process (mainly for tests and notebooks)."""
    manager = get_plugin_manager()
    manager.register(plugin, name=name)
    with _lock:
        _infos.append(PluginInfo(name or repr(plugin), repr(plugin), None, None, builtin=False))
    _invalidate_registries()


def unregister(name: str) -> None:
    """Remove a plugin registered by name."""
    get_plugin_manager().unregister(name=name)
    with _lock:
        _infos[:] = [i for i in _infos if i.name != name]
    _invalidate_registries()


def reset() -> None:
    """Forget every plugin; the next use loads them again (honours a changed ``AGL_PLUGINS``)."""
    global _manager
    with _lock:
        _manager = None
        _infos.clear()
    _invalidate_registries()


def _invalidate_registries() -> None:
    from agent_lightning import algorithms
    from agent_lightning.instrumentation import adapter

    algorithms.clear_cache()
    adapter.clear_cache()
