"""Framework adapters: instrument a framework so an unchanged agent emits spans.

Adapters come from plugins (``agl_register_adapters``). Every registered,
available adapter is switched on when the first :class:`TrainingContext`
opens, unless it was turned off with :func:`uninstrument` or the
``AGL_ADAPTERS`` environment variable (comma-separated names, or ``none``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection

from agent_lightning.errors import PluginError

logger = logging.getLogger(__name__)


def dependency_conflicts(requirements: Collection[str]) -> list[str]:
    """Which of the PEP 508 ``requirements`` (``"openai>=1.40,<4"``) the installed distributions do not meet.

    :return: one line per unmet requirement (``"openai>=1.40,<4: 0.28.1 is installed"``); empty when all are met.
    """
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    conflicts = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            conflicts.append(f"{text}: not installed")
            continue
        try:
            ok = requirement.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            conflicts.append(f"{text}: {installed} is installed")
    return conflicts


class Adapter(ABC):
    """Instruments a framework so that an unchanged agent emits spans (OpenTelemetry's ``BaseInstrumentor``).

    :meth:`instrument` and :meth:`uninstrument` own idempotence, thread safety and the
    framework version check; a subclass names its framework's distributions in
    :meth:`instrumentation_dependencies` and writes :meth:`_instrument` / :meth:`_uninstrument`.
    """

    name: str
    """Short name: ``"langchain"``, ``"autogen"``, ``"openai"``."""

    def __init__(self) -> None:
        self._instrumented = False
        self._state_lock = threading.RLock()

    @abstractmethod
    def instrumentation_dependencies(self) -> Collection[str]:
        """The framework distributions it supports, as PEP 508 requirements (``["openai>=1.40,<4"]``)."""

    @abstractmethod
    def _instrument(self) -> None:
        """Start emitting spans for the framework's operations (called once per switch-on)."""

    @abstractmethod
    def _uninstrument(self) -> None:
        """Stop emitting spans and restore the framework (called once per switch-off)."""

    def dependency_conflicts(self) -> list[str]:
        """The unmet :meth:`instrumentation_dependencies` (empty when the framework is usable)."""
        return dependency_conflicts(self.instrumentation_dependencies())

    def is_available(self) -> bool:
        """Whether the framework is installed at a supported version."""
        return not self.dependency_conflicts()

    @property
    def is_instrumented(self) -> bool:
        """Whether the adapter is switched on."""
        return self._instrumented

    def instrument(self) -> None:
        """Switch on (a no-op when already on).

        :raises PluginError: the framework is missing or at an unsupported version.
        """
        with self._state_lock:
            if self._instrumented:
                return
            conflicts = self.dependency_conflicts()
            if conflicts:
                raise PluginError(
                    f"adapter {self.name!r} cannot instrument: its framework is missing or unsupported "
                    f"({'; '.join(conflicts)})"
                )
            self._instrument()
            self._instrumented = True

    def uninstrument(self) -> None:
        """Switch off and restore the framework (a no-op when already off)."""
        with self._state_lock:
            if not self._instrumented:
                return
            self._uninstrument()
            self._instrumented = False


_lock = threading.RLock()
_adapters: dict[str, Adapter] | None = None
_active: set[str] = set()
_disabled: set[str] = set()
_explicit: set[str] = set()
_auto_refs = 0
_warned: set[str] = set()


def clear_cache() -> None:
    """Forget registered adapters (after plugins change); active ones are switched off."""
    global _adapters, _auto_refs
    with _lock:
        for name in list(_active):
            _switch_off(name)
        _adapters = None
        _auto_refs = 0
        _explicit.clear()
        _warned.clear()


def adapters() -> dict[str, Adapter]:
    """Every registered adapter by name."""
    global _adapters
    with _lock:
        if _adapters is None:
            from agent_lightning import plugins

            _adapters = plugins.collect("agl_register_adapters", Adapter)
        return dict(_adapters)


def _get(name: str) -> Adapter:
    found = adapters()
    if name not in found:
        from agent_lightning.plugins import install_hint

        raise PluginError(
            f"no adapter named {name!r} is installed (installed: {', '.join(sorted(found)) or 'none'}); "
            f"{install_hint('adapter', name)}"
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
        adapter.instrument()  # raises PluginError when the framework is missing or unsupported
        _disabled.discard(name)
        _explicit.add(name)
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


def warn_unless_active(name: str, message: str) -> None:
    """Log ``message`` once per process when adapter ``name`` is not switched on (an adapter that needs another)."""
    if name in _active or message in _warned:
        return
    _warned.add(message)
    logger.warning("agent-lightning: %s", message)


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
