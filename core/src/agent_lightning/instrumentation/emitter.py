"""Non-blocking span delivery: a bounded buffer flushed to the store in batches.

``emit`` never blocks and never raises. A background thread writes batches;
when the store is unreachable it retries with exponential backoff. A span is
sent at most ``flush_interval`` (50 ms) after it was emitted, with whatever else
came meanwhile (up to ``batch_size``). Spans of an attempt that does not exist in
the store yet (its rollout is still being created) are *held*, with their final
ids, and queued once the attempt exists (:meth:`SpanEmitter.hold`,
:meth:`SpanEmitter.release`). If the buffer fills up, the newest spans are
refused and counted, with a warning — never dropped silently.
:meth:`SpanEmitter.stats` reports every count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from agent_lightning.errors import StoreUnavailable
from agent_lightning.retry import Backoff, is_permanent, retrying
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import EventLoopThread
from agent_lightning.types import Span

logger = logging.getLogger(__name__)


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
    :param flush_interval: the longest a span waits for more spans to join its batch before it is sent.
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
        self._hurry = False  # flush() asked: send what is buffered without waiting for a batch to fill
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
            if len(self._buffer) == 1 or len(self._buffer) >= self._batch_size:  # start its timer, or send now
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
        """Keep spans whose ``attempt_id`` is ``key`` (an attempt being created) until :meth:`release` or
        :meth:`refuse`."""
        with self._cond:
            self._held.setdefault(key, [])

    def release(self, key: str) -> int:
        """The attempt ``key`` exists: queue the spans held for it, and send later ones at once."""
        with self._cond:
            spans = self._held.pop(key, [])
            self._held_count -= len(spans)
            self._buffer.extend(spans)
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
            self._hurry = True
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
                self._hurry = False
                self._cond.wait()  # emit() wakes this when the buffer stops being empty
            send_by = time.monotonic() + self._flush_interval  # let a batch build up, briefly
            while len(self._buffer) < self._batch_size and not (self._closed or self._hurry or self._waiters):
                remaining = send_by - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
            self._inflight = len(batch)
            return batch

    def _count(self, delivered: Sequence[Span] = (), rejected: Sequence[Span] = ()) -> None:
        with self._cond:
            self._settle(delivered, True)
            self._settle(rejected, False)
            self._delivered += len(delivered)
            self._rejected += len(rejected)
            self._inflight -= len(delivered) + len(rejected)
            self._cond.notify_all()

    def _send(self, spans: list[Span]) -> None:
        self._loop.run(self._store.add_spans(spans), timeout=self._call_timeout)

    def _deliver(self, pending: list[Span]) -> None:
        """Send ``pending``, emptying it as spans land or are refused; raises a transient error to retry the rest.

        A batch the store refuses as invalid is sent again span by span, so its valid spans still land.
        """
        try:
            self._send(pending)
        except Exception as exc:
            if not is_permanent(exc):
                raise
        else:
            self._count(delivered=pending)
            pending.clear()
            return
        while pending:
            span = pending[0]
            try:
                self._send([span])
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                logger.error("store %s rejected span %s (%s): %s", self.store_name, span.span_id, span.name, exc)
                with self._cond:
                    self._last_error = repr(exc)
                self._count(rejected=[span])
            else:
                self._count(delivered=[span])
            pending.pop(0)

    def _note_retry(self, error: BaseException, pause: float) -> None:
        with self._cond:
            self._retries += 1
            self._last_error = repr(error)
        if isinstance(error, StoreUnavailable) or pause >= 1:
            logger.warning("span delivery to %s failed (%s); retrying in %.1fs", self.store_name, error, pause)

    def _run(self) -> None:
        backoff = Backoff(first=0.1, cap=self._max_backoff)
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                for attempt in retrying(backoff, stop_event=self._stopping, before_sleep=self._note_retry):
                    with attempt:
                        self._deliver(batch)
            except Exception as exc:  # closing: what is left stays pending, and close() reports it
                with self._cond:
                    self._last_error = repr(exc)
                    self._buffer.extendleft(reversed(batch))
                    self._settle(batch, False)  # nobody waits for a closing emitter
                    self._inflight = 0
                    self._cond.notify_all()
                return
