"""``agl.TrainingContext``: one agent run recorded as one rollout attempt."""

from __future__ import annotations

import contextvars
import functools
import itertools
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Literal, TypeVar

from agent_lightning import semconv
from agent_lightning.errors import DuplicateId, InvalidTransition
from agent_lightning.instrumentation import adapter as adapters
from agent_lightning.instrumentation.spans import ActiveSpan, _current_span, decorate
from agent_lightning.instrumentation.tracer import Tracer, get_tracer
from agent_lightning.retry import Backoff, is_permanent, retrying
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
T = TypeVar("T")

ROLLOUT_ENV = "AGL_ROLLOUT_ID"
ATTEMPT_ENV = "AGL_ATTEMPT_ID"
PARENT_SPAN_ENV = "AGL_PARENT_SPAN_ID"
ATTEMPT_TOKEN_ENV = "AGL_ATTEMPT_TOKEN"
"""The attempt's token, for a process started for that attempt (``ScriptAgent``), when the store has one."""
JOINED_SEQUENCE_BASE = 2_000_000
"""Spans of a script that joined a runner's attempt count from here, apart from the runner's own."""
OPEN_TIMEOUT = 1.0
"""Seconds entering a TrainingContext waits for the store (rollout created, resources loaded) before the agent runs."""
FLUSH_TIMEOUT = 5.0
"""Seconds exiting a TrainingContext waits for its spans and the attempt's completion to reach the store."""
RESOURCES_TIMEOUT = 10.0
"""Seconds :meth:`TrainingContext.llm` waits for resources that opening did not get in time."""
STORE_CALL_TIMEOUT = 30.0
"""The longest one background store call may take before it is treated as failed (and retried)."""
STORE_BACKOFF = Backoff(first=0.2, cap=5.0)
"""How a context retries creating and completing its rollout while the store is unreachable."""

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


