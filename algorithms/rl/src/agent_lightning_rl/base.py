"""The training loop shared by PPO and GRPO: online (rollouts through the proxy and the policy server) or offline.

Online, per iteration: pick tasks, run ``group_size`` rollouts of each with the current weights, build episodes
from the spans (captured token ids), compute advantages, update, publish the new weights (a new resources version
that the policy server swaps in), log metrics; evaluate and checkpoint every ``eval_interval`` iterations.
Offline (no agent): train on the finished rollouts already in the store.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession
from agent_lightning.errors import NoTrainingData
from agent_lightning.trajectory import ensure_training_data
from agent_lightning.types import LLM, Episode, Resource, ResourcesSnapshot, Rollout, Sample

from .advantages import drop_stale, select_samples
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .config import RLConfig
from .distributed import barrier, broadcast, choose_device, init_distributed, shard
from .learner import PolicyLearner, Scored, merged_weights

logger = logging.getLogger(__name__)

VERSION_KEY = "agl.policy_version"


def episode_metrics(episodes: Sequence[Episode], prefix: str, success_threshold: float) -> dict[str, float]:
    """Reward mean/std, success rate and counts of ``episodes``."""
    rewards = torch.tensor([e.reward for e in episodes if e.reward is not None], dtype=torch.float64)
    out: dict[str, float] = {f"{prefix}/rollouts": float(len(episodes))}
    if len(rewards):
        out[f"{prefix}/reward_mean"] = float(rewards.mean())
        out[f"{prefix}/reward_std"] = float(rewards.std()) if len(rewards) > 1 else 0.0
        out[f"{prefix}/success_rate"] = float((rewards >= success_threshold).double().mean())
    return out


class RLAlgorithm(Algorithm):
    """Base of :class:`~agent_lightning_rl.ppo.ProximalPolicyOptimization` and GRPO (see the module docstring)."""

    config_class: ClassVar[type[RLConfig]] = RLConfig

    def __init__(self, config: RLConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = config.model_copy(update=overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.learner: PolicyLearner | None = None
        self.tokenizer: Any = None
        self.iteration = 0
        self._versions: dict[str, int] = {}

    # ------------------------------------------------------------------ what subclasses define
    def sequence_advantages(self, samples: Sequence[Sample]) -> list[float] | None:
        """Advantages that need the whole batch (GRPO's groups); computed before the batch is sharded."""
        return None

    @abstractmethod
    def prepare(
        self, learner: PolicyLearner, samples: Sequence[Sample], sequence_advantages: list[float] | None
    ) -> tuple[list[torch.Tensor], Scored | None, list[torch.Tensor] | None]:
        """Per-token advantages, pre-update scores and (PPO) value targets of this rank's samples."""

    # ------------------------------------------------------------------ setup
    def _load(self, session: TrainSession, device: torch.device) -> tuple[torch.nn.Module, int]:
        """Create the learner (resuming from the newest checkpoint); returns the model to serve and the iteration."""
        from .models import load_policy

        cfg = self.config
        resume = latest_checkpoint(session.checkpoint_dir)
        model: Any
        if resume is not None and cfg.lora is not None and resume.has_adapter:
            from peft import PeftModel

            base, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, device=device)
            model = PeftModel.from_pretrained(base, str(resume.path / "adapter"), is_trainable=True)
            served, _ = load_policy(str(resume.path), dtype=cfg.dtype, device=device)
        else:
            source = str(resume.path) if resume is not None else cfg.model
            model, tokenizer = load_policy(source, dtype=cfg.dtype, device=device)
            served = copy.deepcopy(model)
        reference = None
        if cfg.kl_coef > 0 and cfg.lora is None:
            reference = (
                copy.deepcopy(model) if resume is None else load_policy(cfg.model, dtype=cfg.dtype, device=device)[0]
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.learner = PolicyLearner(
            model, cfg, pad_id=int(pad or 0), reference=reference, device=device, dist=self._dist
        )
        iteration = 0
        if resume is not None:
            state = load_trainer_state(resume, self.learner)
            iteration = int(state["iteration"])
            logger.info("resuming from %s (iteration %d)", resume.path, iteration)
        return served, iteration

    # ------------------------------------------------------------------ the run
    def run(self, session: TrainSession) -> TrainResult:
        cfg = self.config
        self._dist = init_distributed()
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        device = choose_device(session.num_gpus, self._dist)
        served, self.iteration = self._load(session, device)
        start = self.iteration
        if start >= session.num_iterations:
            logger.info(
                "checkpoint is at iteration %d >= num_iterations=%d: nothing to do", start, session.num_iterations
            )
            return TrainResult(iterations=start, metrics=session.metrics.history)
        if session.offline:
            del served
            return self._run_offline(session)
        return self._run_online(session, served)

    def _progress(self, session: TrainSession) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=session.num_iterations,
            initial=self.iteration,
            desc=f"{self.name} {'offline' if session.offline else 'online'}",
            unit="it",
            disable=not self._dist.is_main,
            dynamic_ncols=True,
        )

    def _train_on(self, samples: list[Sample] | None) -> dict[str, float] | None:
        """Broadcast rank 0's batch, train every rank on its shard; ``None`` (from rank 0) means stop."""
        assert self.learner is not None
        samples = broadcast(samples, self._dist)
        if samples is None:
            return None
        sequence = self.sequence_advantages(samples)
        local = shard(list(range(len(samples))), self._dist)
        mine = [samples[i] for i in local]
        mine_seq = [sequence[i] for i in local] if sequence is not None else None
        started = time.perf_counter()
        advantages, old, returns = self.prepare(self.learner, mine, mine_seq)
        metrics = self.learner.update(mine, advantages, old=old, returns=returns)
        metrics["time/update_s"] = time.perf_counter() - started
        metrics["train/samples"] = float(len(samples))
        metrics["train/trainable_tokens"] = float(sum(s.num_trainable_tokens for s in samples))
        return metrics

    def _checkpoint(self, session: TrainSession) -> Path | None:
        path = None
        if session.checkpoint_dir is not None and self._dist.is_main:
            assert self.learner is not None
            path = save_checkpoint(
                session.checkpoint_dir, self.iteration, self.learner, self.tokenizer, keep=self.config.keep_checkpoints
            )
        barrier(self._dist)
        return path

    # ------------------------------------------------------------------ online
    def _publish(
        self, session: TrainSession, endpoint: str, *, temperature: float, mode: str = "train"
    ) -> ResourcesSnapshot:
        latest = session.sync.get_latest_resources()
        resources: dict[str, Resource] = dict(latest.resources) if latest is not None else {}
        resources[self.config.policy_resource] = LLM(
            endpoint=endpoint,
            model=self.config.model,
            api_key="agent-lightning",
            sampling_parameters={"temperature": temperature, "max_tokens": self.config.max_new_tokens},
        )
        snapshot = session.publish_resources(resources, {VERSION_KEY: self.iteration, "mode": mode})
        self._versions[snapshot.resources_id] = self.iteration
        return snapshot

    def _tasks(self, dataset: Sequence[Any]) -> Iterator[list[Any]]:
        """Batches of tasks, reshuffled every pass (seeded, and positioned after a resume)."""
        if not dataset:
            raise NoTrainingData("online training needs tasks: pass train_dataset=… to the Trainer")
        n = self.config.tasks
        order: list[int] = []
        epoch = 0
        skip = self.iteration * n
        while True:
            if len(order) < n:
                more = list(range(len(dataset)))
                random.Random(self.config.seed + epoch).shuffle(more)
                epoch += 1
                order += more
                continue
            batch, order = order[:n], order[n:]
            if skip > 0:
                skip -= n
                continue
            yield [dataset[i] for i in batch]

    def _run_online(self, session: TrainSession, served: torch.nn.Module) -> TrainResult:
        cfg = self.config
        assert self.learner is not None
        server = proxy = None
        checkpoint = None
        interrupted = False
        bar = self._progress(session)
        try:
            if self._dist.is_main:
                from agent_lightning.proxy import LLMProxy

                from .policy import PolicyServer

                served.eval()
                server = PolicyServer(
                    served,
                    self.tokenizer,
                    model_name=cfg.model,
                    max_batch_size=cfg.max_batch_size,
                    default_max_tokens=cfg.max_new_tokens,
                ).start()
                proxy = LLMProxy(session.store, upstream=server.url).start()
                snapshot = self._publish(session, proxy.url, temperature=cfg.temperature)
                with merged_weights(self.learner.model) as state:
                    server.update_weights(state, version=snapshot.resources_id)
                tasks = self._tasks(session.train_dataset)
            while self.iteration < session.num_iterations:
                samples: list[Sample] | None = None
                metrics: dict[str, float] = {}
                if self._dist.is_main:
                    assert server is not None and proxy is not None
                    if session.stopping:
                        interrupted = True
                    else:
                        samples, metrics = self._collect(session, next(tasks), snapshot.resources_id, proxy)
                update = self._train_on(samples)
                if update is None:
                    break
                self.iteration += 1
                if self._dist.is_main:
                    assert server is not None and proxy is not None
                    started = time.perf_counter()
                    snapshot = self._publish(session, proxy.url, temperature=cfg.temperature)
                    with merged_weights(self.learner.model) as state:
                        server.update_weights(state, version=snapshot.resources_id)
                    metrics.update(update)
                    metrics["time/publish_s"] = time.perf_counter() - started
                    metrics["train/policy_version"] = float(self.iteration)
                    if session.eval_interval and self.iteration % session.eval_interval == 0:
                        metrics.update(self._evaluate(session, proxy.url))
                    session.log(self.iteration, metrics)
                    bar.update(1)
                    bar.set_postfix(
                        reward=f"{metrics.get('train/reward_mean', float('nan')):.3f}",
                        tok_s=f"{metrics.get('perf/tokens_per_s', 0.0):.0f}",
                    )
                if session.eval_interval and self.iteration % session.eval_interval == 0:
                    checkpoint = self._checkpoint(session) or checkpoint
        except KeyboardInterrupt:
            interrupted = True
            session.stop_event.set()
        finally:
            bar.close()
            if self.iteration > 0 and (checkpoint is None or checkpoint.name != f"checkpoint-{self.iteration:06d}"):
                try:
                    checkpoint = self._checkpoint(session) or checkpoint
                except Exception as exc:  # never hide the original error behind a checkpoint failure
                    logger.error("could not save the final checkpoint: %s", exc)
            if proxy is not None:
                proxy.stop()
            if server is not None:
                server.stop()
        return TrainResult(
            iterations=self.iteration,
            metrics=session.metrics.history,
            checkpoint=checkpoint,
            interrupted=interrupted or session.stopping,
        )

    def _collect(
        self, session: TrainSession, tasks: list[Any], resources_id: str, proxy: Any
    ) -> tuple[list[Sample], dict[str, float]]:
        cfg = self.config
        started = time.perf_counter()
        rollouts = session.run_rollouts(
            tasks, group_size=cfg.group_size, resources_id=resources_id, timeout=cfg.rollout_timeout
        )
        rollout_s = time.perf_counter() - started
        proxy.flush()
        episodes = self._episodes(session, rollouts)
        metrics = episode_metrics(episodes, "train", cfg.success_threshold)
        metrics["time/rollout_s"] = rollout_s
        metrics["train/failed_rollouts"] = float(sum(r.status != "succeeded" for r in rollouts))
        samples = self._select(episodes)
        samples, dropped = drop_stale(samples, self._versions, self.iteration, cfg.max_staleness)
        metrics["train/stale_samples_dropped"] = float(dropped)
        if not samples:
            raise NoTrainingData(f"every sample of iteration {self.iteration} was older than max_staleness")
        return samples, metrics

    def _episodes(self, session: TrainSession, rollouts: Sequence[Rollout]) -> list[Episode]:
        cfg = self.config
        return session.episodes(
            rollouts,
            aggregation=cfg.aggregation,
            discount=cfg.discount,
            max_turns=cfg.trajectory_length,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )

    def _select(self, episodes: Sequence[Episode]) -> list[Sample]:
        samples = ensure_training_data(episodes)
        selected = select_samples(samples, self.config.optimize)
        if not selected:
            agents = sorted({s.agent_name or "<unnamed>" for s in samples})
            resources = sorted({n for s in samples for n in s.resource_names})
            raise NoTrainingData(
                f"optimize={self.config.optimize} matches none of the {len(samples)} samples; "
                f"their agents are {agents} and their resources {resources}"
            )
        return selected

    def _evaluate(self, session: TrainSession, endpoint: str) -> dict[str, float]:
        if not session.val_dataset:
            return {}
        started = time.perf_counter()
        snapshot = self._publish(session, endpoint, temperature=self.config.eval_temperature, mode="val")
        rollouts = session.run_rollouts(
            session.val_dataset, mode="val", resources_id=snapshot.resources_id, timeout=self.config.rollout_timeout
        )
        episodes = [e for e in self._episodes(session, rollouts)]
        metrics = episode_metrics(episodes, "val", self.config.success_threshold)
        metrics["time/eval_s"] = time.perf_counter() - started
        return metrics

    # ------------------------------------------------------------------ offline
    def _stored_episodes(self, session: TrainSession) -> list[Episode]:
        rollouts: list[Rollout] = []
        offset, page = 0, 200
        while True:
            batch = session.sync.query_rollouts(status=["succeeded", "failed"], limit=page, offset=offset)
            rollouts += [r for r in batch if r.mode == "train"]
            if len(batch) < page:
                break
            offset += page
        if not rollouts:
            raise NoTrainingData(
                f"offline training found no finished train rollouts in {session.store.url}; collect some first "
                "(run the agent with a TrainingContext) or pass agent=… to train online"
            )
        return self._episodes(session, rollouts)

    def _offline_batches(self, samples: list[Sample]) -> Iterator[list[Sample]]:
        """Batches of about ``batch_size`` samples, whole groups together, reshuffled every pass."""
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample.group_id or sample.rollout_id, []).append(sample)
        keys = sorted(groups)
        epoch = 0
        skipped = 0
        while True:
            order = list(keys)
            random.Random(self.config.seed + epoch).shuffle(order)
            epoch += 1
            batch: list[Sample] = []
            for key in order:
                batch += groups[key]
                if len(batch) >= self.config.batch_size:
                    if skipped < self.iteration:
                        skipped += 1
                    else:
                        yield batch
                    batch = []
            if batch:
                if skipped < self.iteration:
                    skipped += 1
                else:
                    yield batch

    def _run_offline(self, session: TrainSession) -> TrainResult:
        samples: list[Sample] | None = None
        metrics: dict[str, float] = {}
        if self._dist.is_main:
            episodes = self._stored_episodes(session)
            samples = self._select(episodes)
            metrics = episode_metrics(episodes, "data", self.config.success_threshold)
            if len(samples) < self.config.batch_size:
                logger.warning(
                    "the store holds %d usable samples, fewer than batch_size=%d: each iteration trains on all",
                    len(samples),
                    self.config.batch_size,
                )
        samples = broadcast(samples, self._dist)
        assert samples is not None
        batches = self._offline_batches(samples)
        checkpoint = None
        interrupted = False
        bar = self._progress(session)
        try:
            while self.iteration < session.num_iterations:
                stop = broadcast(session.stopping, self._dist)
                if stop:
                    interrupted = True
                    break
                batch = next(batches)
                update = self._train_on(batch)
                assert update is not None
                self.iteration += 1
                update.update(episode_metrics_of_samples(batch))
                if self.iteration == 1:
                    update.update(metrics)
                if self._dist.is_main:
                    session.log(self.iteration, update)
                    bar.update(1)
                    bar.set_postfix(loss=f"{update.get('train/policy_loss', 0.0):.4f}")
                if session.eval_interval and self.iteration % session.eval_interval == 0:
                    checkpoint = self._checkpoint(session) or checkpoint
        except KeyboardInterrupt:
            interrupted = True
            session.stop_event.set()
        finally:
            bar.close()
            if self.iteration > 0 and (checkpoint is None or checkpoint.name != f"checkpoint-{self.iteration:06d}"):
                checkpoint = self._checkpoint(session) or checkpoint
        return TrainResult(
            iterations=self.iteration, metrics=session.metrics.history, checkpoint=checkpoint, interrupted=interrupted
        )


def episode_metrics_of_samples(samples: Sequence[Sample]) -> dict[str, float]:
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float64)
    return {
        "train/reward_mean": float(rewards.mean()),
        "train/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
    }
