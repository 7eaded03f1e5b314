"""PPO: clipped objective, a value head on the policy's last hidden state, and GAE over the policy's own tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from agent_lightning.types import Sample

from . import losses
from .advantages import terminal_rewards
from .base import RLAlgorithm
from .batching import pad_rows
from .config import PPOConfig, RLConfig
from .learner import PolicyLearner, Scored


class ProximalPolicyOptimization(RLAlgorithm):
    """PPO with a value head and GAE; the sample's return is the reward on its last trainable token.

    >>> ProximalPolicyOptimization(config=PPOConfig(learning_rate=3e-5, batch_size=256, trajectory_length=10))
    """

    name = "ppo"
    config_class: ClassVar[type[RLConfig]] = PPOConfig
    config: PPOConfig

    def prepare(
        self, learner: PolicyLearner, samples: Sequence[Sample], sequence_advantages: list[float] | None
    ) -> tuple[list[torch.Tensor], Scored | None, list[torch.Tensor] | None]:
        cfg = self.config
        old = learner.score(samples, values=True)
        assert old.values is not None
        width = max(len(s.completion_token_ids) for s in samples)
        mask = pad_rows([torch.tensor(s.loss_mask, dtype=torch.float32) for s in samples], width)
        rewards = pad_rows(terminal_rewards(samples), width)
        values = pad_rows(old.values, width)
        advantages, returns = losses.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages and mask.sum() > 1:
            advantages = losses.whiten(advantages, mask)
        lengths = [len(s.completion_token_ids) for s in samples]
        return (
            [advantages[i, :n] for i, n in enumerate(lengths)],
            old,
            [returns[i, :n] for i, n in enumerate(lengths)],
        )


PPO = ProximalPolicyOptimization
