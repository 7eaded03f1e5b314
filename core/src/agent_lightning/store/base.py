"""The LightningStore contract every backend implements.

A store holds rollouts (tasks) and their attempts, the spans agents emit,
versioned resources, and per-group subscriptions to finished rollouts. The
contract is asynchronous; :class:`~agent_lightning.store.sync.SyncStore`
wraps any store for synchronous scripts.

Rules every backend follows (the conformance suite in
``agent-lightning-testkit`` checks each one):

* Ids that do not exist raise :class:`~agent_lightning.errors.NotFound`.
* Invalid input raises ``ValueError`` (or a subclass) naming the field, and
  stores nothing: ``add_spans`` and ``enqueue_rollouts`` are all-or-nothing.
* Status changes follow :mod:`agent_lightning.types.rollouts`' state machine.
* A rollout is claimed by at most one worker at a time; leases that expire are
  reaped (attempt ``lost``/``timeout``), and the rollout is retried until it
  has had ``config.max_attempts`` attempts, then marked ``failed``.
* ``claim_rollouts(worker_id, n)`` claims up to ``n`` rollouts in one call, each as
  ``claim_rollout`` would; ``complete_attempts`` completes several attempts in one call, each as
  ``complete_attempt`` would, all or nothing: one item that ``complete_attempt`` would refuse
  (unknown id, an attempt that is not running, a bad status) raises that error and none of the
  batch is stored. An attempt of the batch whose lease ran out is reaped, as ``complete_attempt``
  reaps it.
* ``add_spans`` is durable when it returns: a span is stored, or the call raised.
  ``add_span(span)`` is ``add_spans([span])``. A store does not batch or queue
  spans; the one place that batches them is the instrumentation's
  :class:`~agent_lightning.instrumentation.emitter.SpanEmitter`.
* ``start_rollout`` takes the attempt id the caller chose (``attempt_id=``), so a
  client builds spans with their final ids before the store has answered; an
  id already used by any attempt raises :class:`~agent_lightning.errors.DuplicateId`.
* ``add_spans`` is idempotent on ``(rollout_id, attempt_id, span_id)``: sending
  a span again (a retry) replaces it instead of duplicating it.
* A finished (``succeeded`` or ``failed``) attempt is immutable: ``add_spans`` refuses a new
  reward span for it and any change to a span it holds with
  :class:`~agent_lightning.errors.InvalidTransition`, storing nothing of the batch, atomically with
  the attempt's completion. A span sent again unchanged, and a new span of another kind (an LLM
  call the proxy recorded late), are accepted
  (:func:`~agent_lightning.store.transitions.finished_span_refusal`).
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
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from agent_lightning.errors import NotFound
from agent_lightning.store import transitions as tr
from agent_lightning.types import (
    Attempt,
    AttemptCompletion,
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
    Subscription,
)
from agent_lightning.types.spans import SpanCursor

logger = logging.getLogger(__name__)

LATEST: Literal["latest"] = "latest"
"""Pass as ``attempt_id`` to ``query_spans`` to read only the newest attempt's spans."""

DELIVERED_STATUSES: frozenset[str] = frozenset({"succeeded", "failed"})
"""Rollout statuses that subscriptions deliver."""


@dataclass(frozen=True)
class RolloutQuery:
    """The arguments of ``query_rollouts`` as a backend receives them (``count_rollouts`` sets the filters)."""

    status: Sequence[RolloutStatus] | None = None
    task_types: Sequence[str] | None = None
    mode: RolloutMode | None = None
    rollout_ids: Sequence[str] | None = None
    limit: int = 100
    offset: int = 0

    def matches(self, rollout: Rollout) -> bool:
        """Whether ``rollout`` passes the status, task type and mode filters."""
        return (
            (self.status is None or rollout.status in self.status)
            and (self.task_types is None or rollout.task_type in self.task_types)
            and (self.mode is None or rollout.mode == self.mode)
        )


