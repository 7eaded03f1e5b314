"""Wrappers around AutoGen methods: each records one span and makes it current while the method runs.

Async generators (``on_messages_stream``, ``run_stream``, ``create_stream``) get their span
made current only while one of their steps runs, so it never leaks into the consumer.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

from agent_lightning import semconv
from agent_lightning.instrumentation.adapter import warn_unless_active
from agent_lightning.instrumentation.context import current_context
from agent_lightning.instrumentation.jsonable import bounded, jsonable
from agent_lightning.instrumentation.scoping import inherited_agent_name, scope_attributes
from agent_lightning.instrumentation.spans import ActiveSpan, current_span, start_span

from agent_lightning_autogen import messages as convert

logger = logging.getLogger(__name__)

ADAPTER_NAME = "autogen"
# The adapter's own attributes are named ``agl.autogen.*`` (``agl.*`` is the project's one namespace).
OPENAI_ADAPTER_NEEDED = (
    "an AutoGen OpenAI model call while the 'openai' adapter is off: the call is recorded twice (AutoGen's span "
    "without token ids, and the proxy's record outside the span tree); switch both on (AGL_ADAPTERS=autogen,openai)"
)
enabled = threading.Event()
"""Checked on every call, so wrappers that outlive :meth:`uninstrument` in some reference do nothing."""
_turn: contextvars.ContextVar[int | None] = contextvars.ContextVar("agl_autogen_turn", default=None)
"""The agent (``id()``) whose turn is being recorded here: its ``on_messages`` → ``on_messages_stream`` is one turn."""


def _active() -> bool:
    return enabled.is_set() and current_context() is not None


def _safely(what: str, func: Callable[..., Any], *args: Any) -> Any:
    try:
        return func(*args)
    except Exception:
        logger.exception("agent-lightning-autogen: could not record %s", what)
        return None


async def _drive(
    agen: AsyncGenerator[Any, None],
    span: ActiveSpan,
    on_item: Callable[[ActiveSpan, Any], None],
    turn: int | None = None,
) -> AsyncGenerator[Any, None]:
    """Re-yield ``agen``'s items with ``span`` current during each step; end the span with the stream."""
    try:
        while True:
            span.activate()
            token = _turn.set(turn) if turn is not None else None
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                break
            finally:
                if token is not None:
                    _turn.reset(token)
                span.deactivate()
            _safely("a streamed item", on_item, span, item)
            yield item
    except GeneratorExit:
        raise
    except BaseException as exc:
        span.record_exception(exc)
        raise
    finally:
        try:
            await agen.aclose()
        finally:
            span.end()


# ---------------------------------------------------------------------- agents
def _agent_span(agent: Any, messages: Any) -> ActiveSpan:
    name = str(getattr(agent, "name", type(agent).__name__))
    attributes: dict[str, Any] = {
        semconv.ADAPTER: ADAPTER_NAME,
        semconv.GEN_AI_OPERATION_NAME: "invoke_agent",
        "agl.autogen.agent.type": type(agent).__name__,
        semconv.GEN_AI_INPUT_MESSAGES: [convert.chat_message(m) for m in messages or []],
    }
    attributes.update(scope_attributes(current_context(), agent=name))
    description = getattr(agent, "description", None)
    if isinstance(description, str):
        attributes["gen_ai.agent.description"] = description
    return start_span(f"invoke_agent {name}", "agent", attributes)


def _record_response(span: ActiveSpan, item: Any) -> None:
    if type(item).__name__ != "Response":
        return
    chat = getattr(item, "chat_message", None)
    if chat is not None:
        span.set_attribute(semconv.GEN_AI_OUTPUT_MESSAGES, [convert.chat_message(chat)])
    inner = getattr(item, "inner_messages", None)
    if inner:
        span.set_attribute("agl.autogen.inner_messages", [type(m).__name__ for m in inner])


