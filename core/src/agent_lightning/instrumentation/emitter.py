"""Non-blocking span delivery: a bounded buffer flushed to the store in batches.

``emit`` never blocks and never raises. A background thread writes batches;
when the store is unreachable it retries with exponential backoff. Spans of an
attempt that does not exist in the store yet (its rollout is still being
created) are *held* and queued once the attempt exists (:meth:`SpanEmitter.hold`,
:meth:`SpanEmitter.release`). If the buffer fills up, the newest spans are
refused and counted, with a warning — never dropped silently.
:meth:`SpanEmitter.stats` reports every count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from agent_lightning.errors import NotFound, StoreUnavailable
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import EventLoopThread
from agent_lightning.types import Span

logger = logging.getLogger(__name__)

PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, NotFound)
"""Store errors that a retry cannot fix (invalid input, unknown ids); anything else is retried."""


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` from a store call means "invalid, never retry" rather than "try again later"."""
    return isinstance(exc, PERMANENT_ERRORS)


@dataclass(frozen=True)
class EmitterStats:
    """Delivery counts since the emitter started."""

    emitted: int
    delivered: int
    pending: int
    """Not delivered yet: buffered, being sent, or held (below); retried until delivered."""
    retries: int
    dropped: int
    """Refused because the buffer was full."""
    rejected: int
    """Refused by the store as invalid, or their rollout could not be created (would never succeed on retry)."""
    last_error: str | None
    held: int = 0
    """Part of ``pending``: spans waiting for their rollout to be created in the store."""

    @property
    def undelivered(self) -> int:
        """Spans not (yet) in the store: ``dropped + rejected + pending``."""
        return self.dropped + self.rejected + self.pending


