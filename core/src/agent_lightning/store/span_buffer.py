"""Write-behind for ``add_span``: spans added one by one are written in batches.

A store that commits each span on its own spends a commit and a round trip per span (a
PostgreSQL ``fsync``, a Redis or HTTP round trip), so a runner adding spans one at a time is
bounded by that latency. :class:`SpanBuffer` checks each span when it is added, then queues it;
one writer at a time sends the queue to :meth:`LightningStore.add_spans` in batches, in the order
the spans were added. :meth:`SpanBuffer.flush` returns once every span added before it is stored.

What is checked when a span is added, so that a bad span is refused at once and never later:

* the span itself (``ValueError``/``TypeError`` naming the field, as ``add_spans`` does);
* its rollout and attempt: the first span of an attempt this store object has not seen is
  written at once, through ``add_spans`` (``NotFound`` for an unknown id). Attempts it has
  seen (that it started or claimed, or took a span of) are remembered: once an attempt
  exists, it always does.

A later write can then only fail for a reason that is not the span's: a store that is down is
retried with backoff for ``retry_seconds`` (the spans stay queued); anything else is raised by
the next ``add_span``/``flush`` and logged, naming the spans it kept out.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from agent_lightning.errors import StoreError, StoreUnavailable
from agent_lightning.types import Span
from agent_lightning.types.spans import checked_copy, trusted_spans

logger = logging.getLogger(__name__)

_Key = tuple[str, str, str]
Write = Callable[[Sequence[Span]], Awaitable[int]]


_LOGGED_REFUSALS = 10
_LIVE: weakref.WeakSet[SpanBuffer] = weakref.WeakSet()


@atexit.register
def _report_unwritten() -> None:
    """Say so, loudly, when a program ends with spans it added that were never stored."""
    for buffer in list(_LIVE):
        if buffer.pending:
            logger.error(
                "%d span(s) added with add_span to %s were never stored: the program ended before they were "
                "written; call `await store.flush()` (or close the store) before it ends",
                buffer.pending,
                buffer.name,
            )


@dataclass
class _Waiter:
    upto: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


class SpanBuffer:
    """Spans accepted by ``add_span`` and not yet written (one per store object).

    :param write: the store's ``add_spans``.
    :param name: the store, in messages.
    :param max_batch: the most spans written in one ``add_spans`` call.
    :param max_pending: ``add`` waits while this many spans are queued (backpressure).
    :param retry_seconds: how long a write is retried while the store is unavailable.
    """

    def __init__(
        self,
        write: Write,
        *,
        name: str = "the store",
        max_batch: int = 1000,
        max_pending: int = 10_000,
        retry_seconds: float = 30.0,
        known_attempts: int = 100_000,
    ) -> None:
        self._write = write
        self.name = name
        self.max_batch = max_batch
        self.yield_every = 128
        self.shutdown_seconds = 5.0
        """How long the writer tries to store what is queued when its event loop ends."""
        self.max_pending = max_pending
        self.retry_seconds = retry_seconds
        self._known_limit = known_attempts
        self._lock = threading.Lock()
        self._queue: OrderedDict[_Key, tuple[int, Span]] = OrderedDict()  # in the order added: seqs increase
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._accepted = 0  # seq of the last span queued
        self._written = 0  # every span with a seq up to this is stored (or was refused and reported)
        self._writer: asyncio.Task[None] | None = None
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._inflight: list[tuple[int, Span]] = []  # taken from the queue by the writer, not yet stored
        self._waiters: list[_Waiter] = []
        self._error: BaseException | None = None
        self.batches = 0
        """``add_spans`` calls made (for statistics and tests)."""
        self.refused = 0
        """Spans the store refused when they were written (each logged, up to a limit, and raised by a flush)."""
        _LIVE.add(self)

    @property
    def pending(self) -> int:
        """Spans accepted and not yet stored."""
        with self._lock:
            return self._accepted - self._written

    # ------------------------------------------------------------------ adding
    async def add(self, span: Span) -> Span:
        """Check ``span`` and queue it; returns it. The first span of an attempt is written at once."""
        self._raise_error()
        if not isinstance(span, Span):
            raise TypeError(f"add_span takes a Span, not a {type(span).__name__}")
        try:  # the checks add_spans makes, and a copy: the caller may change its object afterwards
            copy = checked_copy(span)
        except ValueError as exc:
            raise ValueError(f"span {span.__dict__.get('span_id')!r} is invalid: {exc}") from exc
        owner = (copy.rollout_id, copy.attempt_id)
        if owner not in self._known:  # written now, so that an unknown id is refused now
            await self._write([copy])
            self.remember_attempt(*owner)
            return span
        key = (copy.rollout_id, copy.attempt_id, copy.span_id)
        with self._lock:
            self._accepted += 1
            self._queue.pop(key, None)  # a span sent again replaces the queued one, at the end
            self._queue[key] = (self._accepted, copy)
            size = self._accepted - self._written  # queued and in flight
        if self._start_writer():
            await asyncio.sleep(0)  # the writer starts now: if this event loop ends, it writes what is queued
        if size >= self.max_pending:
            await self._wait_for(self._accepted - self.max_pending // 2)
        elif size % self.yield_every == 0:
            await asyncio.sleep(0)  # a caller that never waits would keep the writer's I/O from progressing
        return span

    def remember_attempt(self, rollout_id: str, attempt_id: str) -> None:
        """Note that this attempt exists (the store made it, or took a span of it)."""
        self._known[(rollout_id, attempt_id)] = None
        if len(self._known) > self._known_limit:
            self._known.popitem(last=False)

    def forget_attempts(self) -> None:
        """Forget which attempts exist (after a store deletes data, e.g. ``purge``)."""
        self._known.clear()

    # ------------------------------------------------------------------ flushing
    async def flush(self) -> None:
        """Return once every span added before this call is stored; raises what kept one out."""
        with self._lock:
            target = self._accepted
        if self._written < target:
            self._start_writer()
            await self._wait_for(target)
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def _wait_for(self, upto: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._written >= upto:
                    return
                waiter = _Waiter(upto, loop, loop.create_future())
                self._waiters.append(waiter)
            self._start_writer()  # none runs (it gave up, or its event loop ended): this loop writes
            try:
                await asyncio.wait_for(asyncio.shield(waiter.future), timeout=1.0)
            except asyncio.TimeoutError:
                pass  # look at the writer again
            if self._error is not None:
                return  # the caller raises it

    def _writer_is_gone(self) -> bool:
        loop = self._writer_loop
        return self._writer is not None and (loop is None or loop.is_closed() or self._writer.done())

    def _start_writer(self) -> bool:
        """Start a writer on this event loop unless one runs; True when one was started."""
        with self._lock:
            if self._writer is not None and not self._writer_is_gone():
                return False
            if self._inflight:  # taken by a writer whose event loop ended before it could write them
                self._requeue_locked(self._inflight)
                self._inflight = []
            if not self._queue:
                self._writer = None
                return False
            loop = asyncio.get_running_loop()
            self._writer_loop = loop
            self._writer = loop.create_task(self._drain(), name="agl-span-writer")
            return True

    async def _drain(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._writer = None
                        return
                    take = min(self.max_batch, len(self._queue))
                    self._inflight = [self._queue.popitem(last=False)[1] for _ in range(take)]
                    batch = self._inflight
                if not await self._write_batch(batch):
                    with self._lock:
                        self._requeue_locked(batch)  # kept: the next add_span or flush tries again
                        self._inflight = []
                        self._writer = None
                    self._wake_all()
                    return
                with self._lock:
                    self._inflight = []
                self._done_upto(batch[-1][0])
        except asyncio.CancelledError:
            # The event loop is ending (asyncio.run cancels what is left): write what is queued, once.
            with self._lock:
                rest = self._inflight + [self._queue.popitem(last=False)[1] for _ in range(len(self._queue))]
                self._inflight = rest
            if rest:
                with contextlib.suppress(Exception):  # bounded: what the write needs may be ending too
                    await asyncio.wait_for(self._write([span for _, span in rest]), self.shutdown_seconds)
                    with self._lock:
                        self._inflight = []
                    self._done_upto(rest[-1][0])
            with self._lock:
                self._requeue_locked(self._inflight)
                self._inflight = []
                self._writer = None
            raise
        except Exception as exc:  # a bug, not the store's answer: keep the spans and report it
            logger.exception("the span writer failed")
            with self._lock:
                self._requeue_locked(self._inflight)
                self._inflight = []
                self._writer = None
            self._error = exc
            self._wake_all()

    def _requeue_locked(self, batch: list[tuple[int, Span]]) -> None:
        for seq, span in reversed(batch):
            key = (span.rollout_id, span.attempt_id, span.span_id)
            if key not in self._queue:
                self._queue[key] = (seq, span)
                self._queue.move_to_end(key, last=False)

    async def _write_batch(self, batch: list[tuple[int, Span]]) -> bool:
        """Write ``batch``; False when the store stayed unavailable for ``retry_seconds``."""
        spans = [span for _, span in batch]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                with trusted_spans(spans):  # checked when added, and only this queue holds them
                    await self._write(spans)
                self.batches += 1
                return True
            except StoreUnavailable as exc:
                if loop.time() + delay > deadline:
                    self._error = exc
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except (StoreError, ValueError, TypeError) as exc:
                if len(spans) == 1:
                    self._refused(spans[0], exc)
                    return True
                for one in batch:  # find the span the store refuses; the others are written
                    if not await self._write_batch([one]):
                        return False
                return True

    def _refused(self, span: Span, error: BaseException) -> None:
        self.refused += 1
        if self.refused <= _LOGGED_REFUSALS:
            logger.error("the store refused span %s of rollout %s: %s", span.span_id, span.rollout_id, error)
        elif self.refused == _LOGGED_REFUSALS + 1:
            logger.error("the store refused more spans; only the first %d are logged", _LOGGED_REFUSALS)
        if self._error is None:
            self._error = error

    def _done_upto(self, seq: int) -> None:
        with self._lock:
            self._written = max(self._written, seq)
            ready = [w for w in self._waiters if w.upto <= self._written]
            self._waiters = [w for w in self._waiters if w.upto > self._written]
        for waiter in ready:
            self._resolve(waiter)

    def _wake_all(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._resolve(waiter)

    @staticmethod
    def _resolve(waiter: _Waiter) -> None:
        def set_done() -> None:
            if not waiter.future.done():
                waiter.future.set_result(None)

        with contextlib.suppress(RuntimeError):  # that loop is closed: its waiter is gone too
            waiter.loop.call_soon_threadsafe(set_done)
