"""AutoGen messages and results as OpenAI-style JSON (what ``gen_ai.*.messages`` attributes hold)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent_lightning.instrumentation.jsonable import bounded, jsonable


def _function_call(call: Any) -> dict[str, Any]:
    return {
        "id": getattr(call, "id", None),
        "type": "function",
        "function": {"name": getattr(call, "name", None), "arguments": getattr(call, "arguments", None)},
    }


def llm_message(message: Any) -> list[dict[str, Any]]:
    """One ``autogen_core.models.LLMMessage`` as OpenAI chat messages (tool results expand to several)."""
    kind = type(message).__name__
    content = getattr(message, "content", None)
    if kind == "SystemMessage":
        return [{"role": "system", "content": content}]
    if kind == "UserMessage":
        out: dict[str, Any] = {"role": "user", "content": content if isinstance(content, str) else jsonable(content)}
        if getattr(message, "source", None):
            out["name"] = message.source
        return [out]
    if kind == "AssistantMessage":
        out = {"role": "assistant"}
        if isinstance(content, list):
            out["content"] = getattr(message, "thought", None)
            out["tool_calls"] = [_function_call(c) for c in content]
        else:
            out["content"] = content
        if getattr(message, "source", None):
            out["name"] = message.source
        return [out]
    if kind == "FunctionExecutionResultMessage":
        return [
            {"role": "tool", "tool_call_id": getattr(r, "call_id", None), "content": getattr(r, "content", None)}
            for r in content or []
        ]
    return [jsonable(message)]


def llm_messages(messages: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for message in messages:
        out += llm_message(message)
    return out


def texts(messages: list[Any]) -> list[str]:
    return [m["content"] for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)]


def create_result(result: Any) -> dict[str, Any]:
    """A ``CreateResult`` as an OpenAI assistant message."""
    content = getattr(result, "content", None)
    message: dict[str, Any] = {"role": "assistant"}
    if isinstance(content, list):
        message["content"] = getattr(result, "thought", None)
        message["tool_calls"] = [_function_call(c) for c in content]
    else:
        message["content"] = content
    return message


def tool_schemas(tools: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for tool in tools:
        schema = getattr(tool, "schema", tool)
        out.append({"type": "function", "function": jsonable(schema)})
    return out


def chat_message(message: Any) -> dict[str, Any]:
    """An AgentChat message (``TextMessage``, ``ToolCallSummaryMessage``, …) as ``{role, name, content}``."""
    source = getattr(message, "source", None)
    try:
        text = message.to_text()
    except Exception:
        text = getattr(message, "content", None)
    return {
        "role": "user" if source == "user" else "assistant",
        "name": source,
        "type": type(message).__name__,
        "content": bounded(text, 16_000),
    }
