"""The LangChain adapter: adds a callback handler to every LangChain run while instrumented."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from agent_lightning.instrumentation.adapter import Adapter


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


class LangChainAdapter(Adapter):
    """Records chains, agents, LangGraph nodes, chat models, LLMs, tools and retrievers as spans."""

    name = "langchain"

    def instrumentation_dependencies(self) -> Collection[str]:
        return ["langchain-core>=0.3,<2"]  # LangChain 0.3 and 1.x, LangGraph through it

    def _instrument(self) -> None:
        global _registered
        from langchain_core.tracers.context import register_configure_hook

        from agent_lightning_langchain.handler import LightningCallbackHandler

        if not _registered:  # LangChain has no way to remove a configure hook: it stays, reading the switch
            register_configure_hook(_switch, inheritable=True)  # type: ignore[arg-type]
            _registered = True
        _switch.handler = LightningCallbackHandler()

    def _uninstrument(self) -> None:
        _switch.handler = None

    @property
    def handler(self) -> Any:
        """The active callback handler, or ``None`` when not instrumented."""
        return _switch.handler
