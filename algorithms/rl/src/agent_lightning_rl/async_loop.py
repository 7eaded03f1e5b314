"""Asynchronous collection: a collector thread runs the next batch's rollouts while the learner trains.

:class:`RolloutCollector` (rank 0 only) runs batch after batch of rollouts in a background thread: for batch ``k``
it waits for admission (:class:`~.staleness.AdmissionGate`: version ``k - max_staleness`` served), enqueues
``group_size`` rollouts of each of the batch's tasks at once (GRPO groups are admitted whole, under one version),
waits for all of them and builds their samples. The learner takes batches in order (:meth:`RolloutCollector.take`)
and, after each update, syncs the new weights into the engine and advances the gate. The engine
swaps weights between generation batches: requests in flight finish on the version they started with, later calls
of the same rollout get the new one, and each LLM span records the version that answered it.

Every batch's rollout ids are kept until the batch is trained; a checkpoint lists the untrained ones
(``async_pending``) so that a resumed run trains exactly those rollouts next, never running their tasks again.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_lightning.algorithm import TrainSession
from agent_lightning.types import RolloutRequest, Sample

from .staleness import AdmissionGate

if TYPE_CHECKING:
    from .base import RLAlgorithm

logger = logging.getLogger(__name__)

PENDING_KEY = "async_pending"
"""Trainer-state key of a checkpoint: ``{batch index: [rollout ids]}`` collected but not trained yet."""


@dataclass(frozen=True)
class Placement:
    """Intra-op threads of the engine's generation thread and of the learner.

    The engine keeps ``engine_threads``; the learner uses ``learner_threads`` while the collector is generating and
    all ``available`` threads while the engine is idle (it asks before each micro-batch).
    """

    engine_threads: int
    learner_threads: int
    available: int

    @classmethod
    def split(cls, available: int, engine_threads: int | None) -> Placement:
        """The engine gets ``engine_threads`` (default half, rounded down, at least 1); the learner the rest."""
        engine = engine_threads if engine_threads is not None else max(1, available // 2)
        return cls(engine, max(1, available - engine), max(1, available))

    def metrics(self) -> dict[str, float]:
        return {
            "placement/engine_threads": float(self.engine_threads),
            "placement/learner_threads": float(self.learner_threads),
            "placement/learner_threads_engine_idle": float(self.available),
            "placement/cpus": float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0),
        }


@dataclass
class CollectedBatch:
    """One batch's samples (built from its finished rollouts), metrics and rollout ids."""

    index: int
    samples: list[Sample]
    metrics: dict[str, float]
    rollout_ids: list[str]
    admitted_version: int


@dataclass
class _Failure:
    error: BaseException


