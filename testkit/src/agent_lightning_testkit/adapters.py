"""Test helpers shared by the adapters' test suites: span trees, and a scripted model behind the proxy.

Imported only by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_lightning import semconv
from agent_lightning.store.base import LightningStore
from agent_lightning.types import LLM, Span


class SpanTree:
    def __init__(self, spans: Sequence[Span]) -> None:
        self.spans = list(spans)
        self.by_id = {s.span_id: s for s in self.spans}
        roots = [s for s in self.spans if s.parent_id is None]
        assert len(roots) == 1, f"expected one root span, got {[s.name for s in roots]}\n{self.render()}"
        self.root = roots[0]
        orphans = [s.name for s in self.spans if s.parent_id is not None and s.parent_id not in self.by_id]
        assert not orphans, f"spans whose parent is missing: {orphans}\n{self.render()}"

    def children(self, span: Span, *, kind: str | None = None, name: str | None = None) -> list[Span]:
        out = [s for s in self.spans if s.parent_id == span.span_id]
        out = [s for s in out if (kind is None or s.kind == kind) and (name is None or s.name == name)]
        return sorted(out, key=lambda s: (s.start_time, s.sequence_id))

    def child(self, span: Span, *, kind: str | None = None, name: str | None = None) -> Span:
        found = self.children(span, kind=kind, name=name)
        assert len(found) == 1, f"expected one {kind or ''} child {name or ''} of {span.name}, got {len(found)}\n" + (
            self.render()
        )
        return found[0]

    def proxy_record(self, llm_span: Span) -> Span:
        """``llm_span``, checked to be the one record of its call: the proxy's, with the token ids."""
        assert llm_span.attributes.get(semconv.RECORDED_BY) == "proxy", f"not the proxy's record:\n{self.render()}"
        assert llm_span.attributes.get(semconv.PROMPT_TOKEN_IDS), f"proxy record without prompt ids: {llm_span}"
        assert llm_span.attributes.get(semconv.COMPLETION_TOKEN_IDS), f"record without completion ids: {llm_span}"
        assert not self.children(llm_span, kind="llm"), f"a second span for the call:\n{self.render()}"
        return llm_span

    def assert_one_span_per_call(self, calls: int, *, adapter: str | None = None) -> list[Span]:
        """Every ``llm`` span is the proxy's record of one call, ``calls`` of them, each once (by name too).

        With ``adapter``, each carries that adapter's name (what the adapter knew was joined onto it).
        """
        llms = sorted(self.of_kind("llm"), key=lambda s: (s.start_time, s.sequence_id))
        assert len(llms) == calls, f"{len(llms)} llm spans for {calls} calls:\n{self.render()}"
        for span in llms:
            self.proxy_record(span)
            operation, model = (
                span.attributes.get(semconv.GEN_AI_OPERATION_NAME),
                span.attributes.get(semconv.GEN_AI_REQUEST_MODEL),
            )
            assert span.name == f"{operation} {model}", span.name
            if adapter is not None:
                assert span.attributes.get(semconv.ADAPTER) == adapter, f"{span.name}: {span.attributes}"
        return llms

    def of_kind(self, kind: str) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]

    def client_llm_spans(self, adapter: str) -> list[Span]:
        return sorted(
            (s for s in self.spans if s.kind == "llm" and s.attributes.get(semconv.ADAPTER) == adapter),
            key=lambda s: (s.start_time, s.sequence_id),
        )

    def render(self) -> str:
        lines: list[str] = []

        def walk(span: Span, depth: int) -> None:
            agent = span.attributes.get(semconv.AGENT_NAME)
            lines.append(f"{'  ' * depth}{span.name} [{span.kind}] {span.status.code} agent={agent}")
            for child in self.children(span):
                walk(child, depth + 1)

        for root in [s for s in self.spans if s.parent_id is None]:
            walk(root, 0)
        return "\n".join(lines)


# ---------------------------------------------------------------------- adapter state between tests
def reset_adapters() -> None:
    """Put the adapters back as a fresh process has them: none switched on, none switched off.

    ``clear_cache()`` switches active adapters off and forgets the registrations, but an
    ``agl.uninstrument(name)`` stays in force; switching every available adapter on explicitly lifts it.
    """
    from agent_lightning.instrumentation import adapter as adapters

    for name, adapter in adapters.adapters().items():
        if adapter.is_available():
            adapters.instrument(name)
    adapters.clear_cache()


@contextlib.contextmanager
def fresh_adapters() -> Iterator[None]:
    """:func:`reset_adapters` before and after the block (the adapters' suites wrap every test in it)."""
    reset_adapters()
    try:
        yield
    finally:
        reset_adapters()


# ---------------------------------------------------------------------- a scripted model behind the proxy
MODEL = "scripted-policy"
_QUESTION = re.compile(r"What is (.+?)\?")


def calculator_script(call: Any) -> Any:
    """A :class:`~agent_lightning_testkit.scripted_llm.ScriptedLLM` script for a calculator agent.

    Asked "What is 25 * 17?", it calls ``calculator(expression="25 * 17")``; given the tool's
    result, it answers "The answer is <result>.". Deterministic per question, so concurrent
    rollouts each get their own answers.
    """
    from agent_lightning_testkit.scripted_llm import Reply, ToolCall

    last = call.messages[-1] if call.messages else {}
    if last.get("role") == "tool":
        return f"The answer is {last.get('content')}."
    match = _QUESTION.search(call.last_user_text)
    if match is None:
        return "I can only do arithmetic."
    return Reply(tool_calls=[ToolCall("calculator", {"expression": match.group(1)})])


@dataclass
class ProxyEnv:
    """A store, the project's proxy (an LLM resource ``policy`` points at it) and the scripted upstream."""

    store: LightningStore
    proxy: Any
    upstream: Any
    model: str

    @property
    def proxy_url(self) -> str:
        """The proxy's root URL (no ``/v1``)."""
        return str(self.proxy.url).removesuffix("/v1")

    def spans(self, rollout_id: str) -> list[Span]:
        """The rollout's spans (the proxy stores each record before answering; this flushes the rest)."""
        self.proxy.flush()
        return asyncio.run(self.store.query_spans(rollout_id))

    @property
    def upstream_calls(self) -> int:
        """How many requests the scripted upstream has answered."""
        return len(self.upstream.calls)

    def tree(self, rollout_id: str) -> SpanTree:
        return SpanTree(self.spans(rollout_id))


@contextlib.contextmanager
def scripted_proxy(
    script: Any = calculator_script,
    *,
    resources: Mapping[str, Any] | None = None,
    model: str = MODEL,
) -> Iterator[ProxyEnv]:
    """Start a ScriptedLLM and an LLMProxy in front of it, with an in-memory store holding the resources."""
    from agent_lightning.store.memory import InMemoryLightningStore
    from agent_lightning_proxy import LLMProxy

    from agent_lightning_testkit.scripted_llm import ScriptedLLM

    store = InMemoryLightningStore()
    with ScriptedLLM(script) as upstream, LLMProxy(store, upstream.url) as proxy:
        snapshot = {"policy": LLM(endpoint=proxy.url, model=model, api_key="unused"), **(resources or {})}
        asyncio.run(store.add_resources(snapshot))
        yield ProxyEnv(store, proxy, upstream, model)
