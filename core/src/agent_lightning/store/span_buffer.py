"""Write-behind for ``add_span``: spans added one by one are written in batches.

A store that commits each span on its own spends a commit and a round trip per span (a
PostgreSQL ``fsync``, a Redis or HTTP round trip), so a runner adding spans one at a time is
bounded by that latency. :class:`SpanBuffer` checks each span when it is added, then queues it;
one writer at a time sends the queue to :meth:`LightningStore.add_spans` in batches, in the order
the spans were added. :meth:`SpanBuffer.flush` returns once every span added before it is stored.

What is checked when a span is added, so that a bad span is refused by the call itself:

* the span itself (``ValueError``/``TypeError`` naming the field, as ``add_spans`` does);
* its rollout and attempt: the first span of an attempt this store object has not seen is
  written at once, through ``add_spans`` (``NotFound`` for an unknown id). Attempts it has
  seen (that it started or claimed, or took a span of) are remembered.

A later write can then fail only for a reason that is not the span's. A store that is down is
retried with backoff for ``retry_seconds``, the spans staying queued; then ``flush`` raises
:class:`~agent_lightning.errors.StoreUnavailable`, and the next ``add_span`` or ``flush`` tries
again. A span the store still refuses (data deleted under it, a body over a server's limit) is
logged and raised by the next ``flush`` whose spans include it; the others are stored.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence

from agent_lightning.errors import StoreError, StoreUnavailable
from agent_lightning.store.notify import ChangeNotifier
from agent_lightning.types import Span
from agent_lightning.types.spans import checked_copy, trusted_spans

logger = logging.getLogger(__name__)

_Key = tuple[str, str, str]
_Item = tuple[int, Span]  # (the order in which it was added, the span)
Write = Callable[[Sequence[Span]], Awaitable[int]]

_LOGGED_REFUSALS = 10
_LIVE: weakref.WeakSet[SpanBuffer] = weakref.WeakSet()
_WRITING: contextvars.ContextVar[bool] = contextvars.ContextVar("agl_span_buffer_writing", default=False)


def writing() -> bool:
    """Whether the caller is a span buffer's own write (stores must not wait for the buffer then)."""
    return _WRITING.get()


@contextlib.contextmanager
def _as_writer() -> Iterator[None]:
    token = _WRITING.set(True)
    try:
        yield
    finally:
        _WRITING.reset(token)


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


def _key(span: Span) -> _Key:
    return (span.rollout_id, span.attempt_id, span.span_id)


