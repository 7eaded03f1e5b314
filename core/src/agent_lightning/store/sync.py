"""A synchronous facade over any (asynchronous) store, for scripts and threads."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from agent_lightning.store.base import LightningStore

T = TypeVar("T")
_P = ParamSpec("_P")


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


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of the wrapped store (a backend's override included), run to completion on the loop."""

    def call(self: SyncStore, /, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(getattr(self.store, name)(*args, **kwargs))

    functools.update_wrapper(call, method)  # name, docstring, and the contract's signature for help()
    call.__qualname__ = f"SyncStore.{name}"
    return call


if TYPE_CHECKING:

    class _Blocking(Generic[_P, T]):
        """For type checkers: a store coroutine method seen as the blocking call ``SyncStore`` makes of it."""

        def __init__(self, method: Callable[Concatenate[Any, _P], Awaitable[T]]) -> None: ...
        def __get__(self, obj: object, owner: type | None = None) -> Callable[_P, T]: ...


class SyncStore:
    """Every public method of :class:`~agent_lightning.store.base.LightningStore`, as a blocking call.

    >>> store = SyncStore(InMemoryLightningStore())
    >>> rollout = store.enqueue_rollout({"question": "2+2"})

    The blocking methods are derived from the contract when this module loads: each calls the
    wrapped store's method of the same name with the same arguments. Calls run on one private
    event loop thread (or ``loop_thread``), so a store whose connections belong to one loop is
    always used from that loop. For a backend's own extra coroutines, use :meth:`run`:
    ``sync.run(sync.store.extra())``.
    """

    if TYPE_CHECKING:
        # The static view for mypy: parameters and result types come from the contract's signatures.
        # At run time every public coroutine method of the contract is derived, one not listed here included.
        enqueue_rollouts = _Blocking(LightningStore.enqueue_rollouts)
        enqueue_rollout = _Blocking(LightningStore.enqueue_rollout)
        start_rollout = _Blocking(LightningStore.start_rollout)
        claim_rollout = _Blocking(LightningStore.claim_rollout)
        claim_rollouts = _Blocking(LightningStore.claim_rollouts)
        heartbeat = _Blocking(LightningStore.heartbeat)
        complete_attempt = _Blocking(LightningStore.complete_attempt)
        complete_attempts = _Blocking(LightningStore.complete_attempts)
        cancel_rollout = _Blocking(LightningStore.cancel_rollout)
        reap_expired = _Blocking(LightningStore.reap_expired)
        get_rollout = _Blocking(LightningStore.get_rollout)
        query_rollouts = _Blocking(LightningStore.query_rollouts)
        count_rollouts = _Blocking(LightningStore.count_rollouts)
        get_attempts = _Blocking(LightningStore.get_attempts)
        wait_for_rollouts = _Blocking(LightningStore.wait_for_rollouts)
        add_spans = _Blocking(LightningStore.add_spans)
        add_span = _Blocking(LightningStore.add_span)
        query_spans = _Blocking(LightningStore.query_spans)
        add_resources = _Blocking(LightningStore.add_resources)
        get_resources = _Blocking(LightningStore.get_resources)
        get_latest_resources = _Blocking(LightningStore.get_latest_resources)
        subscribe = _Blocking(LightningStore.subscribe)
        pull_completed = _Blocking(LightningStore.pull_completed)
        ack_completed = _Blocking(LightningStore.ack_completed)
        list_subscriptions = _Blocking(LightningStore.list_subscriptions)

    def __init__(self, store: LightningStore, *, loop_thread: EventLoopThread | None = None) -> None:
        self.store = store
        self._owns_loop = loop_thread is None
        self._loop = loop_thread or EventLoopThread("agl-sync-store")

    @property
    def url(self) -> str:
        """The wrapped store's URL."""
        return self.store.url

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


for _name, _method in inspect.getmembers(LightningStore, inspect.iscoroutinefunction):
    if not _name.startswith("_") and _name not in SyncStore.__dict__:
        setattr(SyncStore, _name, _blocking(_name, _method))