@dataclass(frozen=True)
class SpanQuery:
    """The arguments of ``query_spans`` as a backend receives them: checked, ``after`` made a cursor."""

    rollout_id: str
    attempt_id: str | None
    kinds: Sequence[SpanKind] | None
    names: Sequence[str] | None
    after_sequence_id: int | None
    limit: int | None
    after: SpanCursor | None


class LightningStore(ABC):
    """Abstract base class of all stores. Subclasses implement the abstract methods.

    A public method that checks its arguments first (``claim_rollout``, ``complete_attempt``, the queries,
    ``pull_completed``) leaves the rest to the abstract method of the same name with a leading underscore.
    """

    url: str = ""
    """The URL the store was opened from (for messages and ``agl plugins``)."""

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
    async def start_rollout(
        self, request: RolloutRequest, worker_id: str | None = None, *, attempt_id: str | None = None
    ) -> AttemptedRollout:
        """Create a rollout that is already running, with its first attempt (no queue).

        Used when an agent runs outside a runner, e.g. a script opening
        ``agl.TrainingContext`` on its own. ``attempt_id`` names the attempt (checked by
        :func:`~agent_lightning.store.transitions.check_attempt_id`; an id any attempt already has
        raises :class:`~agent_lightning.errors.DuplicateId`); a new id by default. With
        ``request.rollout_id`` too, the caller knows both ids before the store answers.
        """

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
        tr.check_worker_id(worker_id)
        return await self._claim_rollout(worker_id, task_types, modes)

    @abstractmethod
    async def _claim_rollout(
        self, worker_id: str, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> AttemptedRollout | None: ...

    async def claim_rollouts(
        self,
        worker_id: str,
        limit: int,
        *,
        task_types: Sequence[str] | None = None,
        modes: Sequence[RolloutMode] | None = None,
    ) -> list[AttemptedRollout]:
        """Claim up to ``limit`` claimable rollouts in one call, oldest first; ``[]`` when none is claimable.

        Each is claimed as :meth:`claim_rollout` claims one (same filters, a new attempt owned by
        ``worker_id``, its lease starting now), so fewer than ``limit`` come back only when no more
        are claimable. ``limit`` is 0 to :data:`~agent_lightning.limits.MAX_BATCH`. Claim no more
        than the caller will start at once: a lease runs from the claim.
        """
        tr.check_worker_id(worker_id)
        tr.check_claim_limit(limit)
        if limit == 0:
            return []
        return await self._claim_rollouts(worker_id, limit, task_types, modes)

    async def _claim_rollouts(
        self, worker_id: str, limit: int, task_types: Sequence[str] | None, modes: Sequence[RolloutMode] | None
    ) -> list[AttemptedRollout]:
        """``_claim_rollout`` up to ``limit`` times; backends override it to claim in one transaction or script."""
        claimed: list[AttemptedRollout] = []
        while len(claimed) < limit:
            item = await self._claim_rollout(worker_id, task_types, modes)
            if item is None:
                break
            claimed.append(item)
        return claimed

    @abstractmethod
    async def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        """Extend the attempt's lease. Raises :class:`~agent_lightning.errors.LeaseLost` if it is over."""

    async def complete_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: Literal["succeeded", "failed"],
        error: str | None = None,
    ) -> Rollout:
        """Finish an attempt; a failed one requeues the rollout while attempts remain."""
        if status not in ("succeeded", "failed"):
            raise ValueError(f"status must be 'succeeded' or 'failed', got {status!r}")
        return await self._complete_attempt(rollout_id, attempt_id, status, error)

    @abstractmethod
    async def _complete_attempt(
        self, rollout_id: str, attempt_id: str, status: Literal["succeeded", "failed"], error: str | None
    ) -> Rollout: ...

    async def complete_attempts(self, completions: Sequence[AttemptCompletion]) -> list[Rollout]:
        """Finish several attempts in one call; returns their rollouts, in order.

        Each item is done as :meth:`complete_attempt` does it (a failed one requeues its rollout
        while attempts remain). All or nothing: if ``complete_attempt`` would refuse an item
        (:class:`~agent_lightning.errors.NotFound`, :class:`~agent_lightning.errors.LeaseLost` for an
        attempt that is not running, ``ValueError`` for a bad status or error text, or the same
        attempt twice), the first such item's error is raised and none of the batch is stored. An
        attempt whose lease ran out is reaped, as ``complete_attempt`` reaps it, and the batch
        raises ``LeaseLost``. At most :data:`~agent_lightning.limits.MAX_BATCH` items.
        """
        items = tr.check_completions(completions)
        if not items:
            return []
        return await self._complete_attempts(items)

    async def _complete_attempts(self, completions: list[AttemptCompletion]) -> list[Rollout]:
        """Check every item, then ``_complete_attempt`` each; backends override it to do both in one transaction.

        A change that races with it (a lease running out between the check and the write) can
        leave such a batch partly stored; every backend of this repository completes atomically.
        """
        now = time.time()
        for item in completions:  # refuse a bad item before anything of the batch is stored
            rollout = await self.get_rollout(item.rollout_id)
            attempt = await self._attempt_of(item.rollout_id, item.attempt_id)
            if attempt.status == "running" and tr.expiry_status(rollout, attempt, now) is not None:
                await self.reap_expired()  # by the store's clock, as complete_attempt would reap it
                attempt = await self._attempt_of(item.rollout_id, item.attempt_id)
            tr.require_running(attempt)
        return [await self._complete_attempt(i.rollout_id, i.attempt_id, i.status, i.error) for i in completions]

    async def _attempt_of(self, rollout_id: str, attempt_id: str) -> Attempt:
        for attempt in await self.get_attempts(rollout_id):
            if attempt.attempt_id == attempt_id:
                return attempt
        raise NotFound(f"rollout {rollout_id!r} has no attempt {attempt_id!r}")

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
        tr.check_pagination(limit, offset)
        return await self._query_rollouts(RolloutQuery(status, task_types, mode, rollout_ids, limit, offset))

    @abstractmethod
    async def _query_rollouts(self, query: RolloutQuery) -> list[Rollout]: ...

    async def count_rollouts(
        self,
        *,
        status: Sequence[RolloutStatus] | None = None,
        task_types: Sequence[str] | None = None,
        mode: RolloutMode | None = None,
    ) -> dict[str, dict[str, int]]:
        """How many rollouts match the filters, by task type then status: ``{"math": {"queuing": 3}}``.

        Only non-zero counts appear.
        """
        return await self._count_rollouts(RolloutQuery(status, task_types, mode))

    async def _count_rollouts(self, query: RolloutQuery) -> dict[str, dict[str, int]]:
        """Pages through ``_query_rollouts``; backends count natively."""
        counts: dict[str, dict[str, int]] = {}
        offset = 0
        while page := await self._query_rollouts(replace(query, limit=1000, offset=offset)):
            for rollout in page:
                per_status = counts.setdefault(rollout.task_type, {})
                per_status[rollout.status] = per_status.get(rollout.status, 0) + 1
            offset += len(page)
        return counts

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
        """Store one span: ``add_spans([span])``; returns it."""
        await self.add_spans([span])
        return span

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
        tr.check_pagination(limit, 0, after_sequence_id)
        cursor = None if after is None else SpanCursor.after(after)
        return await self._query_spans(
            SpanQuery(rollout_id, attempt_id, kinds, names, after_sequence_id, limit, cursor)
        )

    @abstractmethod
    async def _query_spans(self, query: SpanQuery) -> list[Span]: ...

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
        tr.check_max_count(max_count)
        tr.check_timeout("timeout", timeout)
        tr.check_subscription(group, consumer, visibility_timeout)
        return await self._pull_completed(group, consumer, max_count, timeout, visibility_timeout)

    @abstractmethod
    async def _pull_completed(
        self, group: str, consumer: str, max_count: int, timeout: float, visibility_timeout: float
    ) -> list[Rollout]: ...

    @abstractmethod
    async def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        """Acknowledge deliveries; returns how many were pending."""

    @abstractmethod
    async def list_subscriptions(self) -> list[Subscription]:
        """Every subscription group with its backlog, by group name."""

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Release connections (subclasses release theirs)."""
        return None

    async def __aenter__(self) -> LightningStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
