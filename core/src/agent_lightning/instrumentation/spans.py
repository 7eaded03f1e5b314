"""Spans and rewards: ``agl.span``, ``agl.emit_reward``, and tool-call / message helpers."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from agent_lightning import semconv
from agent_lightning.types import Reward, RewardValue, Span, SpanKind, SpanStatus, new_span_id
from agent_lightning.types.spans import AttributeValue, _check_json_finite, span_from_fields

_UNSET = SpanStatus()
_OK = SpanStatus(code="ok")  # frozen models: one instance serves every span

if TYPE_CHECKING:
    from agent_lightning.instrumentation.context import TrainingContext

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_current_span: contextvars.ContextVar[ActiveSpan | None] = contextvars.ContextVar("agl_current_span", default=None)
_warned_no_context = threading.Event()


class ActiveSpan:
    """A span being recorded. ``id`` is its span id; ``end()`` sends it to the store."""

    def __init__(
        self,
        context: TrainingContext | None,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
        parent_id: str | None,
        start_time: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"span name must be a non-empty string, got {name!r}")
        self.context = context
        self.id = new_span_id()
        self.name = name
        self.kind: SpanKind = kind
        self.parent_id = parent_id
        self.start_time = time.time() if start_time is None else start_time
        self.end_time: float | None = None
        self.status = _UNSET
        self.attributes: dict[str, AttributeValue] = {}
        self.handed_over = False
        """Set by :meth:`hand_over`: another recorder stored this span's record."""
        self.sequence_id = context.next_sequence_id() if context is not None else 0
        self._token: contextvars.Token[ActiveSpan | None] | None = None
        self._lock = threading.Lock()
        if attributes:
            self.set_attributes(attributes)
        if context is not None:
            context.on_span_started(self)

    @property
    def span_id(self) -> str:
        """The span's id (same as :attr:`id`)."""
        return self.id

    @property
    def is_recording(self) -> bool:
        """``False`` outside a TrainingContext: the span goes nowhere."""
        return self.context is not None and self.end_time is None

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute; values must be JSON (str, number, bool, None, list, dict)."""
        if isinstance(value, tuple):
            value = list(value)
        _check_json_finite(value, key)
        with self._lock:
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set several attributes (each checked as in :meth:`set_attribute`)."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_status(self, code: str, message: str | None = None) -> None:
        """Set the OpenTelemetry status: ``code`` is ``"unset"``, ``"ok"`` or ``"error"``; ``ValueError`` otherwise."""
        self.status = SpanStatus.model_validate({"code": code, "message": message})

    def record_exception(self, exc: BaseException) -> None:
        """Mark the span failed with the exception's type, message and traceback."""
        self.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
        self.set_attribute("exception.message", str(exc))
        self.set_attribute(
            "exception.stacktrace", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]
        )
        self.set_status("error", f"{type(exc).__name__}: {exc}")

    def to_span(self) -> Span | None:
        """The span as a record, or ``None`` when not recorded (no context)."""
        if self.context is None:
            return None
        with self._lock:
            attributes = dict(self.attributes)
        return span_from_fields(
            {
                "rollout_id": self.context.rollout_id,
                "attempt_id": self.context.attempt_id,
                "sequence_id": self.sequence_id,
                "trace_id": self.context.trace_id,
                "span_id": self.id,
                "parent_id": self.parent_id,
                "name": self.name,
                "kind": self.kind,
                "attributes": attributes,
                "start_time": self.start_time,
                "end_time": self.end_time,
                "status": self.status,
            }
        )

    def hand_over(self) -> None:
        """Another recorder (the proxy, for a model call) stored this span's record under its id.

        The span stays usable as a parent and as a reward target; closing it emits nothing.
        """
        self.handed_over = True

    def end(self, end_time: float | None = None) -> Span | None:
        """Close the span and queue it for the store (idempotent; nothing is queued after :meth:`hand_over`)."""
        if self.end_time is not None:
            return None
        self.end_time = max(self.start_time, time.time() if end_time is None else end_time)
        if self.handed_over:
            return None
        if self.status.code == "unset":
            self.status = _OK
        record = self.to_span()
        if record is not None and self.context is not None:
            self.context.on_span_ended(record)
        return record

    # -- use as a context manager -------------------------------------------------------------
    def activate(self) -> None:
        """Make this the current span (the parent of spans started after it in this context)."""
        self._token = _current_span.set(self)

    def deactivate(self) -> None:
        """Undo :meth:`activate`: the span that was current before is current again."""
        if self._token is not None:
            try:
                _current_span.reset(self._token)
            except ValueError:  # closed in another context (e.g. a generator finalised elsewhere)
                _current_span.set(None)
            self._token = None

    def __enter__(self) -> ActiveSpan:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.record_exception(exc)
        self.deactivate()
        self.end()

    async def __aenter__(self) -> ActiveSpan:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<ActiveSpan {self.name!r} id={self.id} kind={self.kind}>"


def current_span() -> ActiveSpan | None:
    """The innermost open span of this thread/task, if any."""
    span = _current_span.get()
    return span if span is not None and span.end_time is None else None


def set_current_span(span: ActiveSpan | None) -> ActiveSpan | None:
    """Make ``span`` the current span of this thread/task and return the previous one.

    For callback-style adapters whose start and end events arrive as separate calls:
    set the span on start, and on end put the previous span back if this one is still current.
    """
    previous = _current_span.get()
    _current_span.set(span)
    return previous


