"""Wake asyncio waiters in any thread's event loop when a store changes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ChangeNotifier:
    """A condition variable that works across threads and event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def notify_all(self) -> None:
        """Wake every waiter (call after each change)."""
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed; its waiter is gone
                with self._lock:
                    self._waiters.discard((loop, event))

    async def wait_for(self, check: Callable[[], T | None], timeout: float | None) -> T | None:
        """Return ``check()``'s first non-None result, or ``None`` when ``timeout`` passes."""
        result = check()
        if result is not None or timeout == 0:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:
            while True:
                entry[1].clear()
                result = check()
                if result is not None:
                    return result
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                # Wake at least every second so lease expiry is noticed without a writer.
                wait = 1.0 if remaining is None else min(remaining, 1.0)
                try:
                    await asyncio.wait_for(entry[1].wait(), wait)
                except asyncio.TimeoutError:
                    pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