@dataclass
class RolloutCollector:
    """Collects batches ``start``, ``start + 1``, … ``stop_at - 1`` in a background thread (see the module doc).

    ``pending`` (from a checkpoint) gives the rollout ids of batches collected before an interruption: those
    batches wait for these rollouts instead of enqueueing new ones.
    """

    algorithm: RLAlgorithm
    session: TrainSession
    proxy: Any
    tasks: Iterator[list[Any]]
    gate: AdmissionGate
    start: int
    stop_at: int
    resources_id: str
    pending: Mapping[int, list[str]] = field(default_factory=dict)
    poll_s: float = 0.5
    _ready: queue.Queue[CollectedBatch | _Failure] = field(default_factory=queue.Queue)
    _ledger: dict[int, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _busy: threading.Event = field(default_factory=threading.Event)

    def begin(self) -> RolloutCollector:
        self._thread = threading.Thread(target=self._run, name="agl-rl-collector", daemon=True)
        self._thread.start()
        return self

    @property
    def busy(self) -> bool:
        """Whether a batch is being collected (admitted, not all its rollouts finished)."""
        return self._busy.is_set()

    def advance(self, version: int, resources_id: str) -> None:
        """The learner published ``version`` (as ``resources_id``); later batches use it."""
        with self._lock:
            self.resources_id = resources_id
        self.gate.advance(version)

    def take(self, index: int) -> CollectedBatch:
        """Batch ``index`` (blocking); re-raises the collector's error."""
        while True:
            try:
                item = self._ready.get(timeout=self.poll_s)
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("the rollout collector stopped before delivering a batch") from None
                continue
            if isinstance(item, _Failure):
                raise item.error
            if item.index != index:
                raise RuntimeError(f"the collector delivered batch {item.index}, the learner expected {index}")
            return item

    def trained(self, index: int) -> None:
        """Batch ``index`` was trained: forget its rollouts."""
        with self._lock:
            self._ledger.pop(index, None)

    def untrained(self) -> dict[int, list[str]]:
        """Rollout ids of the batches enqueued (or adopted) but not trained, by batch index."""
        with self._lock:
            return {k: list(v) for k, v in sorted(self._ledger.items())}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop admitting batches and stop waiting for rollouts; rollouts already enqueued stay in the store."""
        self._stop.set()
        self.gate.close()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the collector thread
    def _run(self) -> None:
        try:
            for index in range(self.start, self.stop_at):
                tasks = next(self.tasks)  # advanced for adopted batches too: the task order stays the same
                waited = time.perf_counter()
                if not self.gate.admit(index):
                    return
                admission_wait = time.perf_counter() - waited
                admitted = self.gate.version
                started = time.perf_counter()
                self._busy.set()
                ids = self.pending.get(index)
                if ids is None:
                    ids = self._enqueue(index, tasks)
                else:
                    logger.info("batch %d: training the %d rollouts collected before the interruption", index, len(ids))
                    with self._lock:
                        self._ledger[index] = list(ids)
                rollouts = self._wait(ids)
                self._busy.clear()
                if rollouts is None:
                    return
                rollout_s = time.perf_counter() - started
                samples, metrics = self.algorithm._samples_from(self.session, rollouts, self.proxy)
                metrics["time/rollout_s"] = rollout_s
                metrics["time/admission_wait_s"] = admission_wait
                metrics["train/admitted_version"] = float(admitted)
                self._ready.put(CollectedBatch(index, samples, metrics, list(ids), admitted))
        except BaseException as exc:  # the learner re-raises it from take()
            self._ready.put(_Failure(exc))

    def _enqueue(self, index: int, tasks: list[Any]) -> list[str]:
        cfg = self.algorithm.config
        session = self.session
        with self._lock:
            resources_id = self.resources_id
        tag = uuid.uuid4().hex[:8]
        requests = [
            RolloutRequest(
                input=task,
                task_type=session.task_type,
                mode="train",
                resources_id=resources_id,
                config=session.rollout_config,
                metadata={"group_id": f"train-{index}-{t}-{tag}", "batch": index},
            )
            for t, task in enumerate(tasks)
            for _ in range(cfg.group_size)
        ]
        rollouts = session.sync.enqueue_rollouts(requests)
        ids = [r.rollout_id for r in rollouts]
        with self._lock:
            self._ledger[index] = ids
        return ids

    def _wait(self, ids: list[str]) -> list[Any] | None:
        """The rollouts once all are finished (those past ``rollout_timeout`` cancelled and left out); ``None``
        when stopped first."""
        timeout = self.algorithm.config.rollout_timeout
        deadline = time.monotonic() + timeout if timeout is not None else None
        finished: dict[str, Any] = {}
        while len(finished) < len(ids):
            if self._stop.is_set():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                for rollout_id in ids:
                    if rollout_id not in finished:
                        try:
                            self.session.sync.cancel_rollout(rollout_id)
                        except Exception:
                            pass
                break
            waiting = [r for r in ids if r not in finished]
            for rollout in self.session.sync.wait_for_rollouts(waiting, timeout=self.poll_s):
                finished[rollout.rollout_id] = rollout
        return [finished[r] for r in ids if r in finished]
