"""``agl.TrainingContext``: one agent run recorded as one rollout attempt."""

from __future__ import annotations

import contextvars
import functools
import inspect
import itertools
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

from agent_lightning import semconv
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.instrumentation.spans import ActiveSpan, _current_span
from agent_lightning.instrumentation.tracer import Tracer, get_tracer
from agent_lightning.store.base import LightningStore
from agent_lightning.types import (
    LLM,
    AttemptedRollout,
    ResourcesSnapshot,
    Reward,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    Span,
    new_trace_id,
)
from agent_lightning.types.rollouts import new_id

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

ROLLOUT_ENV = "AGL_ROLLOUT_ID"
ATTEMPT_ENV = "AGL_ATTEMPT_ID"
PARENT_SPAN_ENV = "AGL_PARENT_SPAN_ID"
JOINED_SEQUENCE_BASE = 2_000_000
"""Spans of a script that joined a runner's attempt count from here, apart from the runner's own."""

_current: contextvars.ContextVar[TrainingContext | None] = contextvars.ContextVar("agl_context", default=None)
_open_lock = threading.Lock()
_open_roots: list[TrainingContext] = []


def current_context() -> TrainingContext | None:
    """The TrainingContext spans go to from here.

    Inside the ``with`` block (and tasks/threads started with copied contexts)
    it is that context. In a thread that did not inherit it (a framework's
    worker thread), the single open context of the process is used; with
    several open at once, there is no safe guess and ``None`` is returned.
    """
    context = _current.get()
    if context is not None and context.is_open:
        return context
    with _open_lock:
        if len(_open_roots) == 1:
            return _open_roots[0]
    return None


