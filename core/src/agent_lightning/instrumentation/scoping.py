"""Agent and resource scoping shared by the framework adapters.

A trainer can optimize one agent ("only the router") or one resource (one prompt
template, one policy) because the adapters tag spans with ``gen_ai.agent.name`` and
``agl.resources.names``. The resources a call used are found by matching it against the
rollout's resources snapshot: an LLM resource by model name (or by its endpoint's host),
a prompt template by its text, with ``{placeholders}`` matching anything, appearing in
the call's messages.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from agent_lightning import semconv
from agent_lightning.instrumentation.context import TrainingContext, current_context
from agent_lightning.instrumentation.spans import ActiveSpan, current_span
from agent_lightning.types import LLM, PromptTemplate

RESOURCES_VERSION = semconv.RESOURCES_VERSION

_MIN_LITERAL = 8
"""A template needs this many literal characters to be recognised (``"{question}"`` alone matches anything)."""


@functools.lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern[str] | None:
    parts: list[str] = []
    literal = 0
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return None
    for text, field, _spec, _conversion in parsed:
        parts.append(re.escape(text))
        literal += len(text.strip())
        if field is not None:
            parts.append("(?:.*?)")
    if literal < _MIN_LITERAL:
        return None
    return re.compile("".join(parts), re.DOTALL)


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).netloc or None
    except ValueError:
        return None


def resource_names(
    context: TrainingContext | None,
    *,
    model: str | None = None,
    base_url: str | None = None,
    texts: Iterable[str] = (),
) -> list[str]:
    """Names of the resources in ``context``'s snapshot that a model call used.

    ``model`` / ``base_url`` identify the LLM resource; ``texts`` are the call's message
    contents, searched for each prompt template.
    """
    snapshot = context.resources if context is not None else None
    if snapshot is None:
        return []
    llms = {name: r for name, r in snapshot.resources.items() if isinstance(r, LLM)}
    names = [name for name, r in llms.items() if model and r.model == model]
    host = _host(base_url)
    by_host = [name for name, r in llms.items() if host and _host(r.endpoint) == host]
    if not names and len(by_host) == 1:
        names = by_host
    text_list = [t for t in texts if isinstance(t, str) and t]
    for name, resource in snapshot.resources.items():
        pattern = _template_pattern(resource.template) if isinstance(resource, PromptTemplate) else None
        if pattern is not None and any(pattern.search(t) for t in text_list):
            names.append(name)
    return names


def message_texts(messages: Any) -> list[str]:
    """The text contents of OpenAI-style messages (dicts or objects), for template matching."""
    out: list[str] = []
    if isinstance(messages, str):
        return [messages]
    if not isinstance(messages, (list, tuple)):
        return out
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else getattr(part, "text", None)
                if isinstance(text, str):
                    out.append(text)
    return out


def inherited_agent_name(parent: ActiveSpan | None = None) -> str | None:
    """The agent a new span belongs to: the parent's (default: current span's) ``gen_ai.agent.name``."""
    span = parent if parent is not None else current_span()
    if span is not None:
        value = span.attributes.get(semconv.AGENT_NAME)
        if isinstance(value, str):
            return value
    context = span.context if span is not None and span.context is not None else current_context()
    return context.agent_name if context is not None else None


def scope_attributes(
    context: TrainingContext | None,
    *,
    agent: str | None = None,
    model: str | None = None,
    base_url: str | None = None,
    texts: Iterable[str] = (),
) -> dict[str, Any]:
    """``gen_ai.agent.name``, ``agl.resources.names``, ``agl.resources.id`` and ``agl.resources.version`` for a
    span (only those known)."""
    attributes: dict[str, Any] = {}
    if agent:
        attributes[semconv.AGENT_NAME] = agent
    names = resource_names(context, model=model, base_url=base_url, texts=texts)
    if names:
        attributes[semconv.RESOURCE_NAMES] = names
        assert context is not None and context.resources is not None
        attributes[semconv.RESOURCES_ID] = context.resources.resources_id
        attributes[RESOURCES_VERSION] = context.resources.version
    return attributes
