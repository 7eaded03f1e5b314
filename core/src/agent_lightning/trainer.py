"""The Trainer: wires an algorithm to a store, an agent, datasets and runners."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent_lightning.agent import AgentLike, LitAgent, as_agent
from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession
from agent_lightning.datasets import load_dataset
from agent_lightning.errors import PluginError
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

    :param store: a store or its URL; default ``sqlite:///RUN_DIR/store.db`` (needs ``agent-lightning-sqlite``).
    :param agent: a function, a ``LitAgent`` instance or subclass (created with no arguments), a
        ``"module:attribute"`` reference or a script path (run as a :class:`~agent_lightning.agent.ScriptAgent`).
    :param model: the policy model to train (name or path), set as the algorithm's ``config.model``; an algorithm
        without a ``model`` setting is an error.
    :param num_gpus: GPUs to train on; the algorithm maps them onto processes (for PPO/GRPO: one per GPU, started
        by the trainer itself unless under ``torchrun``). Under a launcher that sets ``RANK``, only rank 0 starts
        runners: the other ranks train on the data rank 0 collects.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        *,
        store: LightningStore | str | None = None,
        agent: AgentLike | type[LitAgent] | str | None = None,
        model: str | Path | None = None,
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
        if model is not None:
            _set_model(algorithm, str(model))
        self.algorithm = algorithm
        self._store_arg = store
        self.agent = as_agent(agent) if agent is not None else None
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

        default = self._store_arg is None
        url = self._store_arg or f"sqlite:///{self.run_dir / 'store.db'}"
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        try:
            return open_store(url)
        except PluginError as exc:
            if not default:
                raise
            raise PluginError(
                f"the Trainer's default store is {url}, which needs the SQLite backend: "
                "`pip install agent-lightning-sqlite`, or pass store= "
                f"(a LightningStore, 'memory://', 'postgresql://…', 'redis://…'). {exc}"
            ) from exc

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
        # under torchrun (RANK set) every rank runs this; the rollouts are rank 0's alone
        main_rank = int(os.environ.get("RANK", "0")) == 0
        pool = RunnerPool(self.agent, store, self.n_runners) if self.agent is not None and main_rank else None
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


def _set_model(algorithm: Algorithm, model: str) -> None:
    """Set ``algorithm.config.model`` (a pydantic model or a dataclass) to ``model``."""
    config = getattr(algorithm, "config", None)
    fields: Iterable[str] = ()
    if config is not None and hasattr(type(config), "model_fields"):
        fields = type(config).model_fields
    elif config is not None and dataclasses.is_dataclass(config):
        fields = [f.name for f in dataclasses.fields(config)]
    if "model" not in fields:
        raise TypeError(
            f"Trainer(model=…) sets the algorithm's config.model, but {type(algorithm).__name__} has no model "
            "setting; configure the model through the algorithm instead"
        )
    assert config is not None
    current = getattr(config, "model", None)
    explicit = "model" in getattr(config, "model_fields_set", ())
    if explicit and current != model:
        raise ValueError(f"the model is given twice: Trainer(model={model!r}) and config.model={current!r}")
    if hasattr(config, "model_copy"):
        algorithm.config = config.model_copy(update={"model": model})  # type: ignore[attr-defined]
    else:
        algorithm.config = dataclasses.replace(config, model=model)  # type: ignore[attr-defined]
