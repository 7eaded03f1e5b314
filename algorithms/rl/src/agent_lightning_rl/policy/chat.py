"""Chat prompts (the tokenizer's chat template, with tools) and tool calls parsed from model output.

Tool-call format: a template that takes ``tools`` itself (Qwen, Llama 3, Hermes…) renders them its own way. A template
that does not (SmolLM2's, the ChatML fallback) gets the Hermes/Qwen convention: the tool signatures go into the system
message inside ``<tools></tools>``, the model answers with ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``
blocks, earlier assistant tool calls are rendered the same way, and tool results become user turns wrapped in
``<tool_response></tool_response>``. Parsing accepts those blocks (a JSON object or a list of them per block), or a
reply that is nothing but such a JSON object naming one of the offered tools.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import lru_cache
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Used when the tokenizer has no chat template of its own."""

TOOLS_SYSTEM_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML "
    "tags. You may call one or more functions to assist with the user query. Don't make assumptions about what "
    "values to plug into functions.\n<tools>\n{tools}\n</tools>\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class ChatFormatError(ValueError):
    """The messages or tools cannot be rendered into a prompt; the message says which part."""


@lru_cache(maxsize=16)
def template_takes_tools(template: str) -> bool:
    """Whether a Jinja chat template reads a ``tools`` variable."""
    import jinja2
    import jinja2.meta

    try:
        ast = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return "tools" in template
    return "tools" in jinja2.meta.find_undeclared_variables(ast)


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ChatFormatError(f"{where}: only text content is supported, got a {kind!r} part")
        return "".join(parts)
    raise ChatFormatError(f"{where}: content must be a string or a list of text parts")


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return raw if raw is not None else {}


def _tool_schemas(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    schemas = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or "function" not in tool or "name" not in tool["function"]:
            raise ChatFormatError(f"tools[{i}] must look like {{'type': 'function', 'function': {{'name': …}}}}")
        schemas.append(tool)
    return schemas


def _native_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages → the Hugging Face chat-template convention (tool-call arguments as dicts)."""
    out = []
    for i, message in enumerate(messages):
        item = {k: v for k, v in message.items() if v is not None}
        item["content"] = _text(message.get("content"), f"messages[{i}]")
        if message.get("tool_calls"):
            item["tool_calls"] = [
                {**call, "function": {**call["function"], "arguments": _arguments(call["function"].get("arguments"))}}
                for call in message["tool_calls"]
            ]
        out.append(item)
    return out


def _hermes_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI messages → plain role/content messages with Hermes-style tool text."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        content = _text(message.get("content"), f"messages[{i}]")
        if role == "assistant" and message.get("tool_calls"):
            blocks = [
                "<tool_call>\n"
                + json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"].get("arguments"))})
                + "\n</tool_call>"
                for c in message["tool_calls"]
            ]
            content = "\n".join(([content] if content else []) + blocks)
        elif role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        elif role == "developer":
            role = "system"
        out.append({"role": role, "content": content})
    if tools:
        listing = "\n".join(json.dumps(tool["function"]) for tool in tools)
        preamble = TOOLS_SYSTEM_PROMPT.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {
                "role": "system",
                "content": f"{out[0]['content']}\n\n{preamble}" if out[0]["content"] else preamble,
            }
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` (OpenAI format), ending with the assistant generation prompt (unless
    ``add_generation_prompt=False``: then ending with the last message, as for a finished conversation)."""
    if not messages:
        raise ChatFormatError("messages is empty")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatFormatError(f"messages[{i}] needs a string 'role'")
    template = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
    schemas = _tool_schemas(tools) if tools else None
    if template_takes_tools(template):
        rendered_messages, kwargs = _native_messages(messages), {"tools": schemas} if schemas else {}
    else:
        rendered_messages, kwargs = _hermes_messages(messages, schemas), {}
    try:
        return tokenizer.apply_chat_template(
            rendered_messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
    except Exception as exc:  # jinja raises its own types (TemplateError, TypeError on None content, …)
        raise ChatFormatError(
            f"the chat template could not render these messages: {type(exc).__name__}: {exc}"
        ) from exc


def _loads(text: str) -> Any:
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    return json.loads(text)


def _as_calls(value: Any) -> list[dict[str, Any]] | None:
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": item["name"],
                    "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                },
            }
        )
    return calls or None


def parse_tool_calls(text: str, tool_names: set[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """Split model output into ``(content, tool_calls)`` in OpenAI's shape; no calls found → ``(text, [])``."""
    blocks = list(_BLOCK.finditer(text))
    if blocks:
        calls: list[dict[str, Any]] = []
        for block in blocks:
            try:
                parsed = _as_calls(_loads(block.group(1)))
            except json.JSONDecodeError:
                parsed = None
            if parsed is None:
                return text, []
            calls.extend(parsed)
        rest = _BLOCK.sub("", text).strip()
        return (rest or None), calls
    try:
        parsed = _as_calls(_loads(text))
    except json.JSONDecodeError:
        return text, []
    if parsed and all(call["function"]["name"] in tool_names for call in parsed):
        return None, parsed
    return text, []
