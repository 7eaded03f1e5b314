"""Runners: workers that claim rollouts from a store and run an agent on each."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence

from agent_lightning.agent import AgentLike, agent_name, run_agent
from agent_lightning.instrumentation.context import TrainingContext
from agent_lightning.instrumentation.spans import emit_reward
from agent_lightning.instrumentation.tracer import get_tracer
from agent_lightning.store.base import LightningStore
from agent_lightning.types import AttemptedRollout, Reward, RolloutMode

logger = logging.getLogger(__name__)


def default_worker_id(index: int = 0) -> str:
    """A worker id unique on this machine: ``HOST-PID-INDEX``."""
    return f"{socket.gethostname()}-{os.getpid()}-{index}"


class Runner:
    """Claims rollouts and runs ``agent`` on each inside a :class:`TrainingContext`.

    A failing agent fails its attempt (the store retries it up to
    ``max_attempts``); the runner itself keeps going. A store that cannot be reached keeps it
    retrying once it has claimed from it; if the very first claim fails, :meth:`run` raises.
    """

    def __init__(
        self,
        agent: AgentLike,
        store: LightningStore,
        *,
        worker_id: str | None = None,
        task_types: Sequence[str] | None = None,
        modes: Sequence[RolloutMode] | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        self.agent = agent
        self.store = store
        self.worker_id = worker_id or default_worker_id()
        self.task_types = list(task_types) if task_types is not None else None
        self.modes = list(modes) if modes is not None else None
        self.poll_interval = poll_interval
        self.completed = 0
        self.failed = 0
        self.claim_error: Exception | None = None
        """Why the last claim failed (``None`` after one that worked)."""
        self._claimed = False
        self._tracer = get_tracer(store)
        self._shared: _SharedClaims | None = None

    def claim(self) -> AttemptedRollout | None:
        """Claim the next rollout of this runner's task types and modes; ``None`` when nothing is claimable."""
        if self._shared is not None:
            return self._shared.claim(self)
        return self._tracer.call(self.store.claim_rollout(self.worker_id, task_types=self.task_types, modes=self.modes))

    def claim_many(self, limit: int) -> list[AttemptedRollout]:
        """Claim up to ``limit`` rollouts in one store call (one ``claim_rollout`` call when ``limit`` is 1)."""
        if limit == 1:
            item = self._tracer.call(
                self.store.claim_rollout(self.worker_id, task_types=self.task_types, modes=self.modes)
            )
            return [] if item is None else [item]
        claim = self.store.claim_rollouts(self.worker_id, limit, task_types=self.task_types, modes=self.modes)
        return self._tracer.call(claim)

    def run_one(self, attempted: AttemptedRollout) -> bool:
        """Run the agent on one claimed rollout; ``True`` if it succeeded."""
        rollout = attempted.rollout
        try:
            with TrainingContext(
                rollout.task_type, store=self.store, rollout=attempted, agent_name=agent_name(self.agent)
            ) as ctx:
                result = asyncio.run(run_agent(self.agent, rollout.input, ctx))
                if result is not None and not ctx.rewards:
                    if isinstance(result, bool) or not isinstance(result, (int, float, dict)):
                        raise TypeError(
                            f"the agent returned {type(result).__name__}; return a reward (float or dict) or None"
                        )
                    emit_reward(Reward(value=result).value)
                elif result is None and not ctx.rewards:
                    logger.warning(
                        "rollout %s finished without a reward: return one from the agent or call agl.emit_reward",
                        rollout.rollout_id,
                    )
        except Exception as exc:
            self.failed += 1
            logger.warning("rollout %s attempt %s failed: %r", rollout.rollout_id, attempted.attempt_id, exc)
            return False
        self.completed += 1
        return True

    def run(
        self,
        *,
        max_rollouts: int | None = None,
        stop: threading.Event | None = None,
        idle_timeout: float | None = None,
    ) -> int:
        """Process rollouts until ``stop`` is set, ``max_rollouts`` ran, or nothing came for ``idle_timeout`` s."""
        done = 0
        idle_since = time.monotonic()
        limit = math.inf if max_rollouts is None else max_rollouts
        stop = stop or threading.Event()
        while done < limit and not stop.is_set():
            try:
                attempted = self.claim()
            except Exception as exc:
                self.claim_error = exc
                if not self._claimed:
                    raise
                logger.warning("runner %s could not claim from %s: %s", self.worker_id, self.store.url, exc)
                attempted = None
            else:
                self.claim_error, self._claimed = None, True
            if attempted is None:
                if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                    break
                stop.wait(self.poll_interval)
                continue
            self.run_one(attempted)
            done += 1
            idle_since = time.monotonic()
        return done


class _SharedClaims:
    """The claims of a pool's runners: one store call claims a rollout for every runner waiting for one.

    One claim is in flight at a time. A runner that needs a rollout while a claim is in flight waits
    for it; the next claim, made by one of the waiting runners, asks for as many rollouts as runners
    wait then (``claim_rollouts``), and hands one to each. A rollout is only claimed for a runner
    that waits to start it, so its lease never runs while it sits in a queue of this process. The
    attempts one call claims carry the worker id of the runner that made it.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting = 0
        self._ready: deque[AttemptedRollout] = deque()
        self._claiming = False
        self._started = 0  # claims started so far (the one in flight included)
        self._finished = 0  # claims finished so far
        self._last_short = False  # whether the last finished claim got fewer rollouts than it asked for

    def claim(self, runner: Runner) -> AttemptedRollout | None:
        """A rollout for ``runner``: from a claim in flight, or from a claim it makes for every waiting runner."""
        with self._changed:
            self._waiting += 1
            arrived = self._started
            try:
                while True:
                    if self._ready:
                        return self._ready.popleft()
                    if self._finished > arrived and self._last_short:
                        return None  # a claim that counted this runner found nothing left for it
                    if not self._claiming:
                        break
                    self._changed.wait()
                self._claiming = True
                self._started += 1
                wanted = self._waiting
            finally:
                self._waiting -= 1
        claimed: list[AttemptedRollout] = []
        try:
            claimed = runner.claim_many(wanted)
        finally:
            with self._changed:
                self._claiming = False
                self._finished = self._started
                self._last_short = len(claimed) < wanted
                self._ready.extend(claimed[1:])
                self._changed.notify_all()
        return claimed[0] if claimed else None


class RunnerPool:
    """``n`` runner threads sharing one store, started and stopped together.

    The runners claim together (see :class:`_SharedClaims`): one store call claims a rollout for
    each runner that waits for one, instead of one call per runner.
    """

    def __init__(self, agent: AgentLike, store: LightningStore, n: int = 1, **options: object) -> None:
        if n < 1:
            raise ValueError(f"a runner pool needs at least one runner, got n={n}")
        self.runners = [
            Runner(agent, store, worker_id=default_worker_id(i), **options)  # type: ignore[arg-type]
            for i in range(n)
        ]
        if n > 1:
            shared = _SharedClaims()
            for runner in self.runners:
                runner._shared = shared
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> RunnerPool:
        """Start one thread per runner; returns the pool."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=r.run, kwargs={"stop": self._stop}, name=f"agl-runner-{i}", daemon=True)
            for i, r in enumerate(self.runners)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        """Let running rollouts finish, then stop."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self) -> RunnerPool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
