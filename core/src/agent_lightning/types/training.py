"""Training-side records: per-LLM-call samples and the episodes they form."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Sample(BaseModel):
    """One training sample: a token sequence the policy produced, and its reward.

    ``prompt_token_ids`` and ``completion_token_ids`` are the ids the engine
    actually saw and sampled (never re-tokenized text). ``loss_mask`` has one
    entry per completion token: 1 where the policy chose the token, 0 where it
    did not (tool output or environment text spliced into a merged multi-turn
    sequence), so those tokens carry no loss.
    """

    model_config = ConfigDict(extra="forbid")

    rollout_id: str
    attempt_id: str
    span_ids: list[str]
    """The LLM-call span(s) this sample was built from (several when turns were merged)."""
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    completion_logprobs: list[float] | None = None
    loss_mask: list[int]
    reward: float
    """The return credited to this sample (the episode reward, possibly discounted)."""
    task_type: str = "default"
    group_id: str | None = None
    """Samples from rollouts of the same task input share a group (GRPO's group)."""
    turn_index: int = 0
    agent_name: str | None = None
    resource_names: list[str] = Field(default_factory=list)
    resources_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aligned(self) -> Sample:
        n = len(self.completion_token_ids)
        if len(self.loss_mask) != n:
            raise ValueError(f"loss_mask has {len(self.loss_mask)} entries for {n} completion tokens")
        if self.completion_logprobs is not None and len(self.completion_logprobs) != n:
            raise ValueError(f"completion_logprobs has {len(self.completion_logprobs)} entries for {n} tokens")
        if any(m not in (0, 1) for m in self.loss_mask):
            raise ValueError("loss_mask entries must be 0 or 1")
        return self

    @property
    def num_trainable_tokens(self) -> int:
        return sum(self.loss_mask)


class Episode(BaseModel):
    """A rollout attempt seen as one trajectory: its samples and its reward."""

    model_config = ConfigDict(extra="forbid")

    rollout_id: str
    attempt_id: str
    task_type: str = "default"
    input: Any = None
    reward: float | None
    """The final (episode) reward; ``None`` when the rollout emitted none."""
    samples: list[Sample]
    step_rewards: dict[str, float] = Field(default_factory=dict)
    """Rewards attached to individual LLM-call spans, by span id."""
    warnings: list[str] = Field(default_factory=list)
    """What made parts of the rollout unusable (missing token ids, empty completions, …)."""


Trajectory = Episode
"""Alias: the article speaks of trajectories, the RL literature of episodes."""
