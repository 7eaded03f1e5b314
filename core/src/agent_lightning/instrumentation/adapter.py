"""Framework adapters: instrument a framework so an unchanged agent emits spans.

Adapters come from plugins (``agl_register_adapters``). Every registered,
available adapter is switched on when the first :class:`TrainingContext`
opens, unless it was turned off with :func:`uninstrument` or the
``AGL_ADAPTERS`` environment variable (comma-separated names, or ``none``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol, runtime_checkable

from agent_lightning.errors import PluginError
from agent_lightning.registry import install_hint

logger = logging.getLogger(__name__)


@runtime_checkable
class Adapter(Protocol):
    """What a framework adapter provides (in the style of OpenTelemetry instrumentors)."""

    name: str
    """Short name: ``"langchain"``, ``"autogen"``, ``"openai"``."""
    supported_versions: str
    """The framework versions it supports, as a PEP 440 specifier (``">=0.3,<2"``)."""

    def is_available(self) -> bool:
        """Whether the framework is importable at a supported version."""
        ...

    def instrument(self) -> None:
        """Start emitting spans for the framework's operations. Idempotent."""
        ...

    def uninstrument(self) -> None:
        """Stop emitting spans and restore the framework. Idempotent."""
        ...


_lock = threading.RLock()
_adapters: dict[str, Adapter] | None = None
_active: set[str] = set()
_disabled: set[str] = set()
_explicit: set[str] = set()
_auto_refs = 0


def clear_cache() -> None:
    """Forget registered adapters (after plugins change); active ones are switched off."""
    global _adapters, _auto_refs
    with _lock:
        for name in list(_active):
            _switch_off(name)
        _adapters = None
        _auto_refs = 0
        _explicit.clear()


def adapters() -> dict[str, Adapter]:
    """Every registered adapter by name."""
    global _adapters
    with _lock:
        if _adapters is None:
            from agent_lightning import plugins

            found: dict[str, Adapter] = {}

            def register(adapter: Adapter) -> None:
                if not isinstance(adapter, Adapter):
                    raise PluginError(f"{adapter!r} does not implement the Adapter protocol")
                found[adapter.name] = adapter

            plugins.hook().agl_register_adapters(register=register)
            _adapters = found
        return dict(_adapters)


def _get(name: str) -> Adapter:
    found = adapters()
    if name not in found:
        raise PluginError(
            f"no adapter named {name!r} is installed; {install_hint(name)}. "
            f"Installed: {', '.join(sorted(found)) or 'none'}"
        )
    return found[name]


def _switch_off(name: str) -> None:
    if name in _active and _adapters is not None:
        try:
            _adapters[name].uninstrument()
        finally:
            _active.discard(name)


def instrument(name: str) -> None:
    """Switch an adapter on now and keep it on until :func:`uninstrument`."""
    with _lock:
        adapter = _get(name)
        if not adapter.is_available():
            raise PluginError(
                f"adapter {name!r} is installed but its framework is missing or unsupported "
                f"(needs {adapter.supported_versions})"
            )
        _disabled.discard(name)
        _explicit.add(name)
        if name not in _active:
            adapter.instrument()
            _active.add(name)


def uninstrument(name: str) -> None:
    """Switch an adapter off, also for TrainingContexts opened later."""
    with _lock:
        _get(name)
        _disabled.add(name)
        _explicit.discard(name)
        _switch_off(name)


def active_adapters() -> list[str]:
    """Names of the adapters currently switched on."""
    with _lock:
        return sorted(_active)


def _env_selection() -> set[str] | None:
    value = os.environ.get("AGL_ADAPTERS")
    if value is None:
        return None
    names = {n.strip() for n in value.split(",") if n.strip()}
    return set() if names == {"none"} else names


def auto_instrument() -> None:
    """Called when a TrainingContext opens: switch on every available, enabled adapter."""
    global _auto_refs
    with _lock:
        _auto_refs += 1
        if _auto_refs > 1:
            return
        selection = _env_selection()
        for name, adapter in adapters().items():
            if name in _active or name in _disabled or (selection is not None and name not in selection):
                continue
            try:
                if adapter.is_available():
                    adapter.instrument()
                    _active.add(name)
            except Exception:  # an adapter bug must not break the agent
                logger.exception("adapter %r failed to instrument; its spans will be missing", name)


def auto_uninstrument() -> None:
    """Called when a TrainingContext closes: the last one switches auto-enabled adapters off."""
    global _auto_refs
    with _lock:
        _auto_refs = max(0, _auto_refs - 1)
        if _auto_refs:
            return
        for name in list(_active - _explicit):
            try:
                _switch_off(name)
            except Exception:
                logger.exception("adapter %r failed to uninstrument", name)
