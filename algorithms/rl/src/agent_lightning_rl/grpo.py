"""GRPO (and RLOO / REINFORCE++): advantages relative to other rollouts of the same task, no critic."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import torch
from agent_lightning.types import Sample

from .advantages import sample_advantages
from .base import RLAlgorithm
from .config import GRPOConfig, RLConfig
from .learner import PolicyLearner, Scored

logger = logging.getLogger(__name__)


class GroupRelativePolicyOptimization(RLAlgorithm):
    """GRPO: ``group_size`` rollouts per task; each sample's advantage is its reward relative to its group.

    >>> GroupRelativePolicyOptimization(config=GRPOConfig(group_size=8, learning_rate=1e-6))
    """

    name = "grpo"
    config_class: ClassVar[type[RLConfig]] = GRPOConfig
    config: GRPOConfig
    _warned_groups = False

    def sequence_advantages(self, samples: Sequence[Sample]) -> list[float] | None:
        advantages = sample_advantages(samples, self.config.advantage, scale=self.config.scale_rewards)
        groups: dict[str, set[str]] = {}
        for sample in samples:
            groups.setdefault(sample.group_id or sample.rollout_id, set()).add(sample.rollout_id)
        if all(len(members) < 2 for members in groups.values()) and not self._warned_groups:
            self._warned_groups = True
            logger.warning(
                "every GRPO group has a single rollout, so every advantage is 0 and nothing is learned; "
                "use group_size >= 2 (online) or collect several rollouts per task (offline)"
            )
        return advantages

    def prepare(
        self, learner: PolicyLearner, samples: Sequence[Sample], sequence_advantages: list[float] | None
    ) -> tuple[list[torch.Tensor], Scored | None, list[torch.Tensor] | None]:
        assert sequence_advantages is not None
        advantages = [
            torch.full((len(s.completion_token_ids),), a) for s, a in zip(samples, sequence_advantages, strict=True)
        ]
        cfg = self.config
        several_steps = cfg.ppo_epochs > 1 or (cfg.mini_batch_size or len(samples)) < len(samples)
        old = learner.score(samples) if several_steps and not cfg.use_rollout_logprobs else None
        return advantages, old, None


GRPO = GroupRelativePolicyOptimization
