"""Non-blocking span delivery: a bounded buffer flushed to the store in batches.

``emit`` never blocks and never raises. A background thread writes batches;
when the store is unreachable it retries with exponential backoff. If the
buffer fills up, the newest spans are refused and counted, with a warning —
never dropped silently. :meth:`SpanEmitter.stats` reports every count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from agent_lightning.errors import NotFound, StoreUnavailable
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
    retries: int
    dropped: int
    """Refused because the buffer was full."""
    rejected: int
    """Refused by the store as invalid (would never succeed on retry)."""
    last_error: str | None

    @property
    def undelivered(self) -> int:
        return self.dropped + self.rejected + self.pending


class SpanEmitter:
    """Buffers spans and writes them to ``store`` from a background thread."""

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
        self._cond = threading.Condition()
        self._inflight = 0
        self._emitted = self._delivered = self._retries = self._dropped = self._rejected = 0
        self._last_error: str | None = None
        self._warned_full = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="agl-span-emitter", daemon=True)
        self._thread.start()

    def emit(self, span: Span) -> bool:
        """Queue a span for delivery; ``False`` (and a warning) if the buffer is full."""
        with self._cond:
            self._emitted += 1
            if self._closed or len(self._buffer) + self._inflight >= self._max_buffer:
                self._dropped += 1
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning(
                        "agent-lightning span buffer is full (%d spans; store %s unreachable or too slow): "
                        "new spans are being dropped and counted; check the store",
                        self._max_buffer,
                        self._store.url or type(self._store).__name__,
                    )
                return False
            self._buffer.append(span)
            if len(self._buffer) >= self._batch_size:
                self._cond.notify_all()
        return True

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything emitted so far is delivered or refused; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._buffer or self._inflight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def stats(self) -> EmitterStats:
        with self._cond:
            return EmitterStats(
                emitted=self._emitted,
                delivered=self._delivered,
                pending=len(self._buffer) + self._inflight,
                retries=self._retries,
                dropped=self._dropped,
                rejected=self._rejected,
                last_error=self._last_error,
            )

    def close(self, timeout: float = 30.0) -> EmitterStats:
        """Flush, stop the thread, and report what could not be delivered."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        stats = self.stats()
        if stats.undelivered:
            logger.error(
                "agent-lightning could not deliver %d spans to %s "
                "(pending=%d, dropped=%d, rejected=%d; last error: %s)",
                stats.undelivered,
                self._store.url or type(self._store).__name__,
                stats.pending,
                stats.dropped,
                stats.rejected,
                stats.last_error,
            )
        return stats

    # ------------------------------------------------------------------ worker
    def _take(self) -> list[Span] | None:
        with self._cond:
            while not self._buffer:
                if self._closed:
                    return None
                self._cond.wait(self._flush_interval * 20)
            if len(self._buffer) < self._batch_size and not self._closed:
                self._cond.wait(self._flush_interval)  # let a batch build up
            batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
            self._inflight = len(batch)
            return batch

    def _done(self, delivered: int, rejected: int, requeue: Sequence[Span] = ()) -> None:
        with self._cond:
            self._delivered += delivered
            self._rejected += rejected
            self._buffer.extendleft(reversed(requeue))
            self._inflight = 0
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = 0.1
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._loop.run(self._store.add_spans(batch), timeout=self._call_timeout)
            except (ValueError, TypeError, NotFound) as exc:
                # The batch is invalid; find the bad spans so the good ones still land.
                self._last_error = repr(exc)
                delivered = rejected = 0
                for span in batch:
                    try:
                        self._loop.run(self._store.add_spans([span]), timeout=self._call_timeout)
                        delivered += 1
                    except (ValueError, TypeError, NotFound) as one:
                        rejected += 1
                        logger.error("store rejected span %s (%s): %s", span.span_id, span.name, one)
                    except Exception:
                        rejected += 1
                self._done(delivered, rejected)
            except Exception as exc:  # unreachable store: keep the batch and retry
                self._last_error = repr(exc)
                with self._cond:
                    self._retries += 1
                    closing = self._closed
                if closing:
                    self._done(0, 0, batch)  # left pending: close() reports them
                    return
                if isinstance(exc, StoreUnavailable) or backoff >= 1:
                    logger.warning("span delivery to %s failed (%s); retrying in %.1fs", self._store.url, exc, backoff)
                self._done(0, 0, batch)
                time.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            else:
                backoff = 0.1
                self._done(len(batch), 0)
