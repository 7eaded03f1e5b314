"""The AutoGen adapter: patches agent, team, model-client and tool classes while instrumented."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

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


class AutoGenAdapter:
    """Records AgentChat agent turns, team runs, speaker selection, model calls and tool runs.

    Every agent turn is an ``agent`` span named ``invoke_agent {agent}`` carrying
    ``gen_ai.agent.name``; its model calls (``llm``) and tool runs (``tool``) are its
    children and carry the same name, so a trainer can select one agent's calls.
    """

    name = "autogen"
    supported_versions = ">=0.7,<0.8"
    """``autogen-agentchat`` versions."""

    def __init__(self) -> None:
        self._patched: list[tuple[type, str, Any]] = []
        self._lock = threading.Lock()

    def is_available(self) -> bool:
        try:
            version = Version(importlib.metadata.version("autogen-agentchat"))
        except (importlib.metadata.PackageNotFoundError, InvalidVersion):
            return False
        return version in SpecifierSet(self.supported_versions)

    def _targets(self) -> list[tuple[type, str, Callable[[Any], Any]]]:
        from autogen_agentchat.agents import BaseChatAgent
        from autogen_agentchat.teams import BaseGroupChat
        from autogen_agentchat.teams._group_chat._base_group_chat_manager import BaseGroupChatManager
        from autogen_core.models import ChatCompletionClient
        from autogen_core.tools import BaseStreamTool, BaseTool

        for module in _OPTIONAL_MODULES:
            try:
                importlib.import_module(module)
            except Exception:  # not installed, or its own dependencies are missing
                pass
        plan: list[tuple[type, tuple[tuple[str, Callable[[Any], Any]], ...]]] = [
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
        targets: list[tuple[type, str, Callable[[Any], Any]]] = []
        for root, methods in plan:
            for cls in _subclasses(root):
                for method, wrap in methods:
                    original = cls.__dict__.get(method)
                    if original is None or getattr(original, "__isabstractmethod__", False):
                        continue
                    targets.append((cls, method, wrap))
        return targets

    def instrument(self) -> None:
        with self._lock:
            if not self._patched:
                for cls, method, wrap in self._targets():
                    original = cls.__dict__[method]
                    if hasattr(original, "__agl_original__"):
                        continue
                    setattr(cls, method, wrap(original))
                    self._patched.append((cls, method, original))
            wrappers.enabled.set()

    def uninstrument(self) -> None:
        with self._lock:
            wrappers.enabled.clear()
            for cls, method, original in reversed(self._patched):
                setattr(cls, method, original)
            self._patched.clear()
