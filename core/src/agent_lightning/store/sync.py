"""A synchronous facade over any (asynchronous) store, for scripts and threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

from agent_lightning.store.base import LightningStore
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

T = TypeVar("T")


class EventLoopThread:
    """An event loop running in a daemon thread; ``run`` executes a coroutine on it and blocks."""

    def __init__(self, name: str = "agl-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedule ``coro`` on the loop; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("EventLoopThread.run called from its own loop: this would deadlock")
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        """Stop the loop and its thread (idempotent); the loop is closed once the thread has ended."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class SyncStore:
    """Every method of :class:`~agent_lightning.store.base.LightningStore`, as a blocking call.

    >>> store = SyncStore(InMemoryLightningStore())
    >>> rollout = store.enqueue_rollout({"question": "2+2"})

    Calls run on one private event loop thread (or ``loop_thread``), so a store whose
    connections belong to one loop is always used from that loop. For a backend's own
    extra coroutines, use :meth:`run`: ``sync.run(sync.store.extra())``.
    """

    def __init__(self, store: LightningStore, *, loop_thread: EventLoopThread | None = None) -> None:
        self.store = store
        self._owns_loop = loop_thread is None
        self._loop = loop_thread or EventLoopThread("agl-sync-store")

    @property
    def url(self) -> str:
        """The wrapped store's URL."""
        return self.store.url

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    # ------------------------------------------------------------------ rollouts
    def enqueue_rollouts(self, requests: Sequence[RolloutRequest]) -> list[Rollout]:
        """Queue many rollouts atomically; returns them in request order."""
        return self._call(self.store.enqueue_rollouts(requests))

    def enqueue_rollout(
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
        return self._call(
            self.store.enqueue_rollout(
                input,
                task_type=task_type,
                mode=mode,
                resources_id=resources_id,
                config=config,
                metadata=metadata,
                rollout_id=rollout_id,
            )
        )

    def start_rollout(
        self, request: RolloutRequest, worker_id: str | None = None, *, attempt_id: str | None = None
    ) -> AttemptedRollout:
        """Create a rollout that is already running, with its first attempt."""
        return self._call(self.store.start_rollout(request, worker_id, attempt_id=attempt_id))

    def claim_rollout(
        self,
        worker_id: str,
        *,
        task_types: Sequence[str] | None = None,
        modes: Sequence[RolloutMode] | None = None,
    ) -> AttemptedRollout | None:
        """Claim the oldest claimable rollout; ``None`` when nothing is claimable."""
        return self._call(self.store.claim_rollout(worker_id, task_types=task_types, modes=modes))

    def heartbeat(self, rollout_id: str, attempt_id: str) -> Attempt:
        """Extend the attempt's lease."""
        return self._call(self.store.heartbeat(rollout_id, attempt_id))

    def complete_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: Literal["succeeded", "failed"],
        error: str | None = None,
    ) -> Rollout:
        """Finish an attempt; a failed one requeues the rollout while attempts remain."""
        return self._call(self.store.complete_attempt(rollout_id, attempt_id, status, error))

    def cancel_rollout(self, rollout_id: str) -> Rollout:
        """Cancel a rollout that has not finished."""
        return self._call(self.store.cancel_rollout(rollout_id))

    def reap_expired(self, now: float | None = None) -> list[Attempt]:
        """Mark overrun attempts ``lost``/``timeout``; returns them."""
        return self._call(self.store.reap_expired(now))

    def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout by id."""
        return self._call(self.store.get_rollout(rollout_id))

    def query_rollouts(
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
        return self._call(
            self.store.query_rollouts(
                status=status, task_types=task_types, mode=mode, rollout_ids=rollout_ids, limit=limit, offset=offset
            )
        )

    def get_attempts(self, rollout_id: str) -> list[Attempt]:
        """The attempts of a rollout, first first."""
        return self._call(self.store.get_attempts(rollout_id))

    def wait_for_rollouts(
        self, rollout_ids: Sequence[str], timeout: float | None = None, poll_interval: float = 0.05
    ) -> list[Rollout]:
        """Wait until the rollouts are terminal or ``timeout`` passes; returns the terminal ones."""
        return self._call(self.store.wait_for_rollouts(rollout_ids, timeout, poll_interval))

    # ------------------------------------------------------------------ spans
    def add_spans(self, spans: Sequence[Span]) -> int:
        """Store spans atomically (all or none); returns how many were written."""
        return self._call(self.store.add_spans(spans))

    def add_span(self, span: Span) -> Span:
        """Store one span: ``add_spans([span])``; returns it."""
        return self._call(self.store.add_span(span))

    def query_spans(
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
        """Spans of a rollout ordered by ``(attempt, sequence_id, start_time, span_id)``; ``attempt_id="latest"``
        for the newest only; ``after`` (a span or :class:`SpanCursor`) pages across attempts."""
        return self._call(
            self.store.query_spans(
                rollout_id,
                attempt_id,
                kinds=kinds,
                names=names,
                after_sequence_id=after_sequence_id,
                limit=limit,
                after=after,
            )
        )

    # ------------------------------------------------------------------ resources
    def add_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        """Store a new immutable snapshot; it becomes the latest."""
        return self._call(self.store.add_resources(resources, metadata))

    def get_resources(self, resources_id: str) -> ResourcesSnapshot:
        """One snapshot by id."""
        return self._call(self.store.get_resources(resources_id))

    def get_latest_resources(self) -> ResourcesSnapshot | None:
        """The newest snapshot, or ``None`` when there is none."""
        return self._call(self.store.get_latest_resources())

    # ------------------------------------------------------------------ publish–subscribe
    def subscribe(self, group: str, *, task_types: Sequence[str] | None = None, from_beginning: bool = False) -> None:
        """Create (idempotently) a subscription group to finished rollouts."""
        return self._call(self.store.subscribe(group, task_types=task_types, from_beginning=from_beginning))

    def pull_completed(
        self,
        group: str,
        *,
        consumer: str = "default",
        max_count: int = 100,
        timeout: float = 0.0,
        visibility_timeout: float = 300.0,
    ) -> list[Rollout]:
        """Take up to ``max_count`` undelivered finished rollouts for ``group``."""
        return self._call(
            self.store.pull_completed(
                group, consumer=consumer, max_count=max_count, timeout=timeout, visibility_timeout=visibility_timeout
            )
        )

    def ack_completed(self, group: str, rollout_ids: Sequence[str]) -> int:
        """Acknowledge deliveries; returns how many were pending."""
        return self._call(self.store.ack_completed(group, rollout_ids))

    # ------------------------------------------------------------------ lifecycle
    def run(self, awaitable: Awaitable[T]) -> T:
        """Run any awaitable on the store's loop."""

        async def wrapper() -> T:
            return await awaitable

        return self._loop.run(wrapper())

    def close(self) -> None:
        """Close the store and stop the loop thread (if this object started it)."""
        try:
            self._loop.run(self.store.close())
        finally:
            if self._owns_loop:
                self._loop.stop()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