class SpanEmitter:
    """Buffers spans and writes them to ``store`` from a background thread.

    :param max_buffer: the most spans kept (buffered, in flight and held together); more are dropped and counted.
    :param batch_size: the most spans sent in one ``add_spans`` call.
    :param flush_interval: how long a small batch waits for more spans before it is sent.
    :param max_backoff: the longest pause between retries while the store is unreachable.
    :param call_timeout: the longest one ``add_spans`` call may take before it counts as failed and is retried.
    """

    def __init__(
        self,
        store: LightningStore,
        loop: EventLoopThread,
        *,
        max_buffer: int = 50_000,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        max_backoff: float = 5.0,
        call_timeout: float = 30.0,
    ) -> None:
        self._store = store
        self._loop = loop
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_backoff = max_backoff
        self._call_timeout = call_timeout
        self._buffer: deque[Span] = deque()
        self._held: dict[str, list[Span]] = {}
        self._held_count = 0
        self._refused: dict[str, str] = {}  # held key -> why its spans can never be delivered
        self._cond = threading.Condition()
        self._inflight = 0
        self._emitted = self._delivered = self._retries = self._dropped = self._rejected = 0
        self._last_error: str | None = None
        self._warned_full = False
        self._waiters: dict[int, tuple[Future[bool], list[int]]] = {}  # id(span) -> (future, its spans' ids)
        self._closed = False
        self._stopping = threading.Event()  # cuts a retry pause short when closing
        self._thread = threading.Thread(target=self._run, name="agl-span-emitter", daemon=True)
        self._thread.start()

    @property
    def store_name(self) -> str:
        """The store's URL (or class name), for messages."""
        return self._store.url or type(self._store).__name__

    def emit(self, span: Span) -> bool:
        """Queue a span for delivery; ``False`` (and a warning) if the buffer is full or its rollout was refused."""
        with self._cond:
            self._emitted += 1
            refused = self._refused.get(span.attempt_id)
            if refused is not None:
                self._rejected += 1
                return False
            if self._closed or len(self._buffer) + self._inflight + self._held_count >= self._max_buffer:
                self._dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning(
                        "agent-lightning span buffer is full (%d spans; store %s unreachable or too slow): "
                        "new spans are being dropped and counted; check the store",
                        self._max_buffer,
                        self.store_name,
                    )
                return False
            held = self._held.get(span.attempt_id)
            if held is not None:
                held.append(span)
                self._held_count += 1
                return True
            self._buffer.append(span)
            if len(self._buffer) >= self._batch_size:
                self._cond.notify_all()
        return True

    def emit_stored(self, spans: Sequence[Span]) -> Future[bool]:
        """Queue ``spans`` and return a future set once all of them are settled.

        Its result is ``True`` when every span was stored, ``False`` when one was refused (full
        buffer, invalid). Waiting spans are sent at once with whatever else is queued (a group
        commit), without waiting for a batch to fill.
        """
        future: Future[bool] = Future()
        with self._cond:  # a re-entrant lock: emit() takes it too, so no batch can go out before we wait on it
            accepted = [span for span in spans if self.emit(span)]
            if len(accepted) < len(spans) or not accepted:
                future.set_result(len(accepted) == len(spans))
                return future
            keys = [id(span) for span in accepted]
            for key in keys:
                self._waiters[key] = (future, keys)
            self._cond.notify_all()
        return future

    def _settle(self, spans: Sequence[Span], stored: bool) -> None:
        """Resolve the waiters of ``spans`` (call with ``self._cond`` held)."""
        if not self._waiters:
            return
        for span in spans:
            waiter = self._waiters.pop(id(span), None)
            if waiter is None:
                continue
            future, keys = waiter
            keys.remove(id(span))
            if not stored and not future.done():
                future.set_result(False)
            elif not keys and not future.done():
                future.set_result(True)

    def hold(self, key: str) -> None:
        """Keep spans whose ``attempt_id`` is ``key`` (a placeholder) until :meth:`release` or :meth:`refuse`."""
        with self._cond:
            self._held.setdefault(key, [])

    def release(self, key: str, rewrite: Callable[[Span], Span]) -> int:
        """Queue the spans held under ``key``, each passed through ``rewrite`` (which sets the real ids)."""
        with self._cond:
            spans = self._held.pop(key, [])
            self._held_count -= len(spans)
            self._buffer.extend(rewrite(span) for span in spans)
            self._cond.notify_all()
        return len(spans)

    def refuse(self, key: str, reason: str) -> int:
        """Count the spans held under ``key`` (and any emitted later) as rejected: their attempt will never exist."""
        with self._cond:
            spans = self._held.pop(key, [])
            self._held_count -= len(spans)
            self._rejected += len(spans)
            self._refused[key] = reason
            self._last_error = reason
            self._cond.notify_all()
        return len(spans)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything emitted so far is delivered or refused; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._buffer or self._inflight or self._held_count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def stats(self) -> EmitterStats:
        """Every delivery count, taken at one instant."""
        with self._cond:
            return EmitterStats(
                emitted=self._emitted,
                delivered=self._delivered,
                pending=len(self._buffer) + self._inflight + self._held_count,
                retries=self._retries,
                dropped=self._dropped,
                rejected=self._rejected,
                last_error=self._last_error,
                held=self._held_count,
            )

    def close(self, timeout: float = 30.0) -> EmitterStats:
        """Flush for up to ``timeout`` seconds, stop the thread, and report (log) what could not be delivered.

        Spans emitted after closing are dropped and counted. Closing again only returns the counts.
        """
        with self._cond:
            if self._closed:
                return self.stats()
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stopping.set()
        self._thread.join(timeout=min(5.0, max(0.1, deadline - time.monotonic())))  # a send in flight stays pending
        stats = self.stats()
        if stats.undelivered:
            logger.warning(
                "agent-lightning could not deliver %d of %d spans to %s (pending=%d of which held=%d waiting for "
                "their rollout to be created, dropped=%d, rejected=%d; last error: %s). These spans are lost: "
                "check that the store is reachable (`agl runs --store %s`) and that the process lives long "
                "enough to flush (close its TrainingContexts, or call agl.get_tracer().close())",
                stats.undelivered,
                stats.emitted,
                self.store_name,
                stats.pending,
                stats.held,
                stats.dropped,
                stats.rejected,
                stats.last_error or "none",
                self.store_name,
            )
        return stats

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[Span] | None:
        with self._cond:
            while not self._buffer:
                if self._closed:
                    return None
                self._cond.wait(self._flush_interval * 20)
            if len(self._buffer) < self._batch_size and not self._closed and not self._waiters:
                self._cond.wait(self._flush_interval)  # let a batch build up (unless someone waits for it)
            batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
            self._inflight = len(batch)
            return batch

    def _done(
        self,
        delivered: int,
        rejected: int,
        requeue: Sequence[Span] = (),
        error: str | None = None,
        settled: Sequence[tuple[Sequence[Span], bool]] = (),
    ) -> bool:
        """Record a batch's outcome; returns whether the emitter is closing."""
        with self._cond:
            for spans, stored in settled:
                self._settle(spans, stored)
            self._delivered += delivered
            self._rejected += rejected
            self._buffer.extendleft(reversed(requeue))
            self._inflight = 0
            if error is not None:
                self._last_error = error
            if requeue:
                self._retries += 1
            self._cond.notify_all()
            return self._closed

    def _send(self, spans: list[Span]) -> None:
        self._loop.run(self._store.add_spans(spans), timeout=self._call_timeout)

    def _isolate(self, batch: list[Span]) -> tuple[list[Span], list[Span], list[Span], BaseException | None]:
        """Send a rejected batch span by span so the valid spans still land.

        Returns ``(delivered, rejected, requeue, transient_error)``: at the first
        transient error, that span and the ones after it are requeued, not rejected.
        """
        delivered: list[Span] = []
        rejected: list[Span] = []
        for index, span in enumerate(batch):
            try:
                self._send([span])
            except Exception as exc:
                if not is_permanent(exc):
                    return delivered, rejected, batch[index:], exc
                rejected.append(span)
                logger.error("store %s rejected span %s (%s): %s", self.store_name, span.span_id, span.name, exc)
            else:
                delivered.append(span)
        return delivered, rejected, [], None

    def _run(self) -> None:
        backoff = 0.1
        while True:
            batch = self._take()
            if batch is None:
                return
            transient: BaseException | None
            try:
                self._send(batch)
            except Exception as exc:
                if is_permanent(exc):  # the batch is invalid; find the bad spans so the good ones still land
                    delivered, rejected, requeue, transient = self._isolate(batch)
                    settled = ((delivered, True), (rejected, False))
                    closing = self._done(len(delivered), len(rejected), requeue, repr(transient or exc), settled)
                else:  # unreachable store: keep the batch and retry
                    transient = exc
                    closing = self._done(0, 0, batch, repr(exc))
            else:
                backoff = 0.1
                self._done(len(batch), 0, settled=((batch, True),))
                continue
            if transient is None:
                continue
            if closing:
                return  # left pending: close() reports them
            if isinstance(transient, StoreUnavailable) or backoff >= 1:
                logger.warning(
                    "span delivery to %s failed (%s); retrying in %.1fs", self.store_name, transient, backoff
                )
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)