def wrap_on_messages(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def on_messages(self: Any, messages: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active() or _turn.get() == id(self):
            return await original(self, messages, *args, **kwargs)
        span = _agent_span(self, messages)
        token = _turn.set(id(self))
        span.activate()
        try:
            response = await original(self, messages, *args, **kwargs)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        else:
            _safely("an agent response", _record_response, span, response)
            return response
        finally:
            span.deactivate()
            _turn.reset(token)
            span.end()

    on_messages.__agl_original__ = original  # type: ignore[attr-defined]
    return on_messages


def wrap_on_messages_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def on_messages_stream(self: Any, messages: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        if not _active() or _turn.get() == id(self):
            return original(self, messages, *args, **kwargs)  # type: ignore[no-any-return]
        span = _agent_span(self, messages)
        return _drive(original(self, messages, *args, **kwargs), span, _record_response, id(self))

    on_messages_stream.__agl_original__ = original  # type: ignore[attr-defined]
    return on_messages_stream


# ---------------------------------------------------------------------- teams
def _task_messages(task: Any) -> list[Any]:
    if task is None:
        return []
    if isinstance(task, str):
        return [{"role": "user", "content": task}]
    if isinstance(task, (list, tuple)):
        return [convert.chat_message(m) for m in task]
    return [convert.chat_message(task)]


def _record_task_result(span: ActiveSpan, item: Any) -> None:
    if type(item).__name__ != "TaskResult":
        return
    stop = getattr(item, "stop_reason", None)
    if stop is not None:
        span.set_attribute("agl.autogen.stop_reason", str(stop))
    result_messages = list(getattr(item, "messages", None) or [])
    span.set_attribute("agl.autogen.messages", len(result_messages))
    if result_messages:
        span.set_attribute(semconv.GEN_AI_OUTPUT_MESSAGES, [convert.chat_message(result_messages[-1])])


def wrap_team_run_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_stream(self: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        if not _active():
            return original(self, *args, **kwargs)  # type: ignore[no-any-return]
        name = str(getattr(self, "name", None) or type(self).__name__)
        attributes: dict[str, Any] = {
            semconv.ADAPTER: ADAPTER_NAME,
            semconv.GEN_AI_OPERATION_NAME: "invoke_agent",
            semconv.AGENT_NAME: name,
            "agl.autogen.team.type": type(self).__name__,
            "agl.autogen.team.participants": [str(p) for p in getattr(self, "_participant_names", [])],
            semconv.GEN_AI_INPUT_MESSAGES: _task_messages(kwargs.get("task")),
        }
        span = start_span(f"invoke_agent {name}", "agent", attributes)
        return _drive(original(self, *args, **kwargs), span, _record_task_result)

    run_stream.__agl_original__ = original  # type: ignore[attr-defined]
    return run_stream


def wrap_select_speaker(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def select_speaker(self: Any, thread: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active():
            return await original(self, thread, *args, **kwargs)
        name = str(getattr(self, "_name", None) or type(self).__name__)
        attributes = {
            semconv.ADAPTER: ADAPTER_NAME,
            semconv.GEN_AI_OPERATION_NAME: "invoke_agent",
            semconv.AGENT_NAME: name,
            "agl.autogen.manager.type": type(self).__name__,
            "agl.autogen.participants": [str(p) for p in getattr(self, "_participant_names", [])],
        }
        with start_span(f"select_speaker {name}", "agent", attributes) as span:
            selected = await original(self, thread, *args, **kwargs)
            span.set_attribute("agl.autogen.selected_speakers", [selected] if isinstance(selected, str) else selected)
            return selected

    select_speaker.__agl_original__ = original  # type: ignore[attr-defined]
    return select_speaker


# ---------------------------------------------------------------------- model clients
def _model_name(client: Any) -> str | None:
    for attribute in ("_create_args", "_raw_config"):
        config = getattr(client, attribute, None)
        if isinstance(config, dict) and isinstance(config.get("model"), str):
            return config["model"]
    return None


def _model_span(client: Any, messages: Any, kwargs: dict[str, Any]) -> ActiveSpan:
    model = _model_name(client)
    converted = convert.llm_messages(messages or [])
    attributes: dict[str, Any] = {
        semconv.ADAPTER: ADAPTER_NAME,
        semconv.GEN_AI_OPERATION_NAME: "chat",
        "agl.autogen.model_client": type(client).__name__,
        semconv.GEN_AI_INPUT_MESSAGES: jsonable(converted),
    }
    if "OpenAI" in type(client).__name__:
        attributes[semconv.GEN_AI_SYSTEM] = attributes[semconv.GEN_AI_PROVIDER_NAME] = "openai"
        warn_unless_active("openai", OPENAI_ADAPTER_NEEDED)
    if model:
        attributes[semconv.GEN_AI_REQUEST_MODEL] = model
    tools = kwargs.get("tools")
    if tools:
        attributes[semconv.GEN_AI_TOOL_DEFINITIONS] = convert.tool_schemas(tools)
    create_args = getattr(client, "_create_args", None) or {}
    for key, name in (
        ("temperature", semconv.GEN_AI_REQUEST_TEMPERATURE),
        ("top_p", semconv.GEN_AI_REQUEST_TOP_P),
        ("max_tokens", semconv.GEN_AI_REQUEST_MAX_TOKENS),
    ):
        if isinstance(create_args, dict) and create_args.get(key) is not None:
            attributes[name] = jsonable(create_args[key])
    base_url = getattr(getattr(client, "_client", None), "base_url", None)
    attributes.update(
        scope_attributes(
            current_context(),
            agent=inherited_agent_name(),
            model=model,
            base_url=str(base_url) if base_url is not None else None,
            texts=convert.texts(converted),
        )
    )
    return start_span(f"chat {model or 'unknown'}", "llm", attributes)


def _record_create_result(span: ActiveSpan, result: Any) -> None:
    if type(result).__name__ != "CreateResult":
        return
    span.set_attribute(semconv.GEN_AI_OUTPUT_MESSAGES, [convert.create_result(result)])
    reason = getattr(result, "finish_reason", None)
    if reason is not None:
        span.set_attribute(semconv.GEN_AI_RESPONSE_FINISH_REASONS, [str(reason)])
    usage = getattr(result, "usage", None)
    if usage is not None:
        span.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, int(getattr(usage, "prompt_tokens", 0) or 0))
        span.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, int(getattr(usage, "completion_tokens", 0) or 0))
    if getattr(result, "cached", False):
        span.set_attribute("agl.autogen.cached", True)


def _inside_model_call() -> bool:
    """A caching/wrapping client calling an inner client: the outer call's span covers both."""
    span = current_span()
    return span is not None and span.kind == "llm" and span.attributes.get(semconv.ADAPTER) == ADAPTER_NAME


def wrap_create(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(self: Any, messages: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active() or _inside_model_call():
            return await original(self, messages, *args, **kwargs)
        span = _model_span(self, messages, kwargs)
        span.activate()
        try:
            result = await original(self, messages, *args, **kwargs)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        else:
            _safely("a model result", _record_create_result, span, result)
            return result
        finally:
            span.deactivate()
            span.end()

    create.__agl_original__ = original  # type: ignore[attr-defined]
    return create


def wrap_create_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def create_stream(self: Any, messages: Any, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        if not _active() or _inside_model_call():
            return original(self, messages, *args, **kwargs)  # type: ignore[no-any-return]
        span = _model_span(self, messages, kwargs)
        span.set_attribute("gen_ai.request.stream", True)
        return _drive(original(self, messages, *args, **kwargs), span, _record_create_result)

    create_stream.__agl_original__ = original  # type: ignore[attr-defined]
    return create_stream


# ---------------------------------------------------------------------- tools
def _tool_span(tool: Any, args: Any, call_id: str | None) -> ActiveSpan:
    name = str(getattr(tool, "name", type(tool).__name__))
    attributes: dict[str, Any] = {
        semconv.ADAPTER: ADAPTER_NAME,
        semconv.GEN_AI_OPERATION_NAME: "execute_tool",
        semconv.GEN_AI_TOOL_NAME: name,
        semconv.GEN_AI_TOOL_CALL_ARGUMENTS: bounded(dict(args) if args is not None else {}),
    }
    if call_id:
        attributes[semconv.GEN_AI_TOOL_CALL_ID] = call_id
    agent = inherited_agent_name()
    if agent:
        attributes[semconv.AGENT_NAME] = agent
    return start_span(f"execute_tool {name}", "tool", attributes)


def _tool_result(tool: Any, value: Any) -> Any:
    try:
        return bounded(tool.return_value_as_string(value))
    except Exception:
        return bounded(value)


def wrap_run_json(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def run_json(self: Any, args: Any, cancellation_token: Any, *rest: Any, **kwargs: Any) -> Any:
        if not _active():
            return await original(self, args, cancellation_token, *rest, **kwargs)
        call_id = kwargs.get("call_id", rest[0] if rest else None)
        span = _tool_span(self, args, call_id)
        span.activate()
        try:
            value = await original(self, args, cancellation_token, *rest, **kwargs)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        else:
            span.set_attribute(semconv.GEN_AI_TOOL_CALL_RESULT, _tool_result(self, value))
            return value
        finally:
            span.deactivate()
            span.end()

    run_json.__agl_original__ = original  # type: ignore[attr-defined]
    return run_json


def wrap_run_json_stream(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_json_stream(
        self: Any, args: Any, cancellation_token: Any, *rest: Any, **kwargs: Any
    ) -> AsyncGenerator[Any, None]:
        if not _active():
            return original(self, args, cancellation_token, *rest, **kwargs)  # type: ignore[no-any-return]
        span = _tool_span(self, args, kwargs.get("call_id", rest[0] if rest else None))
        tool = self

        def on_item(active: ActiveSpan, item: Any) -> None:
            active.set_attribute(semconv.GEN_AI_TOOL_CALL_RESULT, _tool_result(tool, item))

        return _drive(original(self, args, cancellation_token, *rest, **kwargs), span, on_item)

    run_json_stream.__agl_original__ = original  # type: ignore[attr-defined]
    return run_json_stream