def propagate(func: F) -> F:
    """Wrap ``func`` to run in the caller's context (spans keep their parents in a new thread)."""
    snapshot = contextvars.copy_context()

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return snapshot.copy().run(func, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class TrainingContext:
    """Record one agent run as a rollout attempt in the store.

    >>> with agl.TrainingContext(task_id="math_solver") as ctx:
    ...     with agl.span("agent_step") as step:
    ...         result = agent.run("What is 25 * 17?")
    ...     agl.emit_reward(1.0, span_id=step.id)

    Outside a runner, entering creates a running rollout with ``task_type=task_id``.
    Under a runner (or inside another TrainingContext) it joins that attempt
    and records itself as an ``agent`` span. On exit, pending spans are
    flushed and the attempt is completed: ``failed`` if the block raised.
    Usable as ``with``, ``async with``, and as a decorator.
    """

    def __init__(
        self,
        task_id: str | None = None,
        *,
        input: Any = None,
        mode: RolloutMode = "train",
        store: LightningStore | str | None = None,
        rollout: AttemptedRollout | None = None,
        config: RolloutConfig | None = None,
        metadata: Mapping[str, Any] | None = None,
        agent_name: str | None = None,
        instrument: bool = True,
        flush_timeout: float = 30.0,
    ) -> None:
        self.task_id = task_id or (rollout.rollout.task_type if rollout is not None else "default")
        self.input = input
        self.mode: RolloutMode = mode
        self._store_arg = store
        self._given = rollout
        self._config = config or RolloutConfig()
        self._metadata = dict(metadata or {})
        self.agent_name = agent_name
        self._instrument = instrument
        self._flush_timeout = flush_timeout
        self.tracer: Tracer | None = None
        self.attempted: AttemptedRollout | None = None
        self.resources: ResourcesSnapshot | None = None
        self.trace_id = new_trace_id()
        self.root_span_id: str | None = None
        self.rewards: list[Reward] = []
        self.spans_emitted = 0
        self.is_open = False
        self._parent: TrainingContext | None = None
        self._root: ActiveSpan | None = None
        self._sequence = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._token: contextvars.Token[TrainingContext | None] | None = None
        self._span_token: contextvars.Token[ActiveSpan | None] | None = None
        self._detached_reason: str | None = None
        self._hook: Any = None
        self._owns_attempt = True
        self._parent_span_id: str | None = None

    # ------------------------------------------------------------------ identity
    @property
    def rollout_id(self) -> str:
        if self._parent is not None:
            return self._parent.rollout_id
        return self.attempted.rollout_id if self.attempted else self._fallback_ids[0]

    @property
    def attempt_id(self) -> str:
        if self._parent is not None:
            return self._parent.attempt_id
        return self.attempted.attempt_id if self.attempted else self._fallback_ids[1]

    @functools.cached_property
    def _fallback_ids(self) -> tuple[str, str]:
        return new_id("ro-detached"), new_id("at-detached")

    @property
    def store(self) -> LightningStore:
        assert self.tracer is not None, "the TrainingContext is not open"
        return self.tracer.store

    @property
    def final_reward(self) -> float | None:
        """The last reward emitted in this context (what trajectory building uses by default)."""
        return self.rewards[-1].total if self.rewards else None

    def llm(self, name: str | None = None) -> LLM:
        """The LLM resource ``name`` (default: the only one), with its endpoint routed to this attempt."""
        if self.resources is None:
            raise LookupError("this rollout has no resources; add an LLM resource to the store first")
        llms = {k: v for k, v in self.resources.resources.items() if isinstance(v, LLM)}
        if name is None:
            if len(llms) != 1:
                raise LookupError(f"say which LLM resource to use; this snapshot has {sorted(llms) or 'none'}")
            name = next(iter(llms))
        if name not in llms:
            raise LookupError(f"no LLM resource named {name!r}; this snapshot has {sorted(llms)}")
        base = llms[name]
        return base.model_copy(update={"endpoint": base.base_url(self.rollout_id, self.attempt_id)})

    # ------------------------------------------------------------------ span plumbing
    def next_sequence_id(self) -> int:
        if self._parent is not None:
            return self._parent.next_sequence_id()
        with self._seq_lock:
            return next(self._sequence)

    def on_span_started(self, span: ActiveSpan) -> None:
        # building the record costs a validation; skip it when no plugin observes span starts
        if self._hook is not None and self._hook.agl_span_started.get_hookimpls():
            record = span.to_span()
            if record is not None:
                self._hook.agl_span_started(span=record)

    def on_span_ended(self, span: Span) -> None:
        root = self._parent or self
        root.spans_emitted += 1
        if root._hook is not None:
            root._hook.agl_span_ended(span=span)
        if root.tracer is not None and root._detached_reason is None:
            root.tracer.emitter.emit(span)

    def on_reward(self, reward: Reward, span: Span) -> None:
        root = self._parent or self
        root.rewards.append(reward)
        if self is not root:
            self.rewards.append(reward)
        if root._hook is not None:
            root._hook.agl_reward_emitted(reward=reward, span=span)

    # ------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        if self.is_open:
            raise RuntimeError("a TrainingContext cannot be entered twice; create a new one")
        outer = _current.get()
        if self._given is None and outer is not None and outer.is_open:
            self._open_nested(outer)
            return
        from agent_lightning import plugins

        self._hook = plugins.hook()
        if isinstance(self._store_arg, str):
            from agent_lightning.store import open_store

            self.tracer = get_tracer(open_store(self._store_arg))
        else:
            self.tracer = get_tracer(self._store_arg)
        if self._given is None and os.environ.get(ROLLOUT_ENV) and os.environ.get(ATTEMPT_ENV):
            self._join_from_environment()
        if self._given is not None:
            self.attempted = self._given
        elif self.attempted is not None:
            pass  # joined the runner's attempt through the environment
        else:
            request = RolloutRequest(
                input=self.input,
                task_type=self.task_id,
                mode=self.mode,
                config=self._config,
                metadata={**self._metadata, "task_id": self.task_id},
            )
            try:
                self.attempted = self.tracer.call(self.tracer.store.start_rollout(request), timeout=10)
            except Exception as exc:
                self._detached_reason = f"could not start a rollout in {self.tracer.store.url}: {exc!r}"
                logger.error("agent-lightning: %s; the agent runs but nothing is recorded", self._detached_reason)
        if self.attempted is not None and self._owns_attempt:
            rollout = self.attempted.rollout
            self.tracer.keep_alive(rollout.rollout_id, self.attempted.attempt_id, rollout.config.lease_seconds)
        if self.attempted is not None:
            self.resources = self._load_resources(self.attempted.rollout.resources_id)
        self.is_open = True
        with _open_lock:
            _open_roots.append(self)
        self._token = _current.set(self)
        if self._instrument:
            adapters.auto_instrument()
        attributes: dict[str, Any] = {
            semconv.GEN_AI_OPERATION_NAME: "invoke_agent",
            semconv.ROLLOUT_ID: self.rollout_id,
            semconv.ATTEMPT_ID: self.attempt_id,
        }
        if self.resources is not None:
            attributes[semconv.RESOURCES_ID] = self.resources.resources_id
        if self.agent_name:
            attributes[semconv.AGENT_NAME] = self.agent_name
        self._root = ActiveSpan(self, self.task_id, "agent", attributes, self._parent_span_id)
        self.root_span_id = self._root.id
        self._span_token = _current_span.set(self._root)
        if self.attempted is not None:
            self._hook.agl_rollout_started(rollout=self.attempted.rollout, attempt=self.attempted.attempt)

    def _join_from_environment(self) -> None:
        """Join the attempt of the runner that started this process (see ``ScriptAgent``)."""
        assert self.tracer is not None
        rollout_id, attempt_id = os.environ[ROLLOUT_ENV], os.environ[ATTEMPT_ENV]
        store = self.tracer.store
        rollout = self.tracer.call(store.get_rollout(rollout_id), timeout=10)
        attempt = next(
            a for a in self.tracer.call(store.get_attempts(rollout_id), timeout=10) if a.attempt_id == attempt_id
        )
        self.attempted = AttemptedRollout(rollout=rollout, attempt=attempt)
        self.input = rollout.input
        self._owns_attempt = False  # the runner completes it from the script's exit status
        self._parent_span_id = os.environ.get(PARENT_SPAN_ENV) or None
        self._sequence = itertools.count(JOINED_SEQUENCE_BASE)

    def _load_resources(self, resources_id: str | None) -> ResourcesSnapshot | None:
        assert self.tracer is not None
        try:
            if resources_id is not None:
                return self.tracer.call(self.tracer.store.get_resources(resources_id), timeout=10)
            return self.tracer.call(self.tracer.store.get_latest_resources(), timeout=10)
        except Exception as exc:
            logger.warning("could not load resources %s: %s", resources_id or "latest", exc)
            return None

    def _open_nested(self, outer: TrainingContext) -> None:
        self._parent = outer
        self.tracer = outer.tracer
        self.attempted = outer.attempted
        self.resources = outer.resources
        self.trace_id = outer.trace_id
        self.is_open = True
        self._token = _current.set(self)
        attributes: dict[str, Any] = {semconv.GEN_AI_OPERATION_NAME: "invoke_agent"}
        if self.agent_name:
            attributes[semconv.AGENT_NAME] = self.agent_name
        active = _current_span.get()
        self._root = ActiveSpan(outer, self.task_id, "agent", attributes, active.id if active else outer.root_span_id)
        self.root_span_id = self._root.id
        self._span_token = _current_span.set(self._root)

    def _close(self, exc: BaseException | None) -> None:
        if self._root is not None:
            if exc is not None:
                self._root.record_exception(exc)
            self._root.end()
        if self._span_token is not None:
            _reset(_current_span, self._span_token)
        if self._token is not None:
            _reset(_current, self._token)
        self.is_open = False
        if self._parent is not None:
            return
        with _open_lock:
            if self in _open_roots:
                _open_roots.remove(self)
        if self._instrument:
            adapters.auto_uninstrument()
        if self.tracer is None or self.attempted is None:
            return
        if self._owns_attempt:
            self.tracer.release(self.attempted.attempt_id)
        if not self.tracer.emitter.flush(self._flush_timeout):
            logger.error(
                "agent-lightning: spans of rollout %s were not all delivered within %.0fs; "
                "the attempt is completed anyway and the rest keep retrying",
                self.rollout_id,
                self._flush_timeout,
            )
        if not self._owns_attempt:
            return
        status: Literal["succeeded", "failed"] = "failed" if exc is not None else "succeeded"
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        try:
            self.tracer.call(self.tracer.store.complete_attempt(self.rollout_id, self.attempt_id, status, error))
        except Exception as store_exc:
            logger.error("could not complete attempt %s of rollout %s: %s", self.attempt_id, self.rollout_id, store_exc)
        if self._hook is not None:
            self._hook.agl_rollout_finished(
                rollout=self.attempted.rollout, attempt=self.attempted.attempt, status=status, error=error
            )

    def __enter__(self) -> TrainingContext:
        self._open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._close(exc)

    async def __aenter__(self) -> TrainingContext:
        # Store calls block briefly on the tracer's own loop; keep this loop responsive.
        import asyncio

        ctx = contextvars.copy_context()
        await asyncio.to_thread(ctx.run, self._open)
        # contextvars set inside the worker thread's copy must be applied here too.
        for var in (_current, _current_span):
            value = ctx.get(var)
            if value is not None:
                token = var.set(value)  # type: ignore[arg-type]
                if var is _current:
                    self._token = token  # type: ignore[assignment]
                else:
                    self._span_token = token  # type: ignore[assignment]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        import asyncio

        if self._span_token is not None:
            _reset(_current_span, self._span_token)
            self._span_token = None
        if self._token is not None:
            _reset(_current, self._token)
            self._token = None
        await asyncio.to_thread(self._close, exc)

    def __call__(self, func: F) -> F:
        """Use as a decorator: every call runs in a fresh context with the same arguments."""
        make = functools.partial(
            TrainingContext,
            self.task_id,
            input=self.input,
            mode=self.mode,
            store=self._store_arg,
            config=self._config,
            metadata=self._metadata,
            agent_name=self.agent_name,
            instrument=self._instrument,
            flush_timeout=self._flush_timeout,
        )
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with make():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with make():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<TrainingContext task_id={self.task_id!r} rollout={self.rollout_id} {state}>"


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    try:
        var.reset(token)
    except ValueError:  # token from another context (async exit in a different task)
        var.set(None)
