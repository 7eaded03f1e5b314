"""The LightningStore contract every backend implements.

A store holds rollouts (tasks) and their attempts, the spans agents emit,
versioned resources, and per-group subscriptions to finished rollouts. The
contract is asynchronous; :class:`~agent_lightning.store.sync.SyncStore`
wraps any store for synchronous scripts.

Rules every backend follows (the conformance suite in
:mod:`agent_lightning.testing` checks each one):

* Ids that do not exist raise :class:`~agent_lightning.errors.NotFound`.
* Invalid input raises ``ValueError`` (or a subclass) naming the field, and
  stores nothing: ``add_spans`` and ``enqueue_rollouts`` are all-or-nothing.
* Status changes follow :mod:`agent_lightning.types.rollouts`' state machine.
* A rollout is claimed by at most one worker at a time; leases that expire are
  reaped (attempt ``lost``/``timeout``), and the rollout is retried until it
  has had ``config.max_attempts`` attempts, then marked ``failed``.
* ``add_spans`` is durable when it returns. ``add_span`` writes behind
  (:mod:`agent_lightning.store.span_buffer`): it checks the span and its attempt
  at once, raising what ``add_spans`` would, then queues it; queued spans are
  written in batches, in order, and are durable once :meth:`LightningStore.flush`
  returns. This store object's ``query_spans`` sees them at once, and its
  ``add_spans``, ``complete_attempt``, ``cancel_rollout`` and ``close`` write them
  first, so a finished rollout never misses a span its runner added and an older
  version of a span never lands after a newer one. Other processes see them
  once written (normally within milliseconds; at the latest at the next
  ``flush``). Every subclass gets this without writing any of it.
* ``add_spans`` is idempotent on ``(rollout_id, attempt_id, span_id)``: sending
  a span again (a retry) replaces it instead of duplicating it.
* Spans come back ordered by ``(attempt, sequence_id, start_time, span_id)``; rollouts by
  creation time. ``query_spans(after=last_span)`` pages through them across attempts.
* A finished rollout (``succeeded`` or ``failed``) is delivered to each
  subscription group once; a delivery that is not acknowledged within its
  visibility timeout is delivered again (at-least-once under crashes).
* Spans are validated again on ``add_spans`` (call
  :func:`~agent_lightning.store.transitions.check_spans_batch` first), so a span
  built with ``model_construct`` cannot store a NaN or a malformed id.
* Filters: ``None`` means "any"; an empty list (``kinds=[]``, ``rollout_ids=[]``)
  matches nothing. ``claim_rollout`` refuses an empty ``worker_id``.
* Objects given to or returned by a store never alias what it holds: mutating
  them afterwards changes nothing in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from agent_lightning.store.span_buffer import SpanBuffer, writing
from agent_lightning.types import (
    Attempt,
    AttemptedRollout,
    Resource,
    ResourcesSnapshot,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
    RolloutStatus,
    Span,
    SpanKind,
)
from agent_lightning.types.spans import SpanCursor

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S", bound="LightningStore")

LATEST: Literal["latest"] = "latest"
"""Pass as ``attempt_id`` to ``query_spans`` to read only the newest attempt's spans."""

DELIVERED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed"})
"""Rollout statuses that subscriptions deliver."""


def _buffer_of(store: LightningStore) -> SpanBuffer | None:
    """The store object's ``add_span`` queue, if it has one yet."""
    buffer: SpanBuffer | None = store.__dict__.get("_span_buffer")
    return buffer


def _writes_spans_first(
    method: Callable[Concatenate[_S, _P], Awaitable[_R]],
) -> Callable[Concatenate[_S, _P], Awaitable[_R]]:
    """``method``, run after the spans ``add_span`` queued on the store object are written."""

    @functools.wraps(method)
    async def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        buffer = _buffer_of(self)
        if buffer is not None and buffer.pending and not writing():  # the buffer's own write must not wait for it
            await buffer.flush()
        return await method(self, *args, **kwargs)

    wrapper.__agl_writes_spans_first__ = True  # type: ignore[attr-defined]
    return wrapper


