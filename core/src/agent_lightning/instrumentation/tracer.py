"""The tracer: one store connection per process, with its loop thread, span emitter and heartbeats."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from agent_lightning.errors import LeaseLost
from agent_lightning.instrumentation.emitter import SpanEmitter
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import EventLoopThread

logger = logging.getLogger(__name__)

T = TypeVar("T")

STORE_URL_ENV = "AGL_STORE_URL"


class Tracer:
    """Sends an agent's rollouts and spans to one store without blocking the agent."""

    def __init__(self, store: LightningStore, *, heartbeat_interval: float | None = None) -> None:
        self.store = store
        self.loop = EventLoopThread("agl-tracer")
        self.emitter = SpanEmitter(store, self.loop)
        self._heartbeat_interval = heartbeat_interval
        self._attempts: dict[str, tuple[str, float]] = {}  # attempt id -> (rollout id, lease seconds)
        self._attempts_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._heartbeats = threading.Thread(target=self._heartbeat_loop, name="agl-heartbeat", daemon=True)
        self._heartbeats.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run a store coroutine from synchronous code."""
        return self.loop.run(coro, timeout)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a store coroutine on the tracer's loop from any other event loop."""
        return await asyncio.wrap_future(self.loop.submit(coro))

    def keep_alive(self, rollout_id: str, attempt_id: str, lease_seconds: float) -> None:
        """Heart-beat the attempt until :meth:`release` (so long agent runs keep their lease)."""
        with self._attempts_lock:
            self._attempts[attempt_id] = (rollout_id, lease_seconds)
        self._wake.set()  # re-plan: this lease may be shorter than the current wait

    def release(self, attempt_id: str) -> None:
        with self._attempts_lock:
            self._attempts.pop(attempt_id, None)

    def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            with self._attempts_lock:
                attempts = dict(self._attempts)
            shortest = min((lease for _, lease in attempts.values()), default=30.0)
            interval = self._heartbeat_interval or max(0.05, shortest / 3)
            for attempt_id, (rollout_id, _) in attempts.items():
                try:
                    self.call(self.store.heartbeat(rollout_id, attempt_id), timeout=interval * 2)
                except LeaseLost:
                    logger.error("attempt %s of rollout %s lost its lease; stopping heartbeats", attempt_id, rollout_id)
                    self.release(attempt_id)
                except Exception as exc:
                    logger.warning("heartbeat for attempt %s failed: %s", attempt_id, exc)
            self._wake.wait(interval)
            self._wake.clear()

    def close(self, timeout: float = 30.0) -> None:
        """Deliver pending spans, stop heartbeats, and close the store."""
        self.emitter.close(timeout)
        self._stop.set()
        self._wake.set()
        self._heartbeats.join(timeout=5)
        try:
            self.call(self.store.close(), timeout=10)
        except Exception as exc:
            logger.warning("closing store %s failed: %s", self.store.url, exc)
        self.loop.stop()


_lock = threading.RLock()
_default: Tracer | None = None
_by_store: dict[int, Tracer] = {}


def configure(store: LightningStore | str | None = None, **options: Any) -> Tracer:
    """Set the store that :class:`TrainingContext` writes to by default.

    ``store`` is a :class:`LightningStore` or a URL (``sqlite:///runs.db``);
    without one, ``$AGL_STORE_URL`` is used, else a process-local ``memory://`` store.
    Returns the tracer, whose ``store`` attribute is the store.
    """
    global _default
    resolved = _resolve(store, options)
    with _lock:
        previous, _default = _default, get_tracer(resolved)
    if previous is not None and previous is not _default:
        logger.debug("replaced default store %s with %s", previous.store.url, resolved.url)
    return _default


def _resolve(store: LightningStore | str | None, options: dict[str, Any]) -> LightningStore:
    if isinstance(store, LightningStore):
        return store
    from agent_lightning.store import open_store

    url = store or os.environ.get(STORE_URL_ENV) or "memory://"
    return open_store(url, **options)


def get_tracer(store: LightningStore | None = None) -> Tracer:
    """The tracer for ``store`` (created once per store), or the default tracer."""
    global _default
    with _lock:
        if store is None:
            if _default is None:
                resolved = _resolve(None, {})
                _default = _by_store.get(id(resolved)) or Tracer(resolved)
                _by_store[id(resolved)] = _default
            return _default
        tracer = _by_store.get(id(store))
        if tracer is None or tracer.store is not store:
            tracer = Tracer(store)
            _by_store[id(store)] = tracer
        return tracer


def shutdown(timeout: float = 30.0) -> None:
    """Flush and close every tracer (called at interpreter exit)."""
    global _default
    with _lock:
        tracers = list({id(t): t for t in _by_store.values()}.values())
        _by_store.clear()
        _default = None
    for tracer in tracers:
        tracer.emitter.close(timeout)
