"""The Algorithm interface, and the session a Trainer hands an algorithm.

An algorithm plugin subclasses :class:`Algorithm` and implements
:meth:`Algorithm.run`. The :class:`TrainSession` gives it everything else:
the store, the datasets, runners executing the agent, resource publishing,
trajectory building, metrics, and the stop signal (Ctrl-C).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from agent_lightning.agent import AgentLike
from agent_lightning.metrics import MetricsLogger
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import SyncStore
from agent_lightning.trajectory import build_episode
from agent_lightning.types import (
    Episode,
    Resource,
    ResourcesSnapshot,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutRequest,
)


@dataclass
class TrainResult:
    """What a training run produced."""

    iterations: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    interrupted: bool = False


@dataclass
class TrainSession:
    """Everything an algorithm needs during :meth:`Algorithm.run`."""

    store: LightningStore
    sync: SyncStore
    agent: AgentLike | None
    train_dataset: list[Any]
    val_dataset: list[Any]
    num_iterations: int
    eval_interval: int | None
    checkpoint_dir: Path | None
    run_dir: Path
    metrics: MetricsLogger
    num_gpus: int = 0
    task_type: str = "default"
    rollout_config: RolloutConfig = field(default_factory=RolloutConfig)
    options: dict[str, Any] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def offline(self) -> bool:
        """No agent: train only on traces already in the store."""
        return self.agent is None

    @property
    def stopping(self) -> bool:
        """Set on Ctrl-C: finish the current step, save, and return."""
        return self.stop_event.is_set()

    def publish_resources(
        self, resources: Mapping[str, Resource], metadata: Mapping[str, Any] | None = None
    ) -> ResourcesSnapshot:
        """Store a new resources version; rollouts enqueued afterwards use it."""
        return self.sync.add_resources(resources, metadata)

    def run_rollouts(
        self,
        tasks: Sequence[Any],
        *,
        mode: RolloutMode = "train",
        group_size: int = 1,
        resources_id: str | None = None,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Rollout]:
        """Enqueue ``group_size`` rollouts per task, wait for the runners to finish them, return them.

        Rollouts of one task share ``metadata["group_id"]`` (GRPO's group). Rollouts
        still unfinished after ``timeout`` are cancelled and left out.
        """
        if self.agent is None:
            raise RuntimeError("this Trainer has no agent, so it cannot run rollouts; pass agent=… to Trainer")
        requests = []
        for index, task in enumerate(tasks):
            group = f"{mode}-{index}-{id(tasks)}-{len(self.metrics.history)}"
            for _ in range(group_size):
                requests.append(
                    RolloutRequest(
                        input=task,
                        task_type=self.task_type,
                        mode=mode,
                        resources_id=resources_id,
                        config=self.rollout_config,
                        metadata={**(metadata or {}), "group_id": group},
                    )
                )
        rollouts = self.sync.enqueue_rollouts(requests)
        ids = [r.rollout_id for r in rollouts]
        finished = {r.rollout_id: r for r in self.sync.wait_for_rollouts(ids, timeout=timeout)}
        for rollout_id in ids:
            if rollout_id not in finished:
                try:
                    self.sync.cancel_rollout(rollout_id)
                except Exception:
                    pass
        return [finished[r] for r in ids if r in finished]

    def episodes(self, rollouts: Sequence[Rollout], **options: Any) -> list[Episode]:
        """Build each rollout's episode (see :func:`agent_lightning.trajectory.build_episode`)."""
        return [build_episode(r, self.sync.query_spans(r.rollout_id), **options) for r in rollouts]

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.metrics.log(step, dict(metrics))


_C = TypeVar("_C", bound=BaseModel)


class Algorithm(ABC):
    """Base class of training algorithms (PPO, GRPO, prompt optimizers, …)."""

    name: str = "algorithm"

    def _configure(self, config_class: type[_C], config: _C | None, overrides: Mapping[str, Any]) -> _C:
        """``config`` (a new ``config_class`` when ``None``) with ``overrides``; another class is a TypeError."""
        if config is None:
            return config_class(**overrides)
        if not isinstance(config, config_class):
            raise TypeError(f"{type(self).__name__} takes a {config_class.__name__}, got {type(config).__name__}")
        return config.model_copy(update=dict(overrides)) if overrides else config

    @abstractmethod
    def run(self, session: TrainSession) -> TrainResult:
        """Train for ``session.num_iterations`` iterations and return the result."""
