"""The tracer: one store connection per process, with its loop thread, span emitter and heartbeats.

At interpreter exit, :func:`shutdown` (registered with :mod:`atexit` when the first tracer
is created) gives pending spans and unfinished rollouts up to :data:`EXIT_TIMEOUT` seconds
(``$AGL_EXIT_TIMEOUT``) to reach the store, then logs a warning with what could not be delivered.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from agent_lightning.errors import LeaseLost
from agent_lightning.instrumentation.emitter import EmitterStats, SpanEmitter
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import EventLoopThread

logger = logging.getLogger(__name__)

T = TypeVar("T")

STORE_URL_ENV = "AGL_STORE_URL"
EXIT_TIMEOUT_ENV = "AGL_EXIT_TIMEOUT"
EXIT_TIMEOUT = 5.0
"""Seconds :func:`shutdown` waits at interpreter exit for pending spans and rollouts before reporting them lost
(``$AGL_EXIT_TIMEOUT`` overrides it)."""


class BackgroundWork(Protocol):
    """Store work a tracer finishes in the background (a TrainingContext's rollout bookkeeping)."""

    def wait(self, timeout: float | None) -> bool:
        """Wait until the work is done; ``False`` on timeout."""
        ...

    def describe(self) -> str:
        """What is left to do, for the report of what could not be recorded."""
        ...


class Tracer:
    """Sends an agent's rollouts and spans to one store without blocking the agent."""

    def __init__(self, store: LightningStore, *, heartbeat_interval: float | None = None) -> None:
        self.store = store
        self.loop = EventLoopThread("agl-tracer")
        self.emitter = SpanEmitter(store, self.loop)
        self.stopping = threading.Event()
        """Set by :meth:`shutdown`: background work stops retrying an unreachable store."""
        self._heartbeat_interval = heartbeat_interval
        self._attempts: dict[str, tuple[str, float]] = {}  # attempt id -> (rollout id, lease seconds)
        self._attempts_lock = threading.Lock()
        self._work: set[BackgroundWork] = set()
        self._work_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._heartbeats = threading.Thread(target=self._heartbeat_loop, name="agl-heartbeat", daemon=True)
        self._heartbeats.start()
        _register_exit()

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
        """Stop heart-beating the attempt."""
        with self._attempts_lock:
            self._attempts.pop(attempt_id, None)

    def track(self, work: BackgroundWork) -> None:
        """Count ``work`` as unfinished until :meth:`untrack`; :meth:`shutdown` waits for it and reports it."""
        with self._work_lock:
            self._work.add(work)

    def untrack(self, work: BackgroundWork) -> None:
        """``work`` is done (or gave up and reported why)."""
        with self._work_lock:
            self._work.discard(work)

    def unfinished(self) -> list[BackgroundWork]:
        """Background work that has not finished yet."""
        with self._work_lock:
            return list(self._work)

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
                    with self._attempts_lock:  # released meanwhile: it finished, and the store said so
                        lost = self._attempts.pop(attempt_id, None) is not None
                    if lost:
                        logger.error("attempt %s of rollout %s lost its lease", attempt_id, rollout_id)
                except Exception as exc:
                    logger.warning("heartbeat for attempt %s failed: %s", attempt_id, exc)
            self._wake.wait(interval)
            self._wake.clear()

    def shutdown(self, timeout: float = EXIT_TIMEOUT) -> EmitterStats:
        """Give unfinished rollouts and pending spans up to ``timeout`` seconds, then stop retrying.

        Logs a warning naming what could not be recorded (undelivered span counts, rollouts
        never created or completed) and returns the emitter's final counts. The store stays open.
        """
        _forget(self)  # contexts opened from now on get a new tracer
        deadline = time.monotonic() + timeout
        for work in self.unfinished():
            work.wait(max(0.0, deadline - time.monotonic()))
        self.stopping.set()
        stats = self.emitter.close(max(0.0, deadline - time.monotonic()))  # logs undelivered spans
        left = [work.describe() for work in self.unfinished()]
        if left:
            logger.warning(
                "agent-lightning could not record %d rollout(s) in %s within %.1fs: %s. A rollout never created "
                "is not in the store at all; an attempt never completed is reaped as lost when its lease expires. "
                "Check that the store is reachable",
                len(left),
                self.emitter.store_name,
                timeout,
                "; ".join(left),
            )
        self._stop.set()
        self._wake.set()
        self._heartbeats.join(timeout=max(0.1, deadline - time.monotonic()))
        return stats

    def close(self, timeout: float = EXIT_TIMEOUT) -> EmitterStats:
        """:meth:`shutdown`, then close the store and stop the loop thread."""
        stats = self.shutdown(timeout)
        try:
            self.call(self.store.close(), timeout=10)
        except Exception as exc:
            logger.warning("closing store %s failed: %s", self.store.url, exc)
        self.loop.stop()
        return stats


_lock = threading.RLock()
_tracers: dict[str | int | None, Tracer] = {}
"""Tracers by store URL, by ``id()`` of a store object, and under ``None`` the default one."""


def _forget(tracer: Tracer) -> None:
    with _lock:
        for key in [k for k, t in _tracers.items() if t is tracer]:
            del _tracers[key]


@functools.cache
def _register_exit() -> None:
    atexit.register(_at_exit)


def _at_exit() -> None:
    try:
        timeout = float(os.environ.get(EXIT_TIMEOUT_ENV) or EXIT_TIMEOUT)
    except ValueError:
        timeout = EXIT_TIMEOUT
    shutdown(timeout)


def configure(store: LightningStore | str | None = None, **options: Any) -> Tracer:
    """Set the store that :class:`TrainingContext` writes to by default.

    ``store`` is a :class:`LightningStore` or a URL (``sqlite:///runs.db``);
    without one, ``$AGL_STORE_URL`` is used, else a process-local ``memory://`` store.
    Returns the tracer, whose ``store`` attribute is the store.
    """
    resolved = _resolve(store, options)
    with _lock:
        tracer = _tracers[None] = get_tracer(resolved)
    return tracer


def _resolve(store: LightningStore | str | None, options: dict[str, Any]) -> LightningStore:
    if isinstance(store, LightningStore):
        return store
    from agent_lightning.store import open_store

    url = store or os.environ.get(STORE_URL_ENV) or "memory://"
    return open_store(url, **options)


def get_tracer(store: LightningStore | str | None = None) -> Tracer:
    """The tracer for ``store`` (created once per store object or URL), or the default tracer.

    A tracer that was shut down is forgotten: the next call creates a new one.
    """
    with _lock:
        key = id(store) if isinstance(store, LightningStore) else store
        tracer = _tracers.get(key)
        if tracer is None or (isinstance(store, LightningStore) and tracer.store is not store):
            resolved = _resolve(store, {})
            tracer = _tracers.get(id(resolved))
            if tracer is None or tracer.store is not resolved:
                tracer = _tracers[id(resolved)] = Tracer(resolved)
            _tracers[key] = tracer
        return tracer


def shutdown(timeout: float = EXIT_TIMEOUT) -> None:
    """Flush every tracer for up to ``timeout`` seconds in all, and log what could not be delivered.

    Registered with :mod:`atexit`; call it yourself to flush earlier. Later contexts get new tracers.
    """
    with _lock:
        tracers = list({id(t): t for t in _tracers.values()}.values())
        _tracers.clear()
    deadline = time.monotonic() + timeout
    for tracer in tracers:
        tracer.shutdown(max(0.0, deadline - time.monotonic()))
