"""The AutoGen adapter: patches agent, team, model-client and tool classes while instrumented."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from typing import Any

from agent_lightning.instrumentation.adapter import Adapter

from agent_lightning_autogen import wrappers

logger = logging.getLogger(__name__)

_OPTIONAL_MODULES = (
    "autogen_ext.models.openai",
    "autogen_ext.models.anthropic",
    "autogen_ext.models.ollama",
    "autogen_ext.models.cache",
    "autogen_ext.models.replay",
)
"""Model-client modules imported (when installed) so their classes are patched too."""


def _subclasses(root: type) -> Iterator[type]:
    seen: set[type] = set()
    stack = [root]
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        stack.extend(cls.__subclasses__())


class AutoGenAdapter(Adapter):
    """Records AgentChat agent turns, team runs, speaker selection, model calls and tool runs.

    Every agent turn is an ``agent`` span named ``invoke_agent {agent}`` carrying
    ``gen_ai.agent.name``; its model calls (``llm``) and tool runs (``tool``) are its
    children and carry the same name, so a trainer can select one agent's calls.
    """

    name = "autogen"

    def __init__(self) -> None:
        super().__init__()
        self._patched: list[tuple[type, str, Any]] = []
        self._hooked: list[tuple[type, Any]] = []
        self._roots: list[tuple[type, tuple[tuple[str, Callable[[Any], Any]], ...]]] = []
        self._lock = threading.RLock()
        """Reentrant: a class defined while patching (an import) runs the subclass hook."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ["autogen-agentchat>=0.7,<0.8"]

    def _plan(self) -> list[tuple[type, tuple[tuple[str, Callable[[Any], Any]], ...]]]:
        from autogen_agentchat.agents import BaseChatAgent
        from autogen_agentchat.teams import BaseGroupChat
        from autogen_agentchat.teams._group_chat._base_group_chat_manager import BaseGroupChatManager
        from autogen_core.models import ChatCompletionClient
        from autogen_core.tools import BaseStreamTool, BaseTool

        return [
            (
                BaseChatAgent,
                (("on_messages", wrappers.wrap_on_messages), ("on_messages_stream", wrappers.wrap_on_messages_stream)),
            ),
            (BaseGroupChat, (("run_stream", wrappers.wrap_team_run_stream),)),
            (BaseGroupChatManager, (("select_speaker", wrappers.wrap_select_speaker),)),
            (
                ChatCompletionClient,
                (("create", wrappers.wrap_create), ("create_stream", wrappers.wrap_create_stream)),
            ),
            (BaseTool, (("run_json", wrappers.wrap_run_json),)),
            (BaseStreamTool, (("run_json_stream", wrappers.wrap_run_json_stream),)),
        ]

    def _patch_class(self, cls: type) -> None:
        """Wrap the methods ``cls`` itself defines, for every root it derives from (idempotent)."""
        for root, methods in self._roots:
            if not issubclass(cls, root):
                continue
            for method, wrap in methods:
                original = cls.__dict__.get(method)
                if original is None or getattr(original, "__isabstractmethod__", False):
                    continue
                if hasattr(original, "__agl_original__"):
                    continue
                setattr(cls, method, wrap(original))
                self._patched.append((cls, method, original))

    def _hook_subclasses(self, root: type) -> None:
        """Patch the subclasses of ``root`` defined from now on, as they are defined (``__init_subclass__``)."""
        own = root.__dict__.get("__init_subclass__")
        adapter = self

        def __init_subclass__(cls: type, **kwargs: Any) -> None:
            if own is not None:
                own.__get__(None, cls)(**kwargs)
            else:
                super(root, cls).__init_subclass__(**kwargs)  # type: ignore[arg-type]
            if wrappers.enabled.is_set():
                try:
                    with adapter._lock:
                        adapter._patch_class(cls)
                except Exception:  # a class we cannot patch must not break its definition
                    logger.exception("agent-lightning-autogen: could not patch %s", cls.__qualname__)

        root.__init_subclass__ = classmethod(__init_subclass__)  # type: ignore[assignment]
        self._hooked.append((root, own))

    def _instrument(self) -> None:
        """Patch every target class defined so far, and hook the roots so that classes defined while
        instrumented are patched when they are defined."""
        with self._lock:
            for module in _OPTIONAL_MODULES:
                try:
                    importlib.import_module(module)
                except Exception:  # not installed, or its own dependencies are missing
                    pass
            self._roots = self._plan()
            for root, _methods in self._roots:
                for cls in _subclasses(root):
                    self._patch_class(cls)
                self._hook_subclasses(root)
            wrappers.enabled.set()

    def _uninstrument(self) -> None:
        with self._lock:
            wrappers.enabled.clear()
            for root, own in reversed(self._hooked):
                if own is None:
                    delattr(root, "__init_subclass__")
                else:
                    root.__init_subclass__ = own
            self._hooked.clear()
            for cls, method, original in reversed(self._patched):
                setattr(cls, method, original)
            self._patched.clear()