def _context_and_parent(parent_id: str | None) -> tuple[TrainingContext | None, str | None]:
    from agent_lightning.instrumentation.context import current_context

    context = current_context()
    if context is None:
        if not _warned_no_context.is_set():
            _warned_no_context.set()
            logger.warning(
                "agl.span used outside agl.TrainingContext: nothing is recorded. "
                "Wrap the agent run in `with agl.TrainingContext(task_id=...):`"
            )
        return None, parent_id
    if parent_id is None:
        active = current_span()
        parent_id = active.id if active is not None and active.context is context else context.root_span_id
    return context, parent_id


def start_span(
    name: str,
    kind: SpanKind = "custom",
    attributes: Mapping[str, Any] | None = None,
    *,
    parent_id: str | None = None,
    start_time: float | None = None,
) -> ActiveSpan:
    """Open a span without making it current; call ``.end()`` to close it (for adapters' callbacks)."""
    context, parent = _context_and_parent(parent_id)
    return ActiveSpan(context, name, kind, attributes, parent, start_time)


class _SpanScope:
    """What ``agl.span(...)`` returns: a context manager (sync or async) and a decorator."""

    def __init__(self, name: str, kind: SpanKind, attributes: dict[str, Any]) -> None:
        self._name, self._kind, self._attributes = name, kind, attributes
        self._span: ActiveSpan | None = None

    def __enter__(self) -> ActiveSpan:
        self._span = start_span(self._name, self._kind, self._attributes)
        return self._span.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        assert self._span is not None
        self._span.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> ActiveSpan:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        return decorate(func, functools.partial(_SpanScope, self._name, self._kind, self._attributes))


def decorate(func: F, scope: Callable[[], Any]) -> F:
    """``func`` with every call run inside a fresh ``scope()`` (``async with`` for a coroutine function)."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            async with scope():
                return await func(*args, **kwargs)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scope():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def span(name: str, kind: SpanKind = "agent", **attributes: Any) -> _SpanScope:
    """Record a span around a block: ``with agl.span("agent_step") as step: …``; ``step.id`` is its id.

    Nested spans get the enclosing span as parent, across asyncio tasks too.
    Also works as ``async with`` and as a decorator.
    """
    return _SpanScope(name, kind, attributes)


def emit_reward(value: RewardValue, span_id: str | None = None, *, name: str = "reward") -> Span:
    """Record a reward for ``span_id`` (default: the current span; none open: the whole attempt).

    ``value`` is a finite float or a dict of named finite floats; anything else
    raises ``ValueError``. ``span_id`` must be the id of a span opened in the
    current context's attempt (``step.id``), else ``ValueError`` names it.
    Returns the reward span.
    """
    from agent_lightning.instrumentation.context import current_context

    context = current_context()
    if context is None:
        raise RuntimeError(
            "agl.emit_reward was called outside agl.TrainingContext, so the reward has no rollout to go to. "
            "Call it inside `with agl.TrainingContext(task_id=...):`"
        )
    if span_id is not None and not context.knows_span(span_id):
        raise ValueError(
            f"agl.emit_reward(span_id={span_id!r}): no span with this id was opened in rollout "
            f"{context.rollout_id}; pass the id of a span of this run (`step.id` of `with agl.span(...) as step`), "
            "or no span_id to reward the current span or the whole attempt"
        )
    if span_id is None:
        active = current_span()
        if active is not None and active.context is context and active.id != context.root_span_id:
            span_id = active.id
    reward = Reward(value=value, span_id=span_id)
    handle = ActiveSpan(context, name, "reward", reward.to_attributes(), span_id or context.root_span_id)
    record = handle.end(handle.start_time)
    assert record is not None
    context.on_reward(reward, record)
    return record


@contextlib.contextmanager
def tool_call(name: str, arguments: Any = None, *, call_id: str | None = None) -> Iterator[ActiveSpan]:
    """Record a tool invocation; set its result with ``span.set_attribute(semconv.GEN_AI_TOOL_CALL_RESULT, …)``.

    >>> with agl.tool_call("calculator", {"expression": "25*17"}) as call:
    ...     call.set_attribute("gen_ai.tool.call.result", "425")
    """
    attributes: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: "execute_tool",
        semconv.GEN_AI_TOOL_NAME: name,
    }
    if arguments is not None:
        attributes[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] = arguments
    if call_id is not None:
        attributes[semconv.GEN_AI_TOOL_CALL_ID] = call_id
    with start_span(f"execute_tool {name}", "tool", attributes) as handle:
        yield handle


@contextlib.asynccontextmanager
async def atool_call(name: str, arguments: Any = None, *, call_id: str | None = None) -> AsyncIterator[ActiveSpan]:
    """Async form of :func:`tool_call`."""
    with tool_call(name, arguments, call_id=call_id) as handle:
        yield handle


def emit_message(role: str, content: Any, **attributes: Any) -> Span | None:
    """Record one message of a conversation (user input, agent output, …) as a ``message`` span."""
    handle = start_span(
        f"message {role}",
        "message",
        {semconv.MESSAGE_ROLE: role, semconv.MESSAGE_CONTENT: content, **attributes},
    )
    return handle.end(handle.start_time)
