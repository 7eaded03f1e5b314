"""Reading what a rollout did from its spans: reward, conversation, and whether it read a resource."""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

from agent_lightning import semconv
from agent_lightning.types import PromptTemplate, Resource, Span, ToolConfig

Message = dict[str, Any]


def final_reward(spans: Sequence[Span]) -> float | None:
    """The last reward the rollout emitted (what it is scored by)."""
    rewards = [s.reward for s in spans if s.reward is not None]
    return rewards[-1] if rewards else None


def _tool_calls(raw: Any) -> list[dict[str, Any]]:
    calls = []
    for call in raw if isinstance(raw, list) else []:
        if not isinstance(call, dict):
            continue
        nested = call.get("function")
        function: dict[str, Any] = nested if isinstance(nested, dict) else call
        name, arguments = function.get("name"), function.get("arguments", function.get("args", {}))
        if not isinstance(name, str):
            continue
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        function_call = {"name": name, "arguments": arguments}
        calls.append({"id": str(call.get("id") or ""), "type": "function", "function": function_call})
    return calls


def normalize(messages: Any) -> list[Message]:
    """OpenAI chat messages (role, content, tool_calls, tool_call_id) out of a span's recorded messages."""
    out: list[Message] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            continue
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        clean: Message = {"role": message["role"], "content": content if isinstance(content, str) else ""}
        calls = _tool_calls(message.get("tool_calls"))
        if calls:
            clean["tool_calls"] = calls
        if isinstance(message.get("tool_call_id"), str):
            clean["tool_call_id"] = message["tool_call_id"]
        out.append(clean)
    return out


def llm_calls(spans: Sequence[Span]) -> list[tuple[list[Message], list[Message]]]:
    """Each recorded model call as (input messages, output messages), in call order.

    A call recorded twice (the agent's client span and the proxy's record) appears twice; callers pick by length.
    """
    calls = []
    for span in sorted(spans, key=lambda s: (s.start_time, s.sequence_id)):
        if span.kind != "llm":
            continue
        inputs = normalize(span.attributes.get(semconv.GEN_AI_INPUT_MESSAGES))
        if inputs:
            calls.append((inputs, normalize(span.attributes.get(semconv.GEN_AI_OUTPUT_MESSAGES))))
    return calls


def task_conversation(spans: Sequence[Span]) -> list[Message] | None:
    """The rollout's own conversation: its question (the last user turn of its first model call) and everything
    after it in its last model call, final answer included. System prompt and worked examples are left out."""
    calls = llm_calls(spans)
    if not calls:
        return None
    first = min(calls, key=lambda c: len(c[0]))[0]
    last_in, last_out = max(calls, key=lambda c: len(c[0]))
    question = next((m["content"] for m in reversed(first) if m["role"] == "user"), None)
    full = [*last_in, *last_out[:1]]
    starts = [i for i, m in enumerate(full) if m["role"] == "user" and m["content"] == question]
    if question is None or not starts:
        return None
    return full[starts[-1] :]


def _template_literals(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return [template]
    literals = [text.strip() for text, *_ in parsed if text.strip()]
    return [t for t in literals if len(t) >= 8] or literals


def resource_seen(name: str, resource: Resource, spans: Sequence[Span]) -> bool:
    """Whether the rollout's spans show it used resource ``name``: named in ``agl.resources.names`` (as the
    adapters record), or its text (a prompt's literal text, an example's question) in a model call's messages."""
    for span in spans:
        names = span.attributes.get(semconv.RESOURCE_NAMES)
        if isinstance(names, list) and name in names:
            return True
    if isinstance(resource, PromptTemplate):
        needles = _template_literals(resource.template)
    elif isinstance(resource, ToolConfig):
        needles = [m["content"] for m in example_questions(resource.config.get("examples"))]
    else:
        return False
    if not needles:
        return False
    texts = [m["content"] for inputs, _ in llm_calls(spans) for m in inputs]
    return any(needle in text for needle in needles for text in texts)


def example_questions(examples: Any) -> list[Message]:
    """The first user message of each worked example."""
    out = []
    for example in examples if isinstance(examples, list) else []:
        messages = normalize(example.get("messages") if isinstance(example, dict) else None)
        first = next((m for m in messages if m["role"] == "user" and m["content"]), None)
        if first is not None:
            out.append(first)
    return out


def render(messages: Sequence[Message], limit: int = 1500) -> str:
    """A conversation as plain text for the optimizer model."""
    lines = []
    for message in messages:
        text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            text += f" [calls {call['function']['name']}({call['function']['arguments']})]"
        lines.append(f"{message['role']}: {text.strip()}")
    out = "\n".join(lines)
    return out if len(out) <= limit else out[: limit - 20] + " … (truncated)"