class SpanBuffer:
    """Spans accepted by ``add_span`` and not yet written (one per store object).

    :param write: the store's ``add_spans``.
    :param name: the store, in messages.
    :param max_batch: the most spans written in one ``add_spans`` call.
    :param max_pending: ``add`` waits while this many spans are queued (backpressure).
    :param retry_seconds: how long a write is retried while the store is unavailable.
    :param known_attempts: how many attempt ids are remembered (the least recently used go first).
    """

    def __init__(
        self,
        write: Write,
        *,
        name: str = "the store",
        max_batch: int = 1000,
        max_pending: int = 10_000,
        retry_seconds: float = 30.0,
        known_attempts: int = 10_000,
    ) -> None:
        self._write = write
        self.name = name
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.retry_seconds = retry_seconds
        self.yield_every = 128
        self.shutdown_seconds = 5.0
        """How long the writer tries to store what is queued when its event loop ends."""
        self._known_limit = known_attempts
        self._lock = threading.Lock()
        self._queue: OrderedDict[_Key, _Item] = OrderedDict()  # in the order added: seqs increase
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._accepted = 0  # seq of the last span queued
        self._written = 0  # every span with a seq up to this is stored (or was refused and reported)
        self._writer: asyncio.Task[None] | None = None
        self._writer_loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0  # a writer whose generation is not the current one has been replaced
        self._inflight: list[_Item] = []  # taken from the queue by the writer, not yet stored
        self._changed = ChangeNotifier()  # a batch was stored, or the writer stopped
        self._unavailable: BaseException | None = None  # why the last writer gave up
        self._refusals: list[tuple[int, BaseException]] = []  # not yet raised by a flush
        self._closed = False
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
        """Check ``span`` and queue it; returns it. The first span of an attempt not seen is written at once."""
        if not isinstance(span, Span):
            raise TypeError(f"add_span takes a Span, not a {type(span).__name__}")
        try:  # the checks add_spans makes, and a copy: the caller may change its object afterwards
            copy = checked_copy(span)
        except ValueError as exc:
            raise ValueError(f"span {span.__dict__.get('span_id')!r} is invalid: {exc}") from exc
        owner = (copy.rollout_id, copy.attempt_id)
        key = _key(copy)
        if not self._knows(owner):  # written now, so that an unknown id is refused now
            with self._lock:
                queued = key in self._queue or any(_key(s) == key for _, s in self._inflight)
            if queued:  # an older version of this span waits: it must not land after this one
                await self.flush()
            with _as_writer():  # nothing of this attempt is queued: the store need not flush first
                await self._write([copy])
            self.remember_attempt(*owner)
            return span
        with self._lock:
            if self._closed:
                raise StoreError(f"{self.name} is closed")
            self._accepted += 1
            self._queue.pop(key, None)  # a span sent again replaces the queued one, at the end
            self._queue[key] = (self._accepted, copy)
            size = self._accepted - self._written  # queued and in flight
        if self._start_writer():
            await asyncio.sleep(0)  # the writer starts now: if this event loop ends, it writes what is queued
        if size >= self.max_pending:
            await self._wait_for(self._accepted - self.max_pending // 2)
            if self._unavailable is not None and self.pending >= self.max_pending:
                raise StoreUnavailable(f"{self.pending} spans wait for {self.name}: {self._unavailable}")
        elif size % self.yield_every == 0:
            await asyncio.sleep(0)  # a caller that never waits would keep the writer's I/O from progressing
        return span

    def _knows(self, owner: tuple[str, str]) -> bool:
        if owner in self._known:
            self._known.move_to_end(owner)
            return True
        return False

    def remember_attempt(self, rollout_id: str, attempt_id: str) -> None:
        """Note that this attempt exists (the store made it, or took a span of it)."""
        self._known[(rollout_id, attempt_id)] = None
        self._known.move_to_end((rollout_id, attempt_id))
        if len(self._known) > self._known_limit:
            self._known.popitem(last=False)

    def forget_attempts(self) -> None:
        """Forget which attempts exist (after a store deletes data, e.g. ``purge``)."""
        self._known.clear()

    # ------------------------------------------------------------------ flushing
    async def flush(self) -> None:
        """Return once every span added before this call is stored.

        Raises :class:`~agent_lightning.errors.StoreUnavailable` when the store stayed down for
        ``retry_seconds`` (the spans stay queued), or the store's refusal of one of these spans.
        """
        with self._lock:
            target = self._accepted
        if self._written < target:
            self._start_writer()
            await self._wait_for(target)
        with self._lock:
            if self._written < target and self._closed:
                raise StoreError(f"{self.name} is closed: {target - self._written} span(s) added were not stored")
            if self._written < target:
                raise StoreUnavailable(
                    f"{target - self._written} span(s) added with add_span are not stored yet: {self._unavailable}"
                )
            mine = [error for seq, error in self._refusals if seq <= target]
            self._refusals = [(seq, error) for seq, error in self._refusals if seq > target]
        if mine:
            if len(mine) > 1:
                raise StoreError(f"the store refused {len(mine)} spans added with add_span; the first: {mine[0]}")
            raise mine[0]

    async def _wait_for(self, upto: int) -> None:
        """Wait until the spans up to ``upto`` are stored, or the writer gave up (the store is down)."""
        self._start_writer()  # none runs (it gave up, or its event loop ended): this loop writes

        def settled() -> bool | None:
            with self._lock:
                if self._written >= upto or self._closed or (self._unavailable is not None and self._writer is None):
                    return True
            self._start_writer()  # its event loop may have ended while this one waited
            return None

        await self._changed.wait_for(settled, None)

    def _writer_is_gone(self) -> bool:
        """Whether the writer can no longer run: its task ended, or its event loop is closed or stopped."""
        loop = self._writer_loop
        task = self._writer
        return task is not None and (loop is None or loop.is_closed() or not loop.is_running() or task.done())

    def _start_writer(self) -> bool:
        """Start a writer on this event loop unless one runs; True when one was started."""
        with self._lock:
            if self._closed or (self._writer is not None and not self._writer_is_gone()):
                return False
            if self._inflight:  # taken by a writer whose event loop ended before it could write them
                self._requeue_locked(self._inflight)
                self._inflight = []
            if not self._queue:
                self._writer = None
                return False
            loop = asyncio.get_running_loop()
            self._generation += 1
            self._unavailable = None
            self._writer_loop = loop
            self._writer = loop.create_task(self._drain(self._generation), name="agl-span-writer")
            return True

    def _take_locked(self, count: int) -> list[_Item]:
        self._inflight = [self._queue.popitem(last=False)[1] for _ in range(min(count, len(self._queue)))]
        return self._inflight

    async def _drain(self, generation: int) -> None:
        _WRITING.set(True)  # this task's own context: the store's methods must not wait for this writer
        try:
            if not await self._write_queued(generation):
                self._changed.notify_all()  # flush says the store is unavailable
        except asyncio.CancelledError:
            # The event loop is ending (asyncio.run cancels what is left), or the store closes.
            if not self._closed and generation == self._generation:
                await self._write_rest(generation)
            raise
        except Exception:  # a bug, not the store's answer: keep the spans and say so
            logger.exception("the span writer of %s failed", self.name)
            with self._lock:
                if generation == self._generation:
                    self._requeue_locked(self._inflight)
                    self._inflight = []
                    self._writer = None
                    self._unavailable = StoreError(f"the span writer of {self.name} failed; see the log")
            self._changed.notify_all()

    async def _write_queued(self, generation: int) -> bool:
        """Write the queue in batches until it is empty; False when the store stayed unavailable."""
        while True:
            with self._lock:
                if generation != self._generation or not self._queue:
                    if generation == self._generation:
                        self._writer = None
                    return True
                batch = self._take_locked(self.max_batch)
            stored = await self._write_batch(batch)
            with self._lock:
                if generation != self._generation:
                    return True  # replaced while writing: the new writer owns the state
                self._inflight = []
                if not stored:
                    self._requeue_locked(batch)  # kept: the next add_span or flush tries again
                    self._writer = None
                    return False
            self._done_upto(batch[-1][0])

    async def _write_rest(self, generation: int) -> None:
        """Write what is in flight and queued once, within ``shutdown_seconds``."""
        with self._lock:
            self._requeue_locked(self._inflight)  # a newer queued version of a span wins over the one in flight
            self._inflight = []
        try:
            with contextlib.suppress(Exception):  # bounded: what the write needs may be ending too
                await asyncio.wait_for(self._write_queued(generation), self.shutdown_seconds)
        finally:
            with self._lock:
                self._requeue_locked(self._inflight)
                self._inflight = []
                self._writer = None

    def _requeue_locked(self, batch: list[_Item]) -> None:
        for seq, span in reversed(batch):
            key = _key(span)
            if key not in self._queue:  # else a newer version was added since: it wins
                self._queue[key] = (seq, span)
                self._queue.move_to_end(key, last=False)

    async def _write_batch(self, batch: list[_Item]) -> bool:
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
                    self._unavailable = exc
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except (StoreError, ValueError, TypeError) as exc:
                if len(spans) == 1:
                    self._refused(batch[0], exc)
                    return True
                for one in batch:  # find the span the store refuses; the others are written
                    if not await self._write_batch([one]):
                        return False
                return True

    def _refused(self, item: _Item, error: BaseException) -> None:
        seq, span = item
        self.refused += 1
        if self.refused <= _LOGGED_REFUSALS:
            logger.error("%s refused span %s of rollout %s: %s", self.name, span.span_id, span.rollout_id, error)
        elif self.refused == _LOGGED_REFUSALS + 1:
            logger.error("%s refused more spans; only the first %d are logged", self.name, _LOGGED_REFUSALS)
        with self._lock:
            self._refusals.append((seq, error))
            del self._refusals[:-100]  # the oldest go first; a flush reports how many it saw

    def _done_upto(self, seq: int) -> None:
        with self._lock:
            self._written = max(self._written, seq)
        self._changed.notify_all()

    # ------------------------------------------------------------------ closing
    def abandon(self) -> int:
        """Stop writing (the store is closing); returns how many accepted spans were not stored."""
        with self._lock:
            self._closed = True
            writer, self._writer = self._writer, None
            lost = self._accepted - self._written
        if writer is not None and not writer.done():
            loop = self._writer_loop
            with contextlib.suppress(RuntimeError):
                if loop is not None:
                    loop.call_soon_threadsafe(writer.cancel)
        self._changed.notify_all()
        return lost
