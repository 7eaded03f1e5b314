"""Wake coroutines waiting in any thread's event loop when the store may have changed."""

from __future__ import annotations

import asyncio
import threading


class Waker:
    """A change counter that waiters in any event loop can sleep on.

    Read :attr:`version` before looking at the data, then ``await wait(version, timeout)``:
    it returns at once if a change was signalled in between, so no wake-up is lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> None:
        """Signal a change (from any thread)."""
        with self._lock:
            self._version += 1
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed; its waiter is gone
                pass

    async def wait(self, version: int, timeout: float | None) -> None:
        """Sleep until a change after ``version`` is signalled, or ``timeout`` seconds pass."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._version != version:
                return
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
