"""Coalescing of concurrent ``add_spans`` calls into one request (group commit), per event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agent_lightning.errors import AgentLightningError, StoreUnavailable
from agent_lightning.types import Span

Send = Callable[[list[Span]], Awaitable[int]]


class SpanBatcher:
    """Sends the spans of calls that arrive while a request is in flight together, in the next request.

    One caller alone is sent at once, as it is (no added delay). Each caller's spans stay
    all-or-nothing: when a combined request is refused as invalid, its halves are sent again (and so
    on), so one bad batch fails only its own caller.
    """

    def __init__(self, send: Send, max_spans: int = 5000) -> None:
        self._send = send
        self.max_spans = max_spans
        self._pending: list[tuple[list[Span], asyncio.Future[int]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.requests = 0
        """Requests sent (for statistics and tests)."""

    async def add(self, spans: list[Span]) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((spans, future))
        if self._draining is None:
            self._start()
        return await future

    def _start(self) -> None:
        self._draining = asyncio.get_running_loop().create_task(self._drain())
        self._draining.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[None]) -> None:
        """Runs however the task ended, even cancelled before it started (its ``finally`` never ran)."""
        if self._draining is not task:
            return
        self._draining = None
        if any(not future.done() for _, future in self._pending):  # arrived while finishing: start again
            self._start()

    def _take(self) -> list[tuple[list[Span], asyncio.Future[int]]]:
        taken: list[tuple[list[Span], asyncio.Future[int]]] = []
        count = 0
        while self._pending and (not taken or count + len(self._pending[0][0]) <= self.max_spans):
            item = self._pending.pop(0)
            if not item[1].done():  # a cancelled caller's spans are not sent
                taken.append(item)
                count += len(item[0])
        return taken

    async def _drain(self) -> None:
        while self._pending:
            group = self._take()
            if len(group) == 1:
                await self._one(*group[0])
            elif group:
                await self._many(group)

    async def _one(self, spans: list[Span], future: asyncio.Future[int]) -> None:
        self.requests += 1
        try:
            count = await self._send(spans)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not future.done():
                future.set_result(count)

    async def _many(self, group: list[tuple[list[Span], asyncio.Future[int]]]) -> None:
        self.requests += 1
        try:
            await self._send([span for spans, _ in group for span in spans])
        except (StoreUnavailable, asyncio.CancelledError) as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        except (AgentLightningError, ValueError, TypeError, KeyError):
            # The combined batch stored nothing: find whose spans were refused, halving the group.
            half = len(group) // 2
            for part in (group[:half], group[half:]):
                await (self._one(*part[0]) if len(part) == 1 else self._many(part))
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        else:
            for spans, future in group:
                if not future.done():
                    future.set_result(len(spans))