class _Lifecycle:
    """The store side of one root context, run in a daemon thread so the agent never waits on the store.

    Creates the rollout (retrying while the store is unreachable; spans are held meanwhile),
    heart-beats the attempt, loads the resources, and after the context closes delivers the
    spans and completes the attempt. The tracer tracks it until it is done, so what is left at
    exit is reported.
    """

    def __init__(self, ctx: TrainingContext, tracer: Tracer, request: RolloutRequest | None) -> None:
        self.ctx, self.tracer, self.store, self.request = ctx, tracer, tracer.store, request
        self.ready = threading.Event()
        """Set once the attempt exists and the resources were loaded (or either gave up)."""
        self.done = threading.Event()
        self.closed = threading.Event()
        self.outcome: tuple[Literal["succeeded", "failed"], str | None] = ("succeeded", None)
        self.stage = "creating the rollout" if request is not None else "loading resources"
        self.last_error: str | None = None
        self._gave_up = False

    def start(self) -> None:
        self.tracer.track(self)
        threading.Thread(target=self._main, name="agl-rollout", daemon=True).start()

    def close(self, status: Literal["succeeded", "failed"], error: str | None) -> None:
        """The agent is done: deliver its spans and complete the attempt as ``status``."""
        self.outcome = (status, error)
        self.closed.set()

    def wait(self, timeout: float | None) -> bool:
        return self.done.wait(timeout)

    def describe(self) -> str:
        return f"rollout {self.ctx.rollout_id} ({self.stage}; {self.problem})"

    @property
    def problem(self) -> str:
        """The last store error, for messages."""
        return f"last error: {self.last_error}" if self.last_error else "no answer from the store yet"

    def _main(self) -> None:
        ctx = self.ctx
        try:
            if self.request is not None:
                created = self._create(self.request)
                if created is None:
                    return
                ctx._attach(created)
            attempted = ctx.attempted
            assert attempted is not None
            if ctx._owns_attempt and not self.closed.is_set():
                lease = attempted.rollout.config.lease_seconds
                self.tracer.keep_alive(attempted.rollout_id, attempted.attempt_id, lease)
            self.stage = "loading resources"
            ctx._resources = self._load_resources(attempted.rollout.resources_id)
            self.ready.set()
            self.stage = "running"
            self.closed.wait()
            self.tracer.release(attempted.attempt_id)
            self.stage = "delivering spans"
            self.tracer.emitter.flush(ctx._flush_timeout)
            if ctx._owns_attempt:
                self.stage = "completing the attempt"
                self._complete(attempted, *self.outcome)
            self.stage = "done"
        except Exception:  # a bug here must not pass silently, nor take the agent down
            logger.exception("agent-lightning: recording rollout %s failed (%s)", ctx.rollout_id, self.stage)
        finally:
            self.ready.set()
            self.done.set()
            if not self._gave_up:  # what gave up stays listed for the report at exit
                self.tracer.untrack(self)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.tracer.call(coro, timeout=STORE_CALL_TIMEOUT)

    def _note(self, exc: BaseException, *_: object) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    def _retry(self, call: Callable[[], Coroutine[Any, Any, T]], on_retry: Callable[[BaseException], None]) -> T:
        """``call()`` until the store answers, retrying transient errors until the tracer shuts down."""

        def note(exc: BaseException, pause: float) -> None:
            on_retry(exc)
            self._note(exc)

        result: T = retrying(STORE_BACKOFF, stop_event=self.tracer.stopping, before_sleep=note)(
            lambda: self._call(call())
        )
        return result

    def _create(self, request: RolloutRequest) -> AttemptedRollout | None:
        def warn_once(exc: BaseException) -> None:
            if self.last_error is None:
                logger.warning(
                    "agent-lightning: could not create rollout %s in %s yet (%s); the agent runs on, its spans "
                    "are buffered and sent once the store answers",
                    request.rollout_id,
                    self.store.url or type(self.store).__name__,
                    exc,
                )

        attempt_id = self.ctx._ids[1]
        try:
            return self._retry(lambda: self.store.start_rollout(request, attempt_id=attempt_id), warn_once)
        except DuplicateId as exc:  # an earlier try that timed out may have created it: adopt it then
            try:
                rollout = self._call(self.store.get_rollout(request.rollout_id or ""))
                attempts = self._call(self.store.get_attempts(rollout.rollout_id))
                if [a.attempt_id for a in attempts] == [attempt_id] and rollout.task_type == request.task_type:
                    return AttemptedRollout(rollout=rollout, attempt=attempts[0])
            except Exception:
                pass
            self._refuse(exc)
        except Exception as exc:
            if is_permanent(exc):
                self._refuse(exc)
            else:
                self._note(exc)
                self._gave_up = True
        return None

    def _refuse(self, exc: BaseException) -> None:
        self._note(exc)
        held = self.tracer.emitter.refuse(self.ctx._ids[1], f"{type(exc).__name__}: {exc}")
        logger.error(
            "agent-lightning: store %s refused to create rollout %s (%s); the agent runs on, but nothing of it is "
            "recorded: %d span(s) so far and every later one are counted as rejected",
            self.store.url or type(self.store).__name__,
            self.ctx.rollout_id,
            self.last_error,
            held,
        )

    def _load_resources(self, resources_id: str | None) -> ResourcesSnapshot | None:
        try:
            if resources_id is not None:
                return self._call(self.store.get_resources(resources_id))
            return self._call(self.store.get_latest_resources())
        except Exception as exc:
            self._note(exc)
            logger.warning("could not load resources %s: %s", resources_id or "latest", exc)
            return None

    def _complete(self, attempted: AttemptedRollout, status: Literal["succeeded", "failed"], error: str | None) -> None:
        rollout_id, attempt_id = attempted.rollout_id, attempted.attempt_id
        try:
            self._retry(lambda: self.store.complete_attempt(rollout_id, attempt_id, status, error), lambda _: None)
        except InvalidTransition as exc:  # the store ended it first: lease lost, timed out, or cancelled
            logger.warning("could not complete attempt %s of rollout %s as %s: %s", attempt_id, rollout_id, status, exc)
        except Exception as exc:
            if is_permanent(exc):
                logger.error("could not complete attempt %s of rollout %s: %s", attempt_id, rollout_id, exc)
            else:
                self._note(exc)
                self._gave_up = True


