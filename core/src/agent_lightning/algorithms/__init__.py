"""Training algorithms, resolved lazily through the ``agl_register_algorithms`` hook.

``from agent_lightning.algorithms import ProximalPolicyOptimization`` imports
the class from whichever installed plugin package registered it, and says
where to look for it when none did.
"""

from __future__ import annotations

import functools
from typing import Any

from agent_lightning.errors import PluginError
from agent_lightning.registry import AlgorithmEntry, import_object


@functools.cache
def _registered() -> dict[str, AlgorithmEntry]:
    from agent_lightning import plugins

    return plugins.collect("agl_register_algorithms", AlgorithmEntry)


def clear_cache() -> None:
    """Forget resolved entries (after plugins change)."""
    _registered.cache_clear()


def algorithm_entries() -> dict[str, AlgorithmEntry]:
    """Every registered algorithm by short name."""
    return dict(_registered())


def resolve_name(name: str) -> Any:
    """The object a public name (``PPOConfig``) or short name (``ppo``) refers to."""
    entries = algorithm_entries()
    if name in entries:
        return import_object(entries[name].algorithm)
    for entry in entries.values():
        reference = entry.names().get(name)
        if reference is not None:
            return import_object(reference)
    from agent_lightning.plugins import install_hint

    available = sorted({n for e in entries.values() for n in [e.name, *e.names()]})
    raise PluginError(
        f"no installed algorithm plugin provides {name!r} (available: {', '.join(available) or 'none'}); "
        f"{install_hint('algorithm', name)}"
    )


def get_algorithm(name: str, **config: Any) -> Any:
    """Instantiate an algorithm by short name, passing ``config`` to its config class."""
    entries = algorithm_entries()
    if name not in entries:
        resolve_name(name)  # raises the helpful error
    entry = entries[name]
    cls = import_object(entry.algorithm)
    if entry.config is not None:
        return cls(config=import_object(entry.config)(**config))
    return cls(**config)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return resolve_name(name)
    except PluginError as exc:
        raise ImportError(str(exc), name=name) from None
