"""The callback handler: maps LangChain run ids to spans.

Chains and LangGraph nodes become ``agent`` spans, chat models and LLMs ``llm`` spans,
tools ``tool`` spans and retrievers ``custom`` spans; a run's parent run is its span's
parent. Runs LangChain marks hidden (``langsmith:hidden``: LangGraph's channel writes and
branches) get no span; their children attach to the nearest visible ancestor.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from agent_lightning import semconv
from agent_lightning.instrumentation.adapter import warn_unless_active
from agent_lightning.instrumentation.context import TrainingContext, current_context
from agent_lightning.instrumentation.jsonable import bounded, jsonable
from agent_lightning.instrumentation.scoping import scope_attributes
from agent_lightning.instrumentation.spans import ActiveSpan, current_span, set_current_span
from agent_lightning.types import SpanKind
from langchain_core.callbacks import BaseCallbackHandler

logger = logging.getLogger(__name__)

ADAPTER_NAME = "langchain"

# The adapter's own attributes live under ``agl.langchain.*`` / ``agl.langgraph.*`` (OpenTelemetry's ``gen_ai.*`` has
# no names for them, and ``agl.*`` is the project's one namespace).
RUN_ID = "agl.langchain.run_id"
RUN_TYPE = "agl.langchain.run_type"
"""``prompt`` or ``parser`` on prompt-formatting and output-parsing steps."""
INPUTS = "agl.langchain.inputs"
OUTPUTS = "agl.langchain.outputs"
RETRIEVER_QUERY = "agl.langchain.retriever.query"
RETRIEVER_DOCUMENTS = "agl.langchain.retriever.documents"
LANGGRAPH_NODE = "agl.langgraph.node"
LANGGRAPH_STEP = "agl.langgraph.step"
LANGGRAPH_CONTROL_FLOW = "agl.langgraph.control_flow"
"""The LangGraph exception (interrupt, ``Command`` hand-off) that ended a run without it being an error."""
HIDDEN_TAG = "langsmith:hidden"
OPENAI_ADAPTER_NEEDED = (
    "a LangChain OpenAI model call while the 'openai' adapter is off: the call is recorded twice (LangChain's span "
    "without token ids, and the proxy's record outside the span tree); switch both on (AGL_ADAPTERS=langchain,openai)"
)
_MAX_RUNS = 10_000
"""Open runs kept before those of closed contexts are forgotten."""
_CONTROL_FLOW = {"GraphBubbleUp", "GraphInterrupt", "NodeInterrupt", "ParentCommand"}
"""LangGraph exceptions that steer the graph (interrupts, hand-offs) rather than report a failure."""


@dataclass
class _Run:
    span: ActiveSpan | None
    """``None`` for a hidden run."""
    visible: ActiveSpan | None
    """The span children attach to: this run's, or the nearest visible ancestor's."""
    agent: str | None
    previous: ActiveSpan | None = None


def _run_name(serialized: Mapping[str, Any] | None, kwargs: Mapping[str, Any], default: str) -> str:
    name = kwargs.get("name")
    if isinstance(name, str) and name:
        return name
    if serialized:
        if isinstance(serialized.get("name"), str) and serialized["name"]:
            return str(serialized["name"])
        ids = serialized.get("id")
        if isinstance(ids, list) and ids and isinstance(ids[-1], str):
            return ids[-1]
    return default


def _openai_messages(messages: Sequence[Any]) -> Any:
    try:
        from langchain_core.messages import convert_to_openai_messages

        return jsonable(convert_to_openai_messages(list(messages)))
    except Exception:
        return jsonable(list(messages))


def _texts(messages: Any) -> list[str]:
    out: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return out


def _is_control_flow(error: BaseException) -> bool:
    return any(cls.__name__ in _CONTROL_FLOW for cls in type(error).__mro__)


def _tool_result(output: Any) -> Any:
    content = getattr(output, "content", None)
    if content is not None and type(output).__name__.endswith("Message"):
        return bounded(content)
    return bounded(output)


class LightningCallbackHandler(BaseCallbackHandler):
    """Records LangChain runs as Agent Lightning spans of the open :class:`~agent_lightning.TrainingContext`.

    Added to every run by :class:`~agent_lightning_langchain.LangChainAdapter`; it can also
    be passed explicitly (``config={"callbacks": [LightningCallbackHandler()]}``).
    """

    run_inline = True
    """Called in the run's own thread/task, so spans nest and the current span is right."""
    raise_error = False

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict[UUID, _Run] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def _parent(self, parent_run_id: UUID | None) -> _Run | None:
        if parent_run_id is None:
            return None
        with self._lock:
            return self._runs.get(parent_run_id)

    def _agent(self, parent: _Run | None, metadata: Mapping[str, Any] | None, own: str | None) -> str | None:
        metadata = metadata or {}
        for key in ("lc_agent_name", "langgraph_node"):
            value = metadata.get(key)
            if isinstance(value, str) and value and not value.startswith("__"):
                return value
        if parent is not None and parent.agent:
            return parent.agent
        if own:
            return own
        active = current_span()
        value = active.attributes.get(semconv.AGENT_NAME) if active is not None else None
        if isinstance(value, str):
            return value
        context = current_context()
        return context.agent_name if context is not None else None

    def _start(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        tags: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
        *,
        agent_from_own_name: bool = False,
        scope: Mapping[str, Any] | None = None,
    ) -> ActiveSpan | None:
        parent = self._parent(parent_run_id)
        parent_span = parent.visible if parent is not None else None
        context: TrainingContext | None = parent_span.context if parent_span is not None else current_context()
        if context is None or not context.is_open:
            return None
        agent = self._agent(parent, metadata, name if agent_from_own_name else None)
        if tags and HIDDEN_TAG in tags:
            with self._lock:
                self._runs[run_id] = _Run(None, parent_span, agent)
            return None
        attributes = {semconv.ADAPTER: ADAPTER_NAME, RUN_ID: str(run_id), **attributes}
        attributes.update(scope_attributes(context, agent=agent, **(scope or {})))
        node = (metadata or {}).get("langgraph_node")
        if isinstance(node, str) and node == name:
            attributes[LANGGRAPH_NODE] = node
            step = (metadata or {}).get("langgraph_step")
            if isinstance(step, int):
                attributes[LANGGRAPH_STEP] = step
        if parent_span is not None:
            span = ActiveSpan(context, name, kind, attributes, parent_span.id)
        else:
            active = current_span()
            parent_id = active.id if active is not None and active.context is context else context.root_span_id
            span = ActiveSpan(context, name, kind, attributes, parent_id)
        previous = set_current_span(span)
        with self._lock:
            self._runs[run_id] = _Run(span, span, agent, previous)
            if len(self._runs) > _MAX_RUNS:
                self._forget_closed()
        return span

    def _forget_closed(self) -> None:
        """Drop runs that never ended and whose TrainingContext is closed (abandoned generators)."""
        stale = [
            run_id
            for run_id, run in self._runs.items()
            if run.visible is None or run.visible.context is None or not run.visible.context.is_open
        ]
        for run_id in stale:
            del self._runs[run_id]

    def _end(
        self,
        run_id: UUID,
        attributes: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None or run.span is None:
            return
        span = run.span
        try:
            if attributes:
                span.set_attributes(attributes)
            if error is not None:
                if _is_control_flow(error):
                    span.set_attribute(LANGGRAPH_CONTROL_FLOW, type(error).__name__)
                else:
                    span.record_exception(error)
        except Exception:
            logger.exception("agent-lightning-langchain: could not record the end of run %s", run_id)
        finally:
            span.end()
            replaced = set_current_span(run.previous)
            if replaced is not span:  # this task/thread had moved on: leave its current span alone
                set_current_span(replaced)

    def _safely(self, what: str, func: Any, *args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception:
            logger.exception("agent-lightning-langchain: could not record %s", what)

    # ------------------------------------------------------------------ chains, agents, graph nodes
    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = _run_name(serialized, kwargs, "chain")
        run_type = kwargs.get("run_type")
        attributes: dict[str, Any] = {INPUTS: bounded(inputs)}
        kind: SpanKind = "agent"
        if run_type in ("prompt", "parser"):  # prompt formatting and output parsing are steps, not agents
            kind = "custom"
            attributes[RUN_TYPE] = run_type
        else:
            attributes[semconv.GEN_AI_OPERATION_NAME] = "invoke_agent"
        self._safely(
            "a chain start",
            self._start,
            run_id,
            parent_run_id,
            name,
            kind,
            attributes,
            tags,
            metadata,
            agent_from_own_name=True,
        )

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("a chain end", self._end, run_id, {OUTPUTS: bounded(outputs)})

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("a chain error", self._end, run_id, None, error)

    # ------------------------------------------------------------------ models
    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        converted = _openai_messages(messages[0] if messages else [])
        self._safely(
            "a chat model start",
            self._model_start,
            serialized,
            converted,
            run_id,
            parent_run_id,
            tags,
            metadata,
            "chat",
            kwargs,
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        converted = [{"role": "user", "content": p} for p in prompts[:1]]
        self._safely(
            "an LLM start",
            self._model_start,
            serialized,
            converted,
            run_id,
            parent_run_id,
            tags,
            metadata,
            "text_completion",
            kwargs,
        )

    def _model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: Any,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        operation: str,
        kwargs: Mapping[str, Any],
    ) -> None:
        params: Mapping[str, Any] = kwargs.get("invocation_params") or {}
        metadata = metadata or {}
        model = params.get("model") or params.get("model_name") or metadata.get("ls_model_name")
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: operation,
            semconv.GEN_AI_INPUT_MESSAGES: messages,
        }
        provider = metadata.get("ls_provider") or params.get("_type")
        if provider == "openai":
            warn_unless_active("openai", OPENAI_ADAPTER_NEEDED)
        if isinstance(provider, str):
            attributes[semconv.GEN_AI_SYSTEM] = provider
            attributes[semconv.GEN_AI_PROVIDER_NAME] = provider
        if isinstance(model, str):
            attributes[semconv.GEN_AI_REQUEST_MODEL] = model
        for key, name in (
            ("temperature", semconv.GEN_AI_REQUEST_TEMPERATURE),
            ("top_p", semconv.GEN_AI_REQUEST_TOP_P),
            ("max_tokens", semconv.GEN_AI_REQUEST_MAX_TOKENS),
            ("max_completion_tokens", semconv.GEN_AI_REQUEST_MAX_TOKENS),
        ):
            if params.get(key) is not None:
                attributes[name] = jsonable(params[key])
        stop = params.get("stop") or params.get("stop_sequences")
        if stop:
            attributes[semconv.GEN_AI_REQUEST_STOP_SEQUENCES] = [stop] if isinstance(stop, str) else jsonable(stop)
        if params.get("tools"):
            attributes[semconv.GEN_AI_TOOL_DEFINITIONS] = jsonable(params["tools"])
        init_kwargs = (serialized or {}).get("kwargs") or {}
        base_url = next((v for k in ("openai_api_base", "base_url") if isinstance(v := init_kwargs.get(k), str)), None)
        prefix = "text_completion" if operation == "text_completion" else "chat"
        self._start(
            run_id,
            parent_run_id,
            f"{prefix} {model or _run_name(serialized, kwargs, 'model')}",
            "llm",
            attributes,
            tags,
            metadata,
            scope={"model": model if isinstance(model, str) else None, "base_url": base_url, "texts": _texts(messages)},
        )

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("an LLM end", self._end, run_id, self._llm_result(response))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("an LLM error", self._end, run_id, None, error)

    @staticmethod
    def _llm_result(response: Any) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        generations = getattr(response, "generations", None) or []
        first = list(generations[0]) if generations else []
        outputs: list[Any] = []
        reasons: list[str] = []
        for generation in first:
            message = getattr(generation, "message", None)
            if message is not None:
                outputs += _openai_messages([message])
                usage = getattr(message, "usage_metadata", None)
                if isinstance(usage, Mapping):
                    if isinstance(usage.get("input_tokens"), int):
                        attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage["input_tokens"]
                    if isinstance(usage.get("output_tokens"), int):
                        attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage["output_tokens"]
                metadata = getattr(message, "response_metadata", None) or {}
                if isinstance(metadata.get("model_name"), str):
                    attributes[semconv.GEN_AI_RESPONSE_MODEL] = metadata["model_name"]
                response_id = metadata.get("id") or getattr(message, "id", None)
                if isinstance(response_id, str):
                    attributes[semconv.GEN_AI_RESPONSE_ID] = response_id
                reason = metadata.get("finish_reason")
                if isinstance(reason, str):
                    reasons.append(reason)
            else:
                outputs.append({"role": "assistant", "content": getattr(generation, "text", "")})
            info = getattr(generation, "generation_info", None) or {}
            if isinstance(info.get("finish_reason"), str) and not reasons:
                reasons.append(info["finish_reason"])
        attributes[semconv.GEN_AI_OUTPUT_MESSAGES] = jsonable(outputs)
        if reasons:
            attributes[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
        usage = (getattr(response, "llm_output", None) or {}).get("token_usage") or {}
        if isinstance(usage, Mapping) and semconv.GEN_AI_USAGE_INPUT_TOKENS not in attributes:
            if isinstance(usage.get("prompt_tokens"), int):
                attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] = usage["prompt_tokens"]
            if isinstance(usage.get("completion_tokens"), int):
                attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = usage["completion_tokens"]
        return attributes

    # ------------------------------------------------------------------ tools
    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = _run_name(serialized, kwargs, "tool")
        arguments: Any = inputs
        if arguments is None:
            try:
                arguments = json.loads(input_str)
            except (TypeError, ValueError):
                arguments = input_str
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: "execute_tool",
            semconv.GEN_AI_TOOL_NAME: name,
            semconv.GEN_AI_TOOL_CALL_ARGUMENTS: bounded(arguments),
        }
        call_id = kwargs.get("tool_call_id")
        if isinstance(call_id, str):
            attributes[semconv.GEN_AI_TOOL_CALL_ID] = call_id
        self._safely(
            "a tool start",
            self._start,
            run_id,
            parent_run_id,
            f"execute_tool {name}",
            "tool",
            attributes,
            tags,
            metadata,
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("a tool end", self._end, run_id, {semconv.GEN_AI_TOOL_CALL_RESULT: _tool_result(output)})

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("a tool error", self._end, run_id, None, error)

    # ------------------------------------------------------------------ retrievers
    def on_retriever_start(
        self,
        serialized: dict[str, Any] | None,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = _run_name(serialized, kwargs, "retriever")
        attributes = {semconv.GEN_AI_OPERATION_NAME: "retrieve", RETRIEVER_QUERY: query}
        self._safely(
            "a retriever start",
            self._start,
            run_id,
            parent_run_id,
            f"retrieve {name}",
            "custom",
            attributes,
            tags,
            metadata,
        )

    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        docs = [
            {"page_content": getattr(d, "page_content", str(d)), "metadata": jsonable(getattr(d, "metadata", {}))}
            for d in documents
        ]
        self._safely("a retriever end", self._end, run_id, {RETRIEVER_DOCUMENTS: bounded(docs)})

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._safely("a retriever error", self._end, run_id, None, error)
