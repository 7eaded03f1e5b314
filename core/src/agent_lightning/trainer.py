"""The Trainer: wires an algorithm to a store, an agent, datasets and runners."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent_lightning.agent import AgentLike, load_agent
from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession
from agent_lightning.datasets import load_dataset
from agent_lightning.instrumentation.tracer import get_tracer
from agent_lightning.metrics import MetricsLogger
from agent_lightning.runner import RunnerPool
from agent_lightning.store.base import LightningStore
from agent_lightning.store.sync import SyncStore
from agent_lightning.types import RolloutConfig

logger = logging.getLogger(__name__)


class Trainer:
    """Train an agent (or train on traces already collected) with an algorithm.

    >>> trainer = Trainer(algorithm=GRPO(config=GRPOConfig()), store="sqlite:///runs.db",
    ...                   agent=my_agent, train_dataset="train.jsonl", val_dataset="val.jsonl", n_runners=4)
    >>> trainer.train(num_iterations=20, eval_interval=5, checkpoint_dir="./checkpoints")

    Without an ``agent``, ``train`` works offline on the finished rollouts in ``store``.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        *,
        store: LightningStore | str | None = None,
        agent: AgentLike | str | None = None,
        train_dataset: str | Path | Iterable[Any] | None = None,
        val_dataset: str | Path | Iterable[Any] | None = None,
        n_runners: int = 1,
        num_gpus: int = 0,
        run_dir: str | Path | None = None,
        task_type: str = "default",
        rollout_config: RolloutConfig | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(algorithm, Algorithm):
            raise TypeError(f"algorithm must be an agent_lightning.Algorithm, got {type(algorithm).__name__}")
        if num_gpus < 0 or n_runners < 1:
            raise ValueError(f"num_gpus must be >= 0 and n_runners >= 1 (got {num_gpus}, {n_runners})")
        self.algorithm = algorithm
        self._store_arg = store
        self.agent = load_agent(agent) if isinstance(agent, str) else agent
        self.train_dataset = load_dataset(train_dataset) if train_dataset is not None else []
        self.val_dataset = load_dataset(val_dataset) if val_dataset is not None else []
        self.n_runners = n_runners
        self.num_gpus = num_gpus
        self.run_dir = Path(run_dir) if run_dir is not None else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        self.task_type = task_type
        self.rollout_config = rollout_config or RolloutConfig()
        self.options = options
        self.result: TrainResult | None = None

    def _open_store(self) -> LightningStore:
        if isinstance(self._store_arg, LightningStore):
            return self._store_arg
        from agent_lightning.store import open_store

        url = self._store_arg or f"sqlite:///{self.run_dir / 'store.db'}"
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return open_store(url)

    def train(
        self,
        num_iterations: int = 1,
        eval_interval: int | None = None,
        checkpoint_dir: str | Path | None = None,
        **options: Mapping[str, Any],
    ) -> TrainResult:
        """Run the algorithm. Ctrl-C stops cleanly: running rollouts finish and stay in the store."""
        if num_iterations < 0:
            raise ValueError(f"num_iterations must be >= 0, got {num_iterations}")
        if eval_interval is not None and eval_interval < 1:
            raise ValueError(f"eval_interval must be >= 1, got {eval_interval}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        store = self._open_store()
        tracer = get_tracer(store)
        sync = SyncStore(store, loop_thread=tracer.loop)
        metrics = MetricsLogger(self.run_dir, config={"algorithm": self.algorithm.name})
        session = TrainSession(
            store=store,
            sync=sync,
            agent=self.agent,
            train_dataset=self.train_dataset,
            val_dataset=self.val_dataset,
            num_iterations=num_iterations,
            eval_interval=eval_interval,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
            run_dir=self.run_dir,
            metrics=metrics,
            num_gpus=self.num_gpus,
            task_type=self.task_type,
            rollout_config=self.rollout_config,
            options={**self.options, **options},
            stop_event=threading.Event(),
        )
        pool = RunnerPool(self.agent, store, self.n_runners) if self.agent is not None else None
        if pool is not None:
            pool.start()
        try:
            self.result = self.algorithm.run(session)
        except KeyboardInterrupt:
            logger.warning("interrupted: stopping runners; finished rollouts stay in %s", store.url)
            session.stop_event.set()
            self.result = TrainResult(iterations=0, metrics=metrics.history, interrupted=True)
        finally:
            if pool is not None:
                pool.stop()
            tracer.emitter.flush(30)
            metrics.close()
        return self.result

    fit = train