def _notes_attempt(
    method: Callable[Concatenate[_S, _P], Awaitable[AttemptedRollout | None]],
) -> Callable[Concatenate[_S, _P], Awaitable[AttemptedRollout | None]]:
    """``method``, noting the attempt it returns as one ``add_span`` need not check."""

    @functools.wraps(method)
    async def wrapper(self: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> AttemptedRollout | None:
        started = await method(self, *args, **kwargs)
        if started is not None and type(self).add_span is LightningStore.add_span:
            self._spans_buffer().remember_attempt(started.rollout_id, started.attempt_id)
        return started

    wrapper.__agl_notes_attempts__ = True  # type: ignore[attr-defined]
    return wrapper


async def _close_after_spans(store: LightningStore, close: Callable[[], Awaitable[None]]) -> None:
    buffer: SpanBuffer | None = store.__dict__.pop("_span_buffer", None)  # a later add_span starts a new one
    if buffer is not None:
        error: BaseException | None = None
        if buffer.pending and not writing():
            try:
                await asyncio.wait_for(buffer.flush(), timeout=store.close_flush_timeout)
            except Exception as exc:
                error = exc
        lost = buffer.abandon()  # the writer stops: it must not write into a closed store
        if lost:
            logger.error(
                "closing %s: %d span(s) added with add_span could not be stored: %s",
                buffer.name,
                lost,
                (str(error) or type(error).__name__) if error is not None else "closed before they were written",
            )
    await close()


class LightningStore(ABC):
    """Abstract base class of all stores. Subclasses implement the abstract methods."""

    url: str = ""
    """The URL the store was opened from (for messages and ``agl plugins``)."""

    close_flush_timeout: float = 10.0
    """How long ``close`` waits for spans ``add_span`` queued to be written."""

    span_retry_seconds: float = 30.0
    """How long spans ``add_span`` queued are retried while the store is unavailable before
    ``flush`` raises :class:`~agent_lightning.errors.StoreUnavailable` (they stay queued). Read when
    the store object's first span is added."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("start_rollout", "claim_rollout"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__agl_notes_attempts__", False):
                setattr(cls, name, _notes_attempt(method))
        for name in ("add_spans", "query_spans", "complete_attempt", "cancel_rollout"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "__agl_writes_spans_first__", False):
                setattr(cls, name, _writes_spans_first(method))
        close = cls.__dict__.get("close")
        if close is not None and not getattr(close, "__agl_writes_spans_first__", False):

            @functools.wraps(close)
            async def close_after_spans(self: LightningStore) -> None:
                await _close_after_spans(self, functools.partial(close, self))

            close_after_spans.__agl_writes_spans_first__ = True  # type: ignore[attr-defined]
            cls.close = close_after_spans  # type: ignore[method-assign]

    # ------------------------------------------------------------------ rollouts
    @abstractmethod
    async def enqueue_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        """Queue many rollouts atomically; returns them in request order."""

    async def enqueue_rollout(
        self,
        input: Any = None,
        *,
        task_type: str = "default",
        mode: RolloutMode = "train",
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: Mapping[str, Any] | None = None,
        rollout_id: str | None = None,
    ) -> Rollout:
        """Queue one rollout for a worker to claim."""
        request = RolloutRequest(
            input=input,
            task_type=task_type,
            mode=mode,
            resources_id=resources_id,
            config=config or RolloutConfig(),
            metadata=dict(metadata or {}),
            rollout_id=rollout_id,
        )
        (rollout,) = await self.enqueue_rollouts([request])
        return rollout

    @abstractmethod
    async def start_rollout(self, request: RolloutRequest, worker_id: str | None = None) -> AttemptedRollout:
        """Create a rollout that is already running, with its first attempt (no queue).

        Used when an agent runs outside a runner, e.g. a script opening
        ``agl.TrainingContext`` on its own.
        """

    @abstractmethod
    async def claim_rollout(
        self,
        worker_id: str,
        *,
        task_types: Sequence[str] | None = None,
        modes: Sequence[RolloutMode] | None = None,
    ) -> AttemptedRollout | None:
        """Claim the oldest claimable rollout (optionally of given task types/modes).

        Starts a new attempt owned by ``worker_id`` with a lease of
        ``config.lease_seconds``; returns ``None`` when nothing is claimable.
        Expired leases are reaped first.
        """

    @abstractmethod
    async def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        """Extend the attempt's lease. Raises :class:`~agent_lightning.errors.LeaseLost` if it is over."""

    @abstractmethod
    async def complete_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: Literal["succeeded", "failed"],
        error: str | None = None,
    ) -> Rollout:
        """Finish an attempt; a failed one requeues the rollout while attempts remain."""

    @abstractmethod
    async def cancel_rollout(self, rollout_id: str) -> Rollout:
        """Cancel a rollout that has not finished; its running attempt becomes ``failed``."""

    @abstractmethod
    async def reap_expired(self, now: float | None = None) -> list[Attempt]:
        """Mark attempts whose lease or timeout has passed as ``lost``/``timeout``; returns them.

        Reaps by the store's own clock. ``now`` (a finite UNIX time) reaps as if it were that time:
        for tests in the same process only; the store server refuses it (see :mod:`agent_lightning.limits`).
        """

    @abstractmethod
    async def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout by id."""

    @abstractmethod
    async def query_rollouts(
        self,
        *,
        status: Sequence[RolloutStatus] | None = None,
        task_types: Sequence[str] | None = None,
        mode: RolloutMode | None = None,
        rollout_ids: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Rollout]:
        """Rollouts matching every given filter, oldest first, paginated by ``limit``/``offset``."""

    @abstractmethod
    async def get_attempts(self, rollout_id: str) -> list[Attempt]:
        """The attempts of a rollout, first first."""

    async def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None = None, poll_interval: float = 0.05
    ) -> list[Rollout]:
        """Wait until the rollouts are terminal or ``timeout`` passes; returns the terminal ones.

        Backends with a notification mechanism override this polling version.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = list(dict.fromkeys(rollout_ids))
        done: dict[str, Rollout] = {}
        while True:
            for rollout_id in list(pending):
                rollout = await self.get_rollout(rollout_id)
                if rollout.is_terminal:
                    done[rollout_id] = rollout
                    pending.remove(rollout_id)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return [done[r] for r in rollout_ids if r in done]
            await asyncio.sleep(poll_interval)

    # ------------------------------------------------------------------ spans
    @abstractmethod
    async def add_spans(self, spans: Sequence[Span]) -> int:
        """Store spans atomically (all or none); returns how many were written."""

    async def add_span(self, span: Span) -> Span:
        """Store one span, written behind: checked now, written with the spans added after it.

        Raises at once what ``add_spans`` would for this span (an invalid field, an unknown
        rollout or attempt). The span is durable once :meth:`flush` returns; reads of this store
        object see it at once. See :mod:`agent_lightning.store.span_buffer`.
        """
        return await self._spans_buffer().add(span)

    def _spans_buffer(self) -> SpanBuffer:
        buffer = _buffer_of(self)
        if buffer is None:
            buffer = self.__dict__.setdefault(
                "_span_buffer",
                SpanBuffer(self.add_spans, name=self.url or type(self).__name__, retry_seconds=self.span_retry_seconds),
            )
        return buffer

    async def _settle_spans(self) -> None:
        """For a backend about to delete data (``purge``): store what ``add_span`` queued, forget known attempts."""
        buffer = _buffer_of(self)
        if buffer is not None:
            with contextlib.suppress(Exception):  # it is about to be deleted anyway
                await buffer.flush()
            buffer.forget_attempts()

    @property
    def unflushed_spans(self) -> int:
        """Spans ``add_span`` accepted on this store object that are not stored yet."""
        buffer = _buffer_of(self)
        return 0 if buffer is None else buffer.pending

    async def flush(self) -> None:
        """Return once every span ``add_span`` accepted is stored; raises what kept one out
        (:class:`~agent_lightning.errors.StoreUnavailable` after retrying for a while, or the
        store's refusal of a span)."""
        buffer = _buffer_of(self)
        if buffer is not None:
            await buffer.flush()

    @abstractmethod
    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        kinds: Sequence[SpanKind] | None = None,
        names: Sequence[str] | None = None,
        after_sequence_id: int | None = None,
        limit: int | None = None,
        after: Span | SpanCursor | None = None,
    ) -> list[Span]:
        """Spans of a rollout ordered by ``(attempt, sequence_id, start_time, span_id)``.

        ``attempt_id=None`` reads every attempt; :data:`LATEST` only the newest.
        ``after_sequence_id`` keeps spans whose ``sequence_id`` is larger, in every attempt read
        (sequence ids start again in each attempt). To page through spans across attempts, pass the
        last span of a page (or its :class:`~agent_lightning.types.spans.SpanCursor`) as ``after``:
        the next page starts right after it. A cursor naming an attempt the rollout does not have
        raises :class:`~agent_lightning.errors.NotFound`.
        """

    # ------------------------------------------------------------------ resources
    @abstractmethod
    async def add_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        """Store a new immutable snapshot; it becomes the latest."""

    @abstractmethod
    async def get_resources(self, resources_id: str) -> ResourcesSnapshot:
        """One snapshot by id."""

    @abstractmethod
    async def get_latest_resources(self) -> ResourcesSnapshot | None:
        """The newest snapshot, or ``None`` when there is none."""

    # ------------------------------------------------------------------ publish–subscribe
    @abstractmethod
    async def subscribe(
        self, group: str, *, task_types: Sequence[str] | None = None, from_beginning: bool = False
    ) -> None:
        """Create (idempotently) a subscription group to finished rollouts of ``task_types``.

        A new group receives rollouts that finish from now on, or every finished
        rollout when ``from_beginning``. Subscribing again with other task types
        is an error.
        """

    @abstractmethod
    async def pull_completed(
        self,
        group: str,
        *,
        consumer: str = "default",
        max_count: int = 100,
        timeout: float = 0.0,
        visibility_timeout: float = 300.0,
    ) -> list[Rollout]:
        """Take up to ``max_count`` undelivered finished rollouts for ``group``.

        Waits up to ``timeout`` seconds for at least one. Each rollout goes to
        one consumer of the group; call :meth:`ack_completed` once it is
        processed, or it is delivered again after ``visibility_timeout``.
        """

    @abstractmethod
    async def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        """Acknowledge deliveries; returns how many were pending."""

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Write what ``add_span`` queued, then release connections (subclasses release theirs)."""
        await _close_after_spans(self, _nothing)

    async def __aenter__(self) -> LightningStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _nothing() -> None:
    return None
