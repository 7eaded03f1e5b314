"""A synchronous facade over any (asynchronous) store, for scripts and threads."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from agent_lightning.store.base import LightningStore

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
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class SyncStore:
    """Every coroutine method of the wrapped store, as a blocking method.

    >>> store = SyncStore(InMemoryLightningStore())
    >>> rollout = store.enqueue_rollout({"question": "2+2"})

    Calls run on one private event loop thread, so a store whose connections
    belong to one loop is always used from that loop.
    """

    def __init__(self, store: LightningStore, *, loop_thread: EventLoopThread | None = None) -> None:
        self.store = store
        self._owns_loop = loop_thread is None
        self._loop = loop_thread or EventLoopThread("agl-sync-store")

    def __getattr__(self, name: str) -> Callable[..., Any]:
        attribute = getattr(self.store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute  # type: ignore[no-any-return]

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(attribute(*args, **kwargs))

        return call

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run any awaitable on the store's loop."""

        async def wrapper() -> T:
            return await awaitable

        return self._loop.run(wrapper())

    def close(self) -> None:
        """Close the store and stop the loop thread."""
        try:
            self._loop.run(self.store.close())
        finally:
            if self._owns_loop:
                self._loop.stop()

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
