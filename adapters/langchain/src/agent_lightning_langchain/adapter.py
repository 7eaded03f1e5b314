"""The LangChain adapter: adds a callback handler to every LangChain run while instrumented."""

from __future__ import annotations

import importlib.metadata
import threading
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


class _HandlerSwitch:
    """What ``langchain_core``'s configure hooks read (they call ``.get()``, like a ContextVar's).

    Unlike a ContextVar it answers the same in every thread and task, so runs started in
    a framework's worker threads get the handler too.
    """

    def __init__(self) -> None:
        self.handler: Any = None

    def get(self, default: Any = None) -> Any:
        return self.handler if self.handler is not None else default


_switch = _HandlerSwitch()
_registered = False
_lock = threading.Lock()


class LangChainAdapter:
    """Records chains, agents, LangGraph nodes, chat models, LLMs, tools and retrievers as spans."""

    name = "langchain"
    supported_versions = ">=0.3,<2"
    """``langchain-core`` versions (LangChain 0.3 and 1.x, LangGraph through it)."""

    def is_available(self) -> bool:
        try:
            version = Version(importlib.metadata.version("langchain-core"))
        except (importlib.metadata.PackageNotFoundError, InvalidVersion):
            return False
        return version in SpecifierSet(self.supported_versions)

    def instrument(self) -> None:
        global _registered
        from langchain_core.tracers.context import register_configure_hook

        from agent_lightning_langchain.handler import LightningCallbackHandler

        with _lock:
            if not _registered:
                register_configure_hook(_switch, inheritable=True)  # type: ignore[arg-type]
                _registered = True
            if _switch.handler is None:
                _switch.handler = LightningCallbackHandler()

    def uninstrument(self) -> None:
        with _lock:
            _switch.handler = None

    @property
    def handler(self) -> Any:
        """The active callback handler, or ``None`` when not instrumented."""
        return _switch.handler