class TrainingContext:
    """Record one agent run as a rollout attempt in the store.

    >>> with agl.TrainingContext(task_id="math_solver") as ctx:
    ...     with agl.span("agent_step") as step:
    ...         result = agent.run("What is 25 * 17?")
    ...     agl.emit_reward(1.0, span_id=step.id)

    Outside a runner, entering creates a running rollout with ``task_type=task_id``;
    it gets one attempt (``max_attempts=1`` unless ``config`` says otherwise), since
    no runner would retry it: a block that raises leaves it ``failed``.
    Under a runner (or inside another TrainingContext) it joins that attempt
    and records itself as an ``agent`` span. On exit, pending spans are
    flushed and the attempt is completed: ``failed`` if the block raised.
    Usable as ``with``, ``async with``, and as a decorator.

    The store never stalls the agent for long. Entering waits at most
    ``open_timeout`` seconds for the store to create the rollout; if it has not
    answered by then, the agent runs anyway: its spans are buffered (bounded)
    and sent once the rollout exists. The context chooses the rollout and attempt
    ids itself, so every span carries its final ids from the start. Exiting
    waits at most ``flush_timeout`` seconds for the spans and the attempt's
    completion; what is left continues in the background, and
    what is still undelivered at interpreter exit is logged as a warning (see
    :func:`agent_lightning.instrumentation.tracer.shutdown`).

    :param open_timeout: seconds entering waits for the store (default :data:`OPEN_TIMEOUT`).
    :param flush_timeout: seconds exiting waits for delivery (default :data:`FLUSH_TIMEOUT`).
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
        open_timeout: float = OPEN_TIMEOUT,
        flush_timeout: float = FLUSH_TIMEOUT,
    ) -> None:
        for name, value in (("open_timeout", open_timeout), ("flush_timeout", flush_timeout)):
            if not value >= 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        self.task_id = task_id or (rollout.rollout.task_type if rollout is not None else "default")
        self.input = input
        self.mode: RolloutMode = mode
        self._store_arg = store
        self._given = rollout
        self._config = config
        self._metadata = dict(metadata or {})
        self.agent_name = agent_name
        self._instrument = instrument
        self._open_timeout = open_timeout
        self._flush_timeout = flush_timeout
        self.tracer: Tracer | None = None
        self._attempted: AttemptedRollout | None = None
        self._resources: ResourcesSnapshot | None = None
        self.trace_id = new_trace_id()
        self.root_span_id: str | None = None
        self.rewards: list[Reward] = []
        self.calls_without_record = 0
        """LLM calls an adapter recorded itself, without token ids: the proxy did not answer them."""
        self.is_open = False
        self._parent: TrainingContext | None = None
        self._root: ActiveSpan | None = None
        self._sequence = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._span_ids: set[str] = set()
        self._token: contextvars.Token[TrainingContext | None] | None = None
        self._span_token: contextvars.Token[ActiveSpan | None] | None = None
        self._lifecycle: _Lifecycle | None = None
        self._lost_at_open = 0
        self._owns_attempt = True
        self._parent_span_id: str | None = None

    # ------------------------------------------------------------------ identity
    @property
    def attempted(self) -> AttemptedRollout | None:
        """The rollout and attempt recorded into; ``None`` until the store has created them."""
        return (self._parent or self)._attempted

    @property
    def resources(self) -> ResourcesSnapshot | None:
        """The resources snapshot the rollout runs with; ``None`` if there is none or the store has not answered."""
        return (self._parent or self)._resources

    @property
    def rollout_id(self) -> str:
        """The rollout's id (final from the start, even before the store has created it)."""
        root = self._parent or self
        return root._attempted.rollout_id if root._attempted else root._ids[0]

    @property
    def attempt_id(self) -> str:
        """The attempt's id (final from the start: the context chooses it when it creates the rollout)."""
        root = self._parent or self
        return root._attempted.attempt_id if root._attempted else root._ids[1]

    @functools.cached_property
    def _ids(self) -> tuple[str, str]:
        """The rollout and attempt ids this context asks the store to create."""
        return new_id("ro"), new_id("at")

    @property
    def store(self) -> LightningStore:
        """The store this context records into (only while it is or was open)."""
        assert self.tracer is not None, "the TrainingContext is not open"
        return self.tracer.store

    @property
    def final_reward(self) -> float | None:
        """The last reward emitted in this context (what trajectory building uses by default)."""
        return self.rewards[-1].total if self.rewards else None

    def attempt_token(self) -> str | None:
        """The token the store handed out for this attempt (an ``http://`` store's), or ``None``.

        It lets whoever holds it write spans and rewards to this attempt only (see ``agent_lightning_http.auth``).
        """
        root = self._parent or self
        tokens = getattr(root.store, "attempt_token", None)
        token = tokens(self.rollout_id, self.attempt_id) if callable(tokens) else None
        return token if isinstance(token, str) else None

    def llm(self, name: str | None = None) -> LLM:
        """The LLM resource ``name`` (default: the only one), with its endpoint routed to this attempt.

        If opening did not get the resources in time, waits up to :data:`RESOURCES_TIMEOUT` seconds for them.
        """
        root = self._parent or self
        if root.resources is None and root._lifecycle is not None:
            root._lifecycle.ready.wait(RESOURCES_TIMEOUT)
        if root.attempted is None:
            lifecycle = root._lifecycle
            raise LookupError(
                f"the store {root.store.url or type(root.store).__name__} has not created rollout {root.rollout_id} "
                f"({lifecycle.problem if lifecycle else 'not opened'}), so its LLM resources are unknown"
            )
        if root.resources is None or not (
            llms := {k: v for k, v in root.resources.resources.items() if isinstance(v, LLM)}
        ):
            raise LookupError(
                f"rollout {root.rollout_id} has no LLM resource: before the rollout starts, register one whose "
                "endpoint is the proxy, e.g. agl.SyncStore(store).add_resources({'main_llm': "
                "agl.LLM(endpoint='http://127.0.0.1:8080/v1', model=MODEL)}) (or `await store.add_resources(…)`), "
                "with `agl proxy --upstream URL --store STORE_URL --port 8080` in front of the model"
            )
        if name is None:
            if len(llms) != 1:
                raise LookupError(f"say which LLM resource to use (ctx.llm(NAME)); this snapshot has {sorted(llms)}")
            name = next(iter(llms))
        if name not in llms:
            raise LookupError(f"no LLM resource named {name!r}; this snapshot has {sorted(llms)}")
        base = llms[name]
        token = self.attempt_token()
        return base.model_copy(update={"endpoint": base.base_url(self.rollout_id, self.attempt_id, token=token)})

    # ------------------------------------------------------------------ span plumbing
    def next_sequence_id(self) -> int:
        """The next span's ``sequence_id`` in this attempt."""
        root = self._parent or self
        with root._seq_lock:
            return next(root._sequence)

    def knows_span(self, span_id: str) -> bool:
        """Whether ``span_id`` is a span opened in this context's attempt (by this process)."""
        root = self._parent or self
        return span_id in root._span_ids or span_id == root._parent_span_id

    def on_span_started(self, span: ActiveSpan) -> None:
        """Called by :class:`ActiveSpan` when it opens."""
        root = self._parent or self
        root._span_ids.add(span.id)

    def on_span_ended(self, span: Span) -> None:
        """Called by :class:`ActiveSpan` when it closes: queues it for the store."""
        root = self._parent or self
        if span.kind == "llm" and semconv.COMPLETION_TOKEN_IDS not in span.attributes:
            root.calls_without_record += 1  # an adapter's span for a call the proxy did not confirm
        if root.tracer is not None:
            root.tracer.emitter.emit(span)

    def on_reward(self, reward: Reward, span: Span) -> None:
        """Called by :func:`agl.emit_reward` with the reward and its span."""
        root = self._parent or self
        root.rewards.append(reward)
        if self is not root:
            self.rewards.append(reward)

    def _attach(self, attempted: AttemptedRollout) -> None:
        """The store created the attempt: send the spans held until it existed."""
        assert self.tracer is not None
        self._attempted = attempted
        self.tracer.emitter.release(attempted.attempt_id)

    # ------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        if self.is_open:
            raise RuntimeError("a TrainingContext cannot be entered twice; create a new one")
        outer = _current.get()
        if self._given is None and outer is not None and outer.is_open:
            self._open_nested(outer)
            return
        self.tracer = get_tracer(self._store_arg)
        stats = self.tracer.emitter.stats()
        self._lost_at_open = stats.dropped + stats.rejected
        request: RolloutRequest | None = None
        if self._given is not None:
            self._attempted = self._given
        elif os.environ.get(ROLLOUT_ENV) and os.environ.get(ATTEMPT_ENV):
            self._join_from_environment()
        else:
            request = RolloutRequest(
                input=self.input,
                task_type=self.task_id,
                mode=self.mode,
                config=self._config or RolloutConfig(max_attempts=1),  # no runner would retry it
                metadata={**self._metadata, "task_id": self.task_id},
                rollout_id=self._ids[0],
            )
            self.tracer.emitter.hold(self._ids[1])
        self._lifecycle = _Lifecycle(self, self.tracer, request)
        self._lifecycle.start()
        if not self._lifecycle.ready.wait(self._open_timeout):
            logger.warning(
                "agent-lightning: store %s did not answer within open_timeout=%.1fs; the agent runs now, and "
                "rollout %s is recorded once the store answers (%s)",
                self.tracer.store.url or type(self.tracer.store).__name__,
                self._open_timeout,
                self.rollout_id,
                self._lifecycle.stage,
            )
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
        self._start_root(self, attributes, self._parent_span_id)

    def _join_from_environment(self) -> None:
        """Join the attempt of the runner that started this process (see ``ScriptAgent``)."""
        assert self.tracer is not None
        rollout_id, attempt_id = os.environ[ROLLOUT_ENV], os.environ[ATTEMPT_ENV]
        store = self.tracer.store
        rollout = self.tracer.call(store.get_rollout(rollout_id), timeout=10)
        attempt = next(
            a for a in self.tracer.call(store.get_attempts(rollout_id), timeout=10) if a.attempt_id == attempt_id
        )
        self._attempted = AttemptedRollout(rollout=rollout, attempt=attempt)
        self.input = rollout.input
        self._owns_attempt = False  # the runner completes it from the script's exit status
        self._parent_span_id = os.environ.get(PARENT_SPAN_ENV) or None
        self._sequence = itertools.count(JOINED_SEQUENCE_BASE)

    def _open_nested(self, outer: TrainingContext) -> None:
        self._parent = outer
        self.tracer = outer.tracer
        self.trace_id = outer.trace_id
        self.is_open = True
        self._token = _current.set(self)
        active = _current_span.get()
        self._start_root(
            outer, {semconv.GEN_AI_OPERATION_NAME: "invoke_agent"}, active.id if active else outer.root_span_id
        )

    def _start_root(self, owner: TrainingContext, attributes: dict[str, Any], parent_id: str | None) -> None:
        """Open the context's own ``agent`` span (recorded into ``owner``'s attempt) and make it current."""
        if self.agent_name:
            attributes[semconv.AGENT_NAME] = self.agent_name
        self._root = ActiveSpan(owner, self.task_id, "agent", attributes, parent_id)
        self.root_span_id = self._root.id
        self._span_token = _current_span.set(self._root)

    def _close(self, exc: BaseException | None) -> None:
        if self._root is not None:
            if exc is not None:
                self._root.record_exception(exc)
            if self._parent is None:  # what the store answered after opening
                self._root.set_attribute(semconv.ATTEMPT_ID, self.attempt_id)
                if self.resources is not None:
                    self._root.set_attribute(semconv.RESOURCES_ID, self.resources.resources_id)
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
        lifecycle, tracer = self._lifecycle, self.tracer
        if lifecycle is None or tracer is None:
            return
        lifecycle.close(
            "failed" if exc is not None else "succeeded", None if exc is None else f"{type(exc).__name__}: {exc}"
        )
        finished = lifecycle.wait(self._flush_timeout)
        stats = tracer.emitter.stats()
        store = tracer.emitter.store_name
        if not finished:
            logger.warning(
                "agent-lightning: rollout %s is not fully recorded in %s after flush_timeout=%.1fs (%s; %s). "
                "%d span(s) of this store are pending (%d held until the rollout exists) and retried in the "
                "background; whatever is still undelivered at exit is reported then. Check that the store is "
                "reachable, or pass a longer flush_timeout to wait for it",
                self.rollout_id,
                store,
                self._flush_timeout,
                lifecycle.stage,
                lifecycle.problem
                if lifecycle.last_error or not stats.last_error
                else f"last error: {stats.last_error}",
                stats.pending,
                stats.held,
            )
        if self.calls_without_record:
            logger.warning(
                "agent-lightning: %d LLM call(s) of rollout %s did not go through the proxy, so they have no token "
                "ids and cannot be trained on; point the client's base_url at ctx.llm().endpoint",
                self.calls_without_record,
                self.rollout_id,
            )
        lost = stats.dropped + stats.rejected - self._lost_at_open
        if lost > 0:
            logger.warning(
                "agent-lightning: %d span(s) sent to %s while rollout %s ran were not stored (dropped=%d for a full "
                "buffer, rejected=%d as invalid, in total; last error: %s)",
                lost,
                store,
                self.rollout_id,
                stats.dropped,
                stats.rejected,
                stats.last_error,
            )

    def __enter__(self) -> TrainingContext:
        self._open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._close(exc)

    async def __aenter__(self) -> TrainingContext:
        # Opening waits briefly for the store; keep this loop responsive.
        import asyncio

        await asyncio.to_thread(self._open)  # runs in a copy of this context: set its variables here too
        self._token = _current.set(self)
        self._span_token = _current_span.set(self._root)
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
            open_timeout=self._open_timeout,
            flush_timeout=self._flush_timeout,
        )
        return decorate(func, make)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<TrainingContext task_id={self.task_id!r} rollout={self.rollout_id} {state}>"


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    try:
        var.reset(token)
    except ValueError:  # token from another context (async exit in a different task)
        var.set(None)
