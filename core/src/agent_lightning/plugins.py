"""The plugin manager: loads built-ins and the ``agent_lightning`` entry-point group, lazily.

Set ``AGL_PLUGINS`` to a comma-separated list of entry-point names to load
only those (an empty string loads none), which keeps tests and debugging
deterministic. Built-in plugins always load.

After loading, every ``agl_*`` function must match a hook spec (pytest's
``check_pending()``): a misspelled hook raises :class:`PluginError`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from agent_lightning import hookspecs
from agent_lightning.errors import PluginError

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
_not_enabled: list[PluginInfo] = []
"""Entry points installed but left out by ``AGL_PLUGINS`` (named in install hints)."""


class _Manager(pluggy.PluginManager):
    """Treats every ``agl_*`` routine as a hook implementation, decorated or not (as pytest does with
    ``pytest_*``), so that :meth:`check_pending` also catches a misspelled, undecorated one."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None or not name.startswith("agl_"):
            return opts
        if not inspect.isroutine(getattr(plugin, name, None)):
            return None
        return pluggy.HookimplOpts(
            wrapper=False, hookwrapper=False, optionalhook=False, tryfirst=False, trylast=False, specname=None
        )


def _check_pending(manager: pluggy.PluginManager, plugin: object) -> None:
    """Raise :class:`PluginError` if ``plugin`` implements a hook that has no spec (a typo)."""
    known = sorted(name for name in vars(hookspecs) if name.startswith("agl_"))
    for caller in manager.get_hookcallers(plugin) or []:
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not impl.optionalhook:
                close = difflib.get_close_matches(caller.name, known, n=1)
                raise PluginError(
                    f"plugin {manager.get_name(plugin)!r} defines {caller.name}(), which matches no "
                    f"agent-lightning hook{f' (did you mean {close[0]}?)' if close else ''}; "
                    f"known hooks: {', '.join(known)}"
                )


def _load() -> pluggy.PluginManager:
    manager = _Manager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    try:
        core_version: str | None = importlib.metadata.version("agent-lightning")
    except importlib.metadata.PackageNotFoundError:
        core_version = None
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        infos.append(PluginInfo(module_name, module_name, "agent-lightning", core_version, builtin=True))

    allowed_env = os.environ.get("AGL_PLUGINS")
    allowed = None if allowed_env is None else {n.strip() for n in allowed_env.split(",") if n.strip()}
    not_enabled: list[PluginInfo] = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        package = dist.metadata["Name"] if dist is not None else None
        version = dist.version if dist is not None else None
        if allowed is not None and entry_point.name not in allowed:
            not_enabled.append(PluginInfo(entry_point.name, entry_point.value, package, version, builtin=False))
            continue
        if manager.has_plugin(entry_point.name):
            continue  # the same entry point seen twice (e.g. editable + regular install)
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
        except Exception as exc:  # a broken plugin must not take the whole system down
            logger.warning("agent-lightning plugin %r (%s) failed to load: %s", entry_point.name, package, exc)
            infos.append(PluginInfo(entry_point.name, entry_point.value, package, version, False, repr(exc)))
            continue
        infos.append(PluginInfo(entry_point.name, entry_point.value, package, version, builtin=False))
    for plugin in manager.get_plugins():
        _check_pending(manager, plugin)
    _infos[:] = infos
    _not_enabled[:] = not_enabled
    return manager


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first call."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _load()
        return _manager


def hook() -> Any:
    """The hook relay (``hook().agl_register_commands(subparsers=…)``)."""
    return get_plugin_manager().hook


def collect(hook_name: str, kind: type[Any]) -> dict[str, Any]:
    """The ``kind`` objects plugins hand to ``register`` in a register-callback hook, by name; others: PluginError."""
    found: dict[str, Any] = {}

    def register(item: object) -> None:
        if not isinstance(item, kind):
            raise PluginError(f"register() takes {kind.__module__}.{kind.__qualname__} objects, got {item!r}")
        found[item.name] = item

    getattr(hook(), hook_name)(register=register)
    return found


def call_each(hook_name: str, make_kwargs: Callable[[PluginInfo], dict[str, Any]]) -> None:
    """Call every implementation of a hook with arguments made for its plugin.

    Register-callback hooks use it so that what a plugin registers can be traced back to the
    plugin (e.g. to name both plugins when two claim the same store scheme).
    """
    manager = get_plugin_manager()
    for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):  # pluggy's call order
        info = plugin_info(impl.plugin_name)
        kwargs = make_kwargs(info)
        impl.function(**{name: kwargs[name] for name in impl.argnames})


def plugin_info(name: str) -> PluginInfo:
    """What is known about the loaded plugin registered as ``name``."""
    with _lock:
        for info in _infos:
            if info.name == name:
                return info
    return PluginInfo(name, name, None, None, builtin=False)


def list_plugins() -> list[PluginInfo]:
    """Every plugin that was loaded or failed to load."""
    get_plugin_manager()
    with _lock:
        return list(_infos)


def install_hint(kind: str, name: str) -> str:
    """Where the plugin providing ``name`` (a store scheme, adapter or algorithm) may come from.

    Built from the entry points: an installed plugin that failed to load or that ``AGL_PLUGINS``
    leaves out is named with its distribution; otherwise the packaging convention is suggested.
    """

    def matches(info: PluginInfo) -> bool:  # e.g. the "postgres" entry point for "postgresql"
        return name.lower().startswith(info.name.lower()) or (info.package or "").lower().endswith(name.lower())

    failed = [p for p in list_plugins() if p.error and matches(p)]
    if failed:
        return "; ".join(
            f"plugin {p.name!r} ({p.package or p.module}) is installed but failed to load: {p.error}" for p in failed
        )
    with _lock:
        left_out = list(_not_enabled)
    relevant = [p for p in left_out if matches(p)]
    if relevant:
        names = ", ".join(f"{p.name!r} ({p.package or p.module})" for p in relevant)
        return f"the plugin {names} is installed but AGL_PLUGINS leaves it out"
    hint = (
        f"install the {kind} plugin that provides {name!r} (packages are named `agent-lightning-<name>` "
        "by convention; `agl plugins` lists what is installed)"
    )
    if left_out:
        hint += f"; AGL_PLUGINS leaves out {', '.join(p.name for p in left_out)}"
    return hint


def register(plugin: object, name: str | None = None) -> None:
    """Register a plugin object in this process (mainly for tests and notebooks).

    :raises PluginError: the plugin defines an ``agl_*`` function that matches no hook spec.
    """
    manager = get_plugin_manager()
    manager.register(plugin, name=name)
    try:
        _check_pending(manager, plugin)
    except PluginError:
        manager.unregister(plugin)
        raise
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
    from agent_lightning import algorithms, store
    from agent_lightning.instrumentation import adapter

    algorithms.clear_cache()
    adapter.clear_cache()
    store.clear_cache()
