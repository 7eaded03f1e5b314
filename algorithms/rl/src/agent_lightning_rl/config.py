"""Configuration of the RL algorithms (pydantic; importing this module does not import torch)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LoraSettings(BaseModel):
    """Train LoRA adapters (through ``peft``) instead of every weight."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class RLConfig(BaseModel):
    """Settings shared by PPO and GRPO.

    ``batch_size`` counts rollouts per iteration, online and offline alike: online it sets the tasks per iteration
    (``batch_size // group_size``), offline it takes whole groups of finished rollouts from the store until it has
    at least ``batch_size`` rollouts. A rollout gives one sample per LLM call (``aggregation="transition"``) or per
    merged run of turns (``"trajectory"``), so the samples per update can be more; ``train/samples`` logs them.
    ``trajectory_length`` bounds the turns merged into one sequence.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m-instruct"
    """Bundled alias, checkpoint folder, ``.gguf`` file or hub id (see ``agent_lightning_rl.models.load_policy``)."""
    learning_rate: float = Field(default=1e-6, ge=0.0)
    batch_size: int = Field(default=32, ge=1)
    """Rollouts per iteration (online and offline; see the class docstring)."""
    trajectory_length: int | None = Field(default=None, ge=1)
    group_size: int = Field(default=4, ge=1)
    tasks_per_iteration: int | None = Field(default=None, ge=1)
    """Tasks per iteration; default ``batch_size // group_size`` (at least 1)."""
    ppo_epochs: int = Field(default=1, ge=1)
    mini_batch_size: int | None = Field(default=None, ge=1)
    """Samples per optimizer step; default: the whole iteration's batch in one step."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Samples per forward/backward pass (gradient accumulation inside a mini-batch)."""
    clip_range: float = Field(default=0.2, gt=0.0)
    clip_range_high: float | None = Field(default=None, gt=0.0)
    """Upper clip (``1 + clip_range_high``); default ``clip_range`` (symmetric)."""
    kl_coef: float = Field(default=0.0, ge=0.0)
    """Weight of the KL to the frozen reference. Only with ``kl_coef > 0`` is the reference loaded and its log-probs
    computed, so ``train/kl`` is logged only then; ``train/policy_kl`` (the update's drift from the sampling
    policy, from log-probs computed anyway) is always logged."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    entropy_coef: float = Field(default=0.0)
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    """Sampling temperature of training rollouts (the loss uses the same temperature)."""
    eval_temperature: float = Field(default=0.0, ge=0.0)
    optimize: list[str] | None = None
    """Train only on LLM calls of these agents (``gen_ai.agent.name``) or resources; ``None`` trains on all."""
    aggregation: Literal["transition", "trajectory"] = "transition"
    discount: float = Field(default=1.0, gt=0.0, le=1.0)
    """Discount of rewards across turns when building episodes (reward-to-go)."""
    lora: LoraSettings | None = None
    async_rollouts: bool = True
    """Overlap collection and training (see :mod:`agent_lightning_rl.async_loop`): the next batch's rollouts run on
    the weights being served while the learner trains on the previous batch; new weights reach the engine between
    generation batches. ``False`` (synchronous): every batch runs on the newest weights and the learner waits
    for it."""
    max_staleness: int = Field(default=1, ge=0)
    """How many versions older than the weights being trained a sample may be.

    Online with ``async_rollouts``, this is enforced by admission control: the rollouts of batch ``k`` (trained on
    version ``k``) start only once version ``k - max_staleness`` is served, so nothing is thrown away; ``0`` makes
    collection wait for every update (synchronous), ``1`` lets one batch be collected while the previous one trains.
    Online without it every batch runs on the newest weights. Offline, resuming from a checkpoint at iteration
    ``k`` leaves out stored rollouts of policy versions older than ``k - max_staleness``
    (``data/stale_samples_dropped``); rollouts of resources without a policy version are always kept."""
    importance_cap: float | None = Field(default=2.0, gt=0.0)
    """Truncation of the token-level importance ratio ``pi_now / pi_sampler`` that weights stale samples' tokens
    (the sampler's log-probs come from the engine); ``None`` trains on stale samples uncorrected."""
    engine_threads: int | None = Field(default=None, ge=1)
    """With ``async_rollouts`` on CPU: intra-op threads of the engine's generation thread (default: half of this
    process's torch threads); the learner gets the rest (at least 1)."""
    use_rollout_logprobs: bool = False
    """Use the sampler's logprobs as the PPO "old" logprobs instead of recomputing them before the update."""
    seed: int = 0
    success_threshold: float = 1.0
    """A rollout whose reward is at least this counts as a success (``success_rate`` metrics)."""
    policy_resource: str = "main_llm"
    """Name of the LLM resource published for the agent."""
    rollout_timeout: float | None = Field(default=None, gt=0.0)
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    gradient_checkpointing: bool = False
    progress: bool = True
    """Draw a progress bar of the iterations (iteration, reward, tokens/s) on stderr, on rank 0."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded (and kept) in."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Mixed precision: run forward and backward passes under ``torch.autocast`` in this dtype (weights stay in
    ``dtype``). ``"bfloat16"`` is fastest on CPUs with bf16 instructions and on recent GPUs."""
    engine: str = "transformers"
    """Inference engine serving the policy during training: ``"transformers"`` (built in) or an installed plugin's
    (``"vllm"`` from ``agent-lightning-vllm``; ``agl plugins`` lists them)."""
    engine_options: dict[str, Any] = Field(default_factory=dict)
    """Extra options for the engine's factory (``{"colocate": True}``, ``{"gpu_memory_utilization": 0.3}``, …).
    The engine serves in ``dtype``, the learner's weight precision, unless these name another: ``{"dtype":
    "bfloat16"}`` makes vLLM faster, but it then rounds away most of each update of an fp32 learner."""
    max_batch_size: int = Field(default=16, ge=1)
    """Concurrent sequences the inference engine batches."""
    cpu_fallback: bool = False
    """When the machine has fewer CUDA devices than the Trainer's ``num_gpus``: ``False`` fails, naming the devices
    it found; ``True`` trains data-parallel in ``num_gpus`` CPU processes joined with gloo instead."""

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        if self.trajectory_length is not None and "aggregation" not in self.model_fields_set:
            self.aggregation = "trajectory"  # bounding merged turns only means something when merging
        if self.mini_batch_size is not None and self.micro_batch_size > self.mini_batch_size:
            self.micro_batch_size = self.mini_batch_size
        return self

    @property
    def tasks(self) -> int:
        """Tasks per online iteration."""
        return self.tasks_per_iteration or max(1, self.batch_size // self.group_size)


class PPOConfig(RLConfig):
    """Proximal Policy Optimization: clipped objective, a value head on the policy, and GAE."""

    group_size: int = Field(default=1, ge=1)
    gamma: float = Field(default=1.0, ge=0.0, le=1.0)
    lam: float = Field(default=0.95, ge=0.0, le=1.0)
    value_coef: float = Field(default=0.5, ge=0.0)
    value_clip: float | None = Field(default=0.2, gt=0.0)
    kl_coef: float = Field(default=0.01, ge=0.0)
    whiten_advantages: bool = True


class GRPOConfig(RLConfig):
    """Group Relative Policy Optimization: advantages relative to other rollouts of the same task, no critic.

    ``advantage``: ``"grpo"`` (group mean, divided by the group std when ``scale_rewards``), ``"rloo"``
    (leave-one-out mean), or ``"reinforce++"`` (group mean subtracted, then whitened over the batch).
    """

    advantage: Literal["grpo", "rloo", "reinforce++"] = "grpo"
    scale_rewards: bool = True


class SFTConfig(RLConfig):
    """Supervised fine-tuning: masked NLL on kept rollouts (rejection sampling) or on a chat dataset.

    One iteration is one epoch over the kept samples, an optimizer step per ``mini_batch_size`` samples. With an
    agent, ``group_size`` rollouts of each of ``collect_tasks`` training tasks are sampled from the starting policy
    at ``temperature``; without one, the store's finished train rollouts are used.
    """

    learning_rate: float = Field(default=1e-5, ge=0.0)
    temperature: float = Field(default=0.7, ge=0.0)
    """Sampling temperature of the rejection-sampling rollouts (the NLL itself is at temperature 1)."""
    mini_batch_size: int | None = Field(default=8, ge=1)
    """Samples per optimizer step (``None``: a whole epoch in one step)."""
    min_reward: float | None = None
    """Keep rollouts with at least this reward; default ``success_threshold``."""
    best_of_group: bool = False
    """Of the rollouts that pass ``min_reward``, keep only the best one of each group (task)."""
    require_tool_call: bool = False
    """Keep only rollouts in which the model made a tool call (a structured call in a recorded model call's output,
    not tool-call or tool-result markup written as text), so a reply that imitates the tool and happens to pass the
    reward is not trained on (demonstration search's ``require_tool_call``)."""
    collect_tasks: int | None = Field(default=None, ge=1)
    """Training tasks the starting policy tries (rejection sampling); default all."""
    dataset: str | None = None
    """A chat dataset to train on instead of rollouts: ``.jsonl``/``.json`` rows ``{"messages": [...], "tools":
    [...]}`` or ``hf:NAME``; it is re-tokenized with the policy's chat template."""
