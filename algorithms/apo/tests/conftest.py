"""Shared fixtures: the calculator agent of examples/calc_agent, served by the scripted upstream behind the proxy."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from agent_lightning_proxy import LLMProxy
from agent_lightning_testkit.scripted_llm import Reply, ScriptCall, ScriptedLLM, ToolCall

__all__ = ["LLMProxy", "Reply", "ScriptCall", "ScriptedLLM", "ToolCall"]

CALC_AGENT = Path(__file__).resolve().parents[3] / "examples" / "calc_agent"


@pytest.fixture(scope="session")
def calc() -> tuple[ModuleType, ModuleType]:
    """``(tasks, openai_agent)`` of the calculator example."""
    if str(CALC_AGENT) not in sys.path:
        sys.path.insert(0, str(CALC_AGENT))
    return importlib.import_module("tasks"), importlib.import_module("openai_agent")


def calc_model(lookup: dict[str, str]) -> Callable[[ScriptCall], Reply | str]:
    """A deterministic stand-in for a small model. It calls the calculator (and answers right) when the prompt holds
    worked examples or tells it to ("ALWAYS call the calculator"), or for "What is …" questions; it never does when
    told "Never use tools"; otherwise it answers a wrong ``ANSWER: 1``."""

    def script(call: ScriptCall) -> Reply | str:
        messages = call.messages
        if messages[-1]["role"] == "tool":
            return f"ANSWER: {messages[-1]['content']}"
        question = str(messages[-1]["content"])
        system = str(messages[0]["content"]) if messages[0]["role"] == "system" else ""
        shots = sum(m["role"] == "user" for m in messages) - 1
        uses_tool = shots > 0 or "ALWAYS call the calculator" in system or question.startswith("What is")
        if "Never use tools" in system or question not in lookup:
            uses_tool = False
        if uses_tool:
            return Reply(tool_calls=[ToolCall("calculator", {"expression": lookup[question]})])
        return "ANSWER: 1"

    return script


@pytest.fixture
def served(calc: tuple[ModuleType, ModuleType]) -> Iterator[Callable[..., Any]]:
    """``serve(tasks)`` -> (store, proxy): the scripted model for ``tasks`` behind the proxy, its LLM published."""
    import agent_lightning as agl

    opened: list[Any] = []

    def serve(tasks: list[dict[str, Any]]) -> tuple[Any, Any]:
        lookup = {t["question"]: t["expression"] for t in tasks}
        store = agl.InMemoryLightningStore()
        llm = ScriptedLLM(calc_model(lookup)).__enter__()
        proxy = LLMProxy(store, llm.url).__enter__()
        opened.extend([proxy, llm])
        agl.SyncStore(store).add_resources({"main_llm": proxy.resource("scripted", temperature=0.0)})
        return store, proxy

    yield serve
    for item in opened:
        item.__exit__(None, None, None)


def split(tasks_module: ModuleType, n_train: int, n_val: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation tasks, each with both "What is …" questions (solved without examples) and others."""
    train, val = tasks_module.make_tasks(n_train, 11), tasks_module.make_tasks(n_val, 12)
    for part in (train, val):
        kinds = {t["question"].startswith("What is") for t in part}
        assert kinds == {True, False}, "pick seeds that mix both kinds of question"
    return train, val
