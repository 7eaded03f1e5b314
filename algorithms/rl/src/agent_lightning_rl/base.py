"""The training loop shared by PPO and GRPO: online (rollouts through the proxy and the policy server) or offline.

Online, per iteration: pick tasks, run ``group_size`` rollouts of each with the current weights, build episodes
from the spans (captured token ids), compute advantages, update, publish the new weights (a new resources version
that the policy server swaps in), log metrics; evaluate and checkpoint every ``eval_interval`` iterations.
Offline (no agent): train on the finished rollouts already in the store.

With several ranks (``Trainer(num_gpus=N)``, see :mod:`.distributed`), rank 0 alone does everything above but the
update: it broadcasts each batch, every rank trains on its shard, and rank 0's errors reach the other ranks as a
stop signal rather than a hang.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import tempfile
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from agent_lightning import semconv
from agent_lightning.algorithm import Algorithm, TrainResult, TrainSession
from agent_lightning.errors import NoTrainingData
from agent_lightning.trajectory import build_episode, ensure_training_data
from agent_lightning.types import LLM, Episode, Resource, ResourcesSnapshot, Rollout, Sample, Span

from .advantages import drop_stale, select_samples
from .async_loop import PENDING_KEY, Placement, RolloutCollector
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .config import RLConfig
from .distributed import (
    DistInfo,
    Followers,
    WorldPlan,
    barrier,
    broadcast,
    choose_device,
    free_port,
    importable_name,
    init_distributed,
    plan_world,
    shard_indices,
    shutdown_distributed,
    thread_share,
)
from .learner import PolicyLearner, Scored, merged_weights
from .staleness import AdmissionGate, tag_staleness

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
        self.config = self._configure(self.config_class, config, overrides)
        self.learner: PolicyLearner | None = None
        self.tokenizer: Any = None
        self.iteration = 0
        self._versions: dict[str, int] = {}
        self._dist = DistInfo()
        self._saved_at: int | None = None
        self._engine_features: frozenset[str] = frozenset()
        """The iteration of the last checkpoint call (on every rank, whether or not this rank wrote it)."""
        self._resumed: dict[str, Any] = {}
        """The trainer state of the checkpoint this run resumed from."""
        self._collector: RolloutCollector | None = None
        self._saved_pending: dict[int, list[str]] = {}
        self.trained_batches: list[tuple[int, list[str]]] = []
        """Online (rank 0): each update's iteration and the rollouts it trained on."""

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
    def _load(self, session: TrainSession, device: torch.device, *, serve: bool) -> tuple[torch.nn.Module | None, int]:
        """Create the learner (resuming from the newest checkpoint); returns the model to serve (when ``serve``)
        and the iteration."""
        from .models import load_policy

        cfg = self.config
        resume = latest_checkpoint(session.checkpoint_dir)
        model: Any
        served: torch.nn.Module | None = None
        if resume is not None and cfg.lora is not None and resume.has_adapter:
            from peft import PeftModel

            base, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, device=device)
            model = PeftModel.from_pretrained(base, str(resume.path / "adapter"), is_trainable=True)
            if serve:
                served, _ = load_policy(str(resume.path), dtype=cfg.dtype, device=device)
        else:
            source = str(resume.path) if resume is not None else cfg.model
            model, tokenizer = load_policy(source, dtype=cfg.dtype, device=device)
            if serve:
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
            self._resumed = state
            iteration = int(state["iteration"])
            logger.info("resuming from %s (iteration %d)", resume.path, iteration)
        return served, iteration

    # ------------------------------------------------------------------ the run
    def run(self, session: TrainSession) -> TrainResult:
        """Train on this machine's share of the world that ``session.num_gpus`` asks for (see ``distributed``)."""
        plan = plan_world(session.num_gpus, cpu_fallback=self.config.cpu_fallback)
        if not plan.launch:
            self._dist = init_distributed(plan)
            try:
                return self._train(session, plan, offline=session.offline)
            finally:
                shutdown_distributed(self._dist)
        # not under a launcher: this process is rank 0 and starts the other ranks itself
        init_method = f"tcp://127.0.0.1:{free_port()}"
        session.run_dir.mkdir(parents=True, exist_ok=True)
        spec_path = session.run_dir / "world.json"
        spec_path.write_text(json.dumps(self._follower_spec(session, plan, init_method)), encoding="utf-8")
        threads = thread_share(plan.world_size) if plan.device_type == "cpu" else None
        previous_threads = torch.get_num_threads()
        logger.info("starting %d more training process(es) (%s)", plan.world_size - 1, plan.backend)
        followers = Followers(spec_path, plan.world_size, threads=threads)
        finished = False
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            self._dist = init_distributed(plan, rank=0, local_rank=0, init_method=init_method)
            result = self._train(session, plan, offline=session.offline)
            finished = True
        finally:
            torch.set_num_threads(previous_threads)
            if finished:
                try:
                    followers.wait()
                finally:
                    shutdown_distributed(self._dist)
            else:
                followers.terminate()
                shutdown_distributed(self._dist)
        return result

    def _follower_spec(self, session: TrainSession, plan: WorldPlan, init_method: str) -> dict[str, Any]:
        return {
            "algorithm": importable_name(type(self)),
            "config": self.config.model_dump(mode="json"),
            "world": {"world_size": plan.world_size, "backend": plan.backend, "device_type": plan.device_type},
            "init_method": init_method,
            "num_iterations": session.num_iterations,
            "eval_interval": session.eval_interval,
            "checkpoint_dir": str(session.checkpoint_dir) if session.checkpoint_dir is not None else None,
            "num_gpus": session.num_gpus,
            "offline": session.offline,
        }

    def follow(self, spec: Mapping[str, Any], rank: int) -> TrainResult:
        """Rank ``rank`` of a world that rank 0 started (``python -m agent_lightning_rl.follower``): train on the
        shards rank 0 broadcasts; no store, agent or runners here."""
        from agent_lightning.metrics import MetricsLogger
        from agent_lightning.store.memory import InMemoryLightningStore
        from agent_lightning.store.sync import SyncStore

        plan = WorldPlan(**spec["world"])
        with tempfile.TemporaryDirectory(prefix=f"agl-rank{rank}-") as scratch:
            store = InMemoryLightningStore()  # never used: rank 0 alone reads the store
            metrics = MetricsLogger(scratch, tensorboard=False)
            session = TrainSession(
                store=store,
                sync=SyncStore(store),
                agent=None,
                train_dataset=[],
                val_dataset=[],
                num_iterations=int(spec["num_iterations"]),
                eval_interval=spec["eval_interval"],
                checkpoint_dir=Path(spec["checkpoint_dir"]) if spec["checkpoint_dir"] else None,
                run_dir=Path(scratch),
                metrics=metrics,
                num_gpus=int(spec["num_gpus"]),
            )
            self._dist = init_distributed(plan, rank=rank, local_rank=rank, init_method=spec["init_method"])
            try:
                return self._train(session, plan, offline=bool(spec["offline"]))
            finally:
                metrics.close()
                shutdown_distributed(self._dist)

    def _train(self, session: TrainSession, plan: WorldPlan, *, offline: bool) -> TrainResult:
        cfg = self.config
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        device = choose_device(plan, self._dist)
        if self._dist.is_main and not offline:
            from agent_lightning.engines import engine_entry

            self._engine_features = engine_entry(cfg.engine).features  # an engine not installed fails here
        serve = self._dist.is_main and not offline and cfg.engine == "transformers"
        served, self.iteration = self._load(session, device, serve=serve)
        start = self.iteration
        if start >= session.num_iterations:
            logger.info(
                "checkpoint is at iteration %d >= num_iterations=%d: nothing to do", start, session.num_iterations
            )
            return TrainResult(iterations=start, metrics=session.metrics.history)
        if offline:
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
            disable=not (self._dist.is_main and self.config.progress),
            dynamic_ncols=True,
        )

    def _train_on(self, samples: list[Sample] | None) -> dict[str, float] | None:
        """Broadcast rank 0's batch, train every rank on its shard; ``None`` (from rank 0) means stop."""
        assert self.learner is not None
        samples = broadcast(samples, self._dist)
        if samples is None:
            return None
        sequence = self.sequence_advantages(samples)
        local, padding = shard_indices(len(samples), self._dist)
        mine = [samples[i] for i in local]
        for j in range(len(mine) - padding, len(mine)):  # equal shards: padding copies carry no loss
            mine[j] = mine[j].model_copy(update={"loss_mask": [0] * len(mine[j].loss_mask)})
        mine_seq = [sequence[i] for i in local] if sequence is not None else None
        started = time.perf_counter()
        advantages, old, returns = self.prepare(self.learner, mine, mine_seq)
        metrics = self.learner.update(mine, advantages, old=old, returns=returns)
        metrics["time/update_s"] = time.perf_counter() - started
        metrics["train/samples"] = float(len(samples))
        metrics["train/trainable_tokens"] = float(sum(s.num_trainable_tokens for s in samples))
        if self._dist.enabled:
            metrics["dist/world_size"] = float(self._dist.world_size)
            metrics["dist/padding_samples"] = float(len(local) * self._dist.world_size - len(samples))
        return metrics

    def _checkpoint(self, session: TrainSession) -> Path | None:
        path = None
        try:
            if self._dist.is_main:
                path = self._save(session)
        finally:
            self._saved_at = self.iteration
            barrier(self._dist)  # every rank reaches it, even when saving failed on rank 0
        return path

    def _save(self, session: TrainSession) -> Path | None:
        """Rank 0's checkpoint write; with asynchronous collection it lists the batches not trained yet."""
        if session.checkpoint_dir is None:
            return None
        assert self.learner is not None
        self._saved_pending = self._collector.untrained() if self._collector is not None else {}
        return save_checkpoint(
            session.checkpoint_dir,
            self.iteration,
            self.learner,
            self.tokenizer,
            keep=self.config.keep_checkpoints,
            extra={PENDING_KEY: self._saved_pending} if self._collector is not None else None,
        )

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

    def _start_engine(self, served: torch.nn.Module | None) -> Any:
        """Start the configured inference engine on the policy (the built-in one takes ``served`` as it is)."""
        from agent_lightning.engines import create_engine

        from .models import local_checkpoint

        cfg = self.config
        options: dict[str, Any] = {
            "served_name": cfg.model,
            "max_batch_size": cfg.max_batch_size,
            "default_max_tokens": cfg.max_new_tokens,
            # the learner's weight precision: most of an update's changes fall below bf16's resolution, so an
            # engine serving fp32 weights in bf16 keeps sampling from (nearly) the old policy
            "dtype": cfg.dtype,
            **cfg.engine_options,
        }
        if cfg.engine == "transformers":
            assert served is not None
            options["preloaded"] = (served, self.tokenizer)
            if cfg.async_rollouts:  # the sampled distribution's log-probs, which the importance ratio compares with
                options.setdefault("logprobs_mode", "processed")
        if cfg.lora is not None and "lora" in self._engine_features:
            options.setdefault("lora_rank", cfg.lora.r)
        return create_engine(cfg.engine, local_checkpoint(cfg.model), **options).start()

    def _sync_engine(self, engine: Any, version: str) -> None:
        """Serve the learner's current weights as ``version``: its LoRA adapter where the engine takes adapters,
        else the merged weights."""
        assert self.learner is not None
        if self.config.lora is not None and "lora" in self._engine_features:
            with tempfile.TemporaryDirectory(prefix="agl-adapter-") as folder:
                self.learner.model.save_pretrained(folder)
                engine.update_weights(folder, version, adapter=True)
            return
        with merged_weights(self.learner.model) as state:
            engine.update_weights(state, version=version)

    def _run_online(self, session: TrainSession, served: torch.nn.Module | None) -> TrainResult:
        cfg = self.config
        assert self.learner is not None
        server = proxy = None
        checkpoint = None
        interrupted = False
        self._saved_at = self.iteration
        previous_threads = torch.get_num_threads()
        placement: Placement | None = None
        # rank 0's error (or Ctrl-C) outside the collectives waits here until the other ranks were told to stop
        pending: BaseException | None = None
        bar = self._progress(session)
        try:
            if self._dist.is_main:
                try:
                    from agent_lightning_proxy import LLMProxy

                    if cfg.async_rollouts and self.learner.device.type == "cpu":
                        # the engine's generation thread takes its intra-op threads from the first weight copy
                        # it runs (below); the learner, in this thread, gets the rest
                        placement = Placement.split(previous_threads, cfg.engine_threads)
                        torch.set_num_threads(placement.engine_threads)
                    server = self._start_engine(served)
                    served = None  # the engine owns it now
                    proxy = LLMProxy(session.store, upstream=server.url).start()
                    snapshot = self._publish(session, proxy.url, temperature=cfg.temperature)
                    self._sync_engine(server, snapshot.resources_id)
                    tasks = self._tasks(session.train_dataset)
                    if cfg.async_rollouts:
                        self._collector = RolloutCollector(
                            self,
                            session,
                            proxy,
                            tasks,
                            AdmissionGate(self.iteration, cfg.max_staleness),
                            start=self.iteration,
                            stop_at=session.num_iterations,
                            resources_id=snapshot.resources_id,
                            pending=dict(self._resumed.get(PENDING_KEY) or {}),
                        ).begin()
                    if placement is not None and self._collector is not None:
                        torch.set_num_threads(placement.learner_threads)
                        collector, split = self._collector, placement
                        self.learner.threads = lambda: split.learner_threads if collector.busy else split.available
                except BaseException as exc:
                    pending = exc
            while self.iteration < session.num_iterations:
                samples: list[Sample] | None = None
                metrics: dict[str, float] = {}
                rollout_ids: list[str] = []
                if self._dist.is_main and pending is None:
                    assert server is not None and proxy is not None
                    if session.stopping:
                        interrupted = True
                    else:
                        try:
                            try:
                                if self._collector is not None:
                                    waited = time.perf_counter()
                                    batch = self._collector.take(self.iteration)
                                    samples, metrics, rollout_ids = batch.samples, batch.metrics, batch.rollout_ids
                                    metrics["time/learner_wait_s"] = time.perf_counter() - waited
                                else:
                                    samples, metrics = self._collect(session, next(tasks), snapshot.resources_id, proxy)
                            except Exception:
                                # an engine that died fails every rollout (then "no training data"): its own error,
                                # with its last log lines, says why
                                server.stats()
                                raise
                            server.stats()  # raises, with the engine's last log lines, when it died meanwhile
                            samples, metrics = self._fresh_enough(samples, metrics)
                        except BaseException as exc:
                            pending = exc
                update = self._train_on(samples)  # None from rank 0 stops every rank here
                if update is None:
                    break
                self.iteration += 1
                if self._dist.is_main:
                    assert server is not None and proxy is not None
                    try:
                        if self._collector is not None:
                            self._collector.trained(self.iteration - 1)
                        self.trained_batches.append((self.iteration - 1, rollout_ids))
                        started = time.perf_counter()
                        snapshot = self._publish(session, proxy.url, temperature=cfg.temperature)
                        synced = time.perf_counter()
                        self._sync_engine(server, snapshot.resources_id)
                        metrics["time/weight_sync_s"] = time.perf_counter() - synced
                        if self._collector is not None:
                            self._collector.advance(self.iteration, snapshot.resources_id)
                        metrics.update(update)
                        metrics["time/publish_s"] = time.perf_counter() - started
                        metrics["train/policy_version"] = float(self.iteration)
                        if placement is not None:
                            metrics.update(placement.metrics())
                        if session.eval_interval and self.iteration % session.eval_interval == 0:
                            metrics.update(self._evaluate(session, proxy.url))
                        session.log(self.iteration, metrics)
                        bar.update(1)
                        bar.set_postfix(
                            reward=f"{metrics.get('train/reward_mean', float('nan')):.3f}",
                            tok_s=f"{metrics.get('perf/tokens_per_s', 0.0):.0f}",
                        )
                    except BaseException as exc:
                        pending = exc
                if session.eval_interval and self.iteration % session.eval_interval == 0:
                    checkpoint = self._checkpoint(session) or checkpoint
            if pending is not None:
                raise pending
        except KeyboardInterrupt:
            interrupted = True
            session.stop_event.set()
        finally:
            bar.close()
            if self._collector is not None:
                self._collector.stop()  # its enqueued rollouts stay in the store; the checkpoint lists them
            try:
                if self.iteration > 0 and self._saved_at != self.iteration:  # the same decision on every rank
                    checkpoint = self._checkpoint(session) or checkpoint
                elif (
                    self._collector is not None
                    and (interrupted or session.stopping)
                    and self._collector.untrained() != self._saved_pending
                ):
                    # rank 0 alone: batches enqueued since, kept for the resumed run (a run that failed before its
                    # first update leaves no checkpoint: nothing was trained)
                    checkpoint = self._save(session) or checkpoint
            except Exception as exc:  # never hide the original error behind a checkpoint failure
                logger.error("could not save the final checkpoint: %s", exc)
            self._collector = None
            self.learner.threads = None
            torch.set_num_threads(previous_threads)
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

    def _fresh_enough(self, samples: list[Sample], metrics: dict[str, float]) -> tuple[list[Sample], dict[str, float]]:
        """Tag each sample's staleness and leave out any older than ``max_staleness`` (admission control makes
        that never happen: ``train/stale_samples_dropped`` counts it if it ever does)."""
        cfg = self.config
        samples, dropped = drop_stale(samples, self._versions, self.iteration, cfg.max_staleness)
        metrics["train/stale_samples_dropped"] = float(dropped)
        if not samples:
            raise NoTrainingData(f"every sample of iteration {self.iteration} was older than max_staleness")
        samples, staleness = tag_staleness(samples, self._versions, self.iteration)
        metrics.update(staleness)
        return samples, metrics

    def _collect(
        self, session: TrainSession, tasks: list[Any], resources_id: str, proxy: Any
    ) -> tuple[list[Sample], dict[str, float]]:
        cfg = self.config
        started = time.perf_counter()
        rollouts = session.run_rollouts(
            tasks, group_size=cfg.group_size, resources_id=resources_id, timeout=cfg.rollout_timeout
        )
        rollout_s = time.perf_counter() - started
        samples, metrics = self._samples_from(session, rollouts, proxy)
        metrics["time/rollout_s"] = rollout_s
        return samples, metrics

    def _samples_from(
        self, session: TrainSession, rollouts: Sequence[Rollout], proxy: Any
    ) -> tuple[list[Sample], dict[str, float]]:
        """The selected samples of finished ``rollouts`` and their episode metrics."""
        proxy.flush()
        llm_spans: dict[str, Span] = {}
        episodes = self._episodes(session, rollouts, llm_spans=llm_spans)
        metrics = episode_metrics(episodes, "train", self.config.success_threshold)
        metrics["train/failed_rollouts"] = float(sum(r.status != "succeeded" for r in rollouts))
        return self._select(episodes, llm_spans=llm_spans), metrics

    def _episodes(
        self, session: TrainSession, rollouts: Sequence[Rollout], *, llm_spans: dict[str, Span] | None = None
    ) -> list[Episode]:
        """Each rollout's episode; ``llm_spans`` (when given) collects their LLM spans by id."""
        episodes = []
        for rollout in rollouts:
            spans = session.sync.query_spans(rollout.rollout_id)
            if llm_spans is not None:
                llm_spans.update((span.span_id, span) for span in spans if span.kind == "llm")
            episodes.append(self._episode(rollout, spans))
        return episodes

    def _episode(self, rollout: Rollout, spans: Sequence[Span]) -> Episode:
        """The rollout's episode, built with this run's trajectory settings."""
        cfg = self.config
        return build_episode(
            rollout,
            spans,
            aggregation=cfg.aggregation,
            discount=cfg.discount,
            max_turns=cfg.trajectory_length,
            max_prompt_tokens=cfg.max_prompt_tokens,
        )

    def _select(self, episodes: Sequence[Episode], *, llm_spans: Mapping[str, Span] | None = None) -> list[Sample]:
        """The samples ``optimize`` selects. With ``llm_spans`` (online), refuses to train when an agent that
        ``optimize`` leaves out was answered by the policy being trained (it would get every new version)."""
        samples = ensure_training_data(episodes)
        selected = select_samples(samples, self.config.optimize)
        if llm_spans is not None and self.config.optimize is not None:
            self._check_excluded(samples, selected, llm_spans)
        if not selected:
            agents = sorted({s.agent_name or "<unnamed>" for s in samples})
            resources = sorted({n for s in samples for n in s.resource_names})
            raise NoTrainingData(
                f"optimize={self.config.optimize} matches none of the {len(samples)} samples; "
                f"their agents are {agents} and their resources {resources}"
            )
        return selected

    def _check_excluded(
        self, samples: Sequence[Sample], selected: Sequence[Sample], llm_spans: Mapping[str, Span]
    ) -> None:
        """Raise when a call that ``optimize`` excludes was answered by this trainer's policy server.

        The proxy records on each LLM span the weights version that answered (``agl.resources.id``); the policy
        server answers with the resources ids this trainer published. Every call through the trainer's proxy reaches
        that one server, so an excluded agent sharing the policy resource would be served each new version.
        """
        chosen = {id(s) for s in selected}
        shared: set[str] = set()
        for sample in samples:
            if id(sample) in chosen or not sample.span_ids:
                continue
            span = llm_spans.get(sample.span_ids[0])
            version = span.attributes.get(semconv.RESOURCES_ID) if span is not None else None
            if isinstance(version, str) and version in self._versions:
                shared.add(sample.agent_name or "<unnamed>")
        if shared:
            done = "Nothing was trained." if self.iteration == 0 else f"Training stopped at iteration {self.iteration}."
            raise ValueError(
                f"optimize={self.config.optimize} leaves out agent(s) {sorted(shared)}, but their LLM calls were "
                f"answered by the policy being trained (resource {self.config.policy_resource!r}, served behind this "
                "trainer's proxy), so they would get every new version of the weights. Give the agents you leave out "
                "an LLM resource of their own that this trainer does not serve (a frozen model behind its own "
                f"endpoint), or add them to optimize. {done}"
            )

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
    @staticmethod
    def _finished_train_rollouts(session: TrainSession, who: str, advice: str) -> list[Rollout]:
        """Every finished (succeeded or failed) train rollout in the store, paged.

        None is :class:`NoTrainingData`: "``who`` found no finished train rollouts in URL``advice``".
        """
        rollouts: list[Rollout] = []
        offset, page = 0, 200
        while True:
            batch = session.sync.query_rollouts(status=["succeeded", "failed"], limit=page, offset=offset)
            rollouts += [r for r in batch if r.mode == "train"]
            if len(batch) < page:
                break
            offset += page
        if not rollouts:
            raise NoTrainingData(f"{who} found no finished train rollouts in {session.store.url}{advice}")
        return rollouts

    def _stored_episodes(self, session: TrainSession) -> list[Episode]:
        advice = "; collect some first (run the agent with a TrainingContext) or pass agent=… to train online"
        return self._episodes(session, self._finished_train_rollouts(session, "offline training", advice))

    def _offline_batches(self, samples: list[Sample]) -> Iterator[list[Sample]]:
        """Batches of whole groups holding at least ``batch_size`` rollouts, reshuffled every pass."""
        groups: dict[str, list[Sample]] = {}
        for sample in samples:
            groups.setdefault(sample.group_id or sample.rollout_id, []).append(sample)
        sizes = {key: len({s.rollout_id for s in members}) for key, members in groups.items()}
        keys = sorted(groups)
        epoch = 0
        skipped = 0
        while True:
            order = list(keys)
            random.Random(self.config.seed + epoch).shuffle(order)
            epoch += 1
            batch: list[Sample] = []
            rollouts = 0
            for key in order:
                batch += groups[key]
                rollouts += sizes[key]
                if rollouts >= self.config.batch_size:
                    if skipped < self.iteration:
                        skipped += 1
                    else:
                        yield batch
                    batch, rollouts = [], 0
            if batch:
                if skipped < self.iteration:
                    skipped += 1
                else:
                    yield batch

    def _policy_versions(self, session: TrainSession, samples: Sequence[Sample]) -> dict[str, int]:
        """Policy version of each resources id the samples name (ids of snapshots without one are left out)."""
        versions: dict[str, int] = {}
        for resources_id in sorted({s.resources_id for s in samples if s.resources_id}):
            try:
                snapshot = session.sync.get_resources(resources_id)
            except Exception:  # a version header of another server, or a snapshot this store does not hold
                continue
            version = snapshot.metadata.get(VERSION_KEY) if snapshot is not None else None
            if isinstance(version, int):
                versions[resources_id] = version
        return versions

    def _offline_data(self, session: TrainSession) -> tuple[list[Sample], dict[str, float]]:
        cfg = self.config
        episodes = self._stored_episodes(session)
        samples = self._select(episodes)
        metrics = episode_metrics(episodes, "data", cfg.success_threshold)
        # the weights trained here are version self.iteration (the checkpoint resumed from, or 0)
        samples, dropped = drop_stale(
            samples, self._policy_versions(session, samples), self.iteration, cfg.max_staleness
        )
        metrics["data/stale_samples_dropped"] = float(dropped)
        if not samples:
            raise NoTrainingData(
                f"every stored sample was generated by a policy version more than max_staleness={cfg.max_staleness} "
                f"updates older than the weights being trained (version {self.iteration}); raise max_staleness to "
                "train on them anyway"
            )
        rollouts = len({s.rollout_id for s in samples})
        if rollouts < cfg.batch_size:
            logger.warning(
                "the store holds %d usable rollouts, fewer than batch_size=%d: each iteration trains on all",
                rollouts,
                cfg.batch_size,
            )
        return samples, metrics

    def _run_offline(self, session: TrainSession) -> TrainResult:
        shared, metrics = self._load_on_rank0(lambda: self._offline_data(session), "the training data")
        batches = self._offline_batches(shared)

        def step() -> dict[str, float]:
            nonlocal metrics
            batch = next(batches)
            update = self._train_on(batch)
            assert update is not None
            self.iteration += 1
            update.update(episode_metrics_of_samples(batch))
            update.update(metrics)  # the data's metrics, with this run's first update
            metrics = {}
            return update

        return self._update_loop(session, step, ("loss", "train/policy_loss"))

    def _load_on_rank0(
        self, load: Callable[[], tuple[list[Sample], dict[str, float]]], what: str
    ) -> tuple[list[Sample], dict[str, float]]:
        """Run ``load`` on rank 0 and share its samples with every rank (its metrics stay on rank 0)."""
        payload: tuple[list[Sample] | None, str | None] = (None, None)
        metrics: dict[str, float] = {}
        failure: BaseException | None = None
        if self._dist.is_main:
            try:
                samples, metrics = load()
                payload = (samples, None)
            except BaseException as exc:  # the other ranks wait for the data: tell them why there is none
                failure = exc
                payload = (None, f"{type(exc).__name__}: {exc}")
        shared, error = broadcast(payload, self._dist)
        if failure is not None:
            raise failure
        if error is not None or shared is None:
            raise RuntimeError(f"rank 0 could not load {what}: {error}")
        return shared, metrics

    def _update_loop(
        self, session: TrainSession, step: Callable[[], dict[str, float]], postfix: tuple[str, str]
    ) -> TrainResult:
        """Call ``step`` (one update on every rank; returns its metrics) until ``session.num_iterations`` or a stop.

        Rank 0 logs each update and shows ``postfix`` (a label and the metric it shows) on the progress bar;
        every rank checkpoints each ``eval_interval`` iterations and at the end.
        """
        checkpoint = None
        interrupted = False
        self._saved_at = self.iteration
        bar = self._progress(session)
        try:
            while self.iteration < session.num_iterations:
                if broadcast(session.stopping, self._dist):
                    interrupted = True
                    break
                update = step()
                if self._dist.is_main:
                    session.log(self.iteration, update)
                    bar.update(1)
                    bar.set_postfix({postfix[0]: f"{update.get(postfix[1], float('nan')):.4f}"})
                if session.eval_interval and self.iteration % session.eval_interval == 0:
                    checkpoint = self._checkpoint(session) or checkpoint
        except KeyboardInterrupt:
            interrupted = True
            session.stop_event.set()
        finally:
            bar.close()
            if self.iteration > 0 and self._saved_at != self.iteration:  # the same decision on every rank
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
